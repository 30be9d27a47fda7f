"""`python -m pipelines.defend` reaches every DefendConfig field, with the library's defaults and
choices: its flags are derived (pipelines.config_flags), and these tests fail when a field is left off
the command line without saying so, a flag's default drifts from its field's, or an enum's choices
from the library's tuple."""
import dataclasses

import pytest
from absl import app
from absl import flags

from lad_tf import defences
from lad_tf.data import datasets
from lad_tf.lad import boundary, fine_tuning, generation
from lad_tf.run import defend_config, defend_stages
from lad_tf.run.defend_config import DefendConfig
from lad_tf.runtime import distribute, execution, losses, precision
from pipelines import common, config_flags
from pipelines import defend as defend_command

FLAGS = flags.FLAGS
FIELDS = dataclasses.fields(DefendConfig)

# Each enum flag and the library tuple it must offer.
LIBRARY_CHOICES = {
    "attention": boundary.ATTENTION_MODES, "normal": generation.NORMALS, "target": generation.TARGETS,
    "recon_norm": losses.RECON_NORMS, "fine_tune_mode": defend_config.FINE_TUNE_MODES,
    "fine_tune_schedule": tuple(fine_tuning.FINE_TUNE_SCHEDULES), "defence": defences.DEFENCES,
    "defence_lr_schedule": defences.LR_SCHEDULES, "defence_init": defences.DEFENCE_INITS,
    "defence_selection": defences.SELECTIONS,
    "autoattack": defend_config.ROBUST_EVALS, "strategy": distribute.STRATEGIES,
    "precision": precision.PRECISIONS,
    "stop_after": tuple(stage.name for stage in defend_stages.STAGES)[:-1],  # the stages as declared
}


@pytest.fixture
def command_line():
  """Parses a defend command line into the global flags; restores them afterwards."""
  def parse(*args):
    FLAGS.unparse_flags()
    FLAGS(["defend", *args])
    return defend_command.config_from_flags(FLAGS)
  yield parse
  FLAGS.unparse_flags()


def test_every_field_is_a_flag_a_shared_flag_or_kept_off_with_its_meaning():
  for field in FIELDS:
    if field.name in defend_command.SHARED_FIELDS:
      continue
    assert "help" in field.metadata, f"DefendConfig.{field.name} has no flag and no help"
    name = config_flags.flag_name(field)
    if name is None:  # off the command line on purpose, and says what it is
      assert field.metadata["help"].strip(), field.name
      continue
    assert name in FLAGS, f"DefendConfig.{field.name}: no --{name}"
    assert FLAGS[name].help.endswith(field.metadata["help"])  # an enum's help starts with <a|b|...>:


def test_the_command_line_without_flags_is_the_dataclass_default(command_line):
  """Every flag's default, the shared ones included, is its field's, except the one declared
  difference: the command lines' --precision."""
  config = command_line()
  expected = DefendConfig(execution=execution.ExecutionConfig(precision=common.COMMAND_LINE_PRECISION))
  assert config == expected
  for field in FIELDS:
    if field.name not in defend_command.SHARED_FIELDS and config_flags.flag_name(field):
      assert FLAGS[config_flags.flag_name(field)].default == config_flags.flag_default(field), field.name


def test_enum_flags_offer_the_library_tuples():
  for name, choices in LIBRARY_CHOICES.items():
    assert FLAGS[name].parser.enum_values == list(choices), name
  derived = {config_flags.flag_name(f) for f in FIELDS if "choices" in f.metadata}
  assert derived <= set(LIBRARY_CHOICES), derived - set(LIBRARY_CHOICES)


def test_the_stage_names_the_flags_offer_are_the_declared_stages():
  """--force and --stop_after list lad_tf.choices.DEFEND_STAGES (no TensorFlow for --help): the stages
  lad_tf.run.defend_stages declares, in order."""
  assert defend_config.STAGES == tuple(stage.name for stage in defend_stages.STAGES)


def _other_value(field):
  """A command-line value for `field` other than its default, and the field value it must give."""
  if "choices" in field.metadata:
    choice = next(c for c in field.metadata["choices"] if c != field.default)
    return choice, choice
  scalar, is_list, item = config_flags.field_kind(DefendConfig, field)
  if scalar is bool:
    return str(not field.default).lower(), not field.default
  text, value = {int: ("7", 7), float: ("0.25", 0.25), str: ("generator", "generator")}[item if is_list else scalar]
  return text, (value,) if is_list else value


def test_every_flag_reaches_its_field(command_line, monkeypatch):
  monkeypatch.setattr(distribute, "get_strategy", lambda name=None: None)  # no MirroredStrategy in this process
  settings = {f: _other_value(f) for f in FIELDS
              if f.name not in defend_command.SHARED_FIELDS and config_flags.flag_name(f)}
  config = command_line(*(f"--{config_flags.flag_name(f)}={text}" for f, (text, _) in settings.items()),
                        "--dataset=mnist", "--data_dir=/data", "--seed=3", "--strategy=mirrored",
                        "--precision=float32", "--deterministic", "--jit_compile")
  for field, (_, value) in settings.items():
    assert getattr(config, field.name) == value, field.name
  assert (config.dataset, config.data_dir) == ("mnist", "/data")
  assert config.execution == execution.ExecutionConfig(strategy="mirrored", seed=3, deterministic=True,
                                                       precision="float32", jit_compile=True)


def test_a_list_flag_with_a_bad_item_is_a_usage_error_naming_it(command_line):
  for bad in ("10,x", "10,0"):  # flags.Error: lad_tf.cli ends it as a usage error (exit 2)
    with pytest.raises(flags.Error, match="--decoder_mse_epochs takes comma-separated whole numbers >= 1"):
      command_line(f"--decoder_mse_epochs={bad}")
  with pytest.raises(app.UsageError, match="--eps takes comma-separated numbers"):
    command_line("--eps=0.1,x")


@pytest.mark.parametrize("flag", ["classifier_epochs", "generator_epochs", "defence_pgd_steps", "autoattack_examples"])
def test_a_count_below_one_is_refused_when_parsed(command_line, flag):
  with pytest.raises(flags.IllegalFlagValueError, match="not a positive integer"):
    command_line(f"--{flag}=0")
  assert command_line("--eps=").eps_grid is None  # an empty grid is the dataset spec's


def test_a_count_whose_zero_means_none_takes_zero(command_line):
  assert command_line("--report_images=0").report_images == 0
  with pytest.raises(flags.IllegalFlagValueError):
    command_line("--report_images=-1")


def test_dataset_takes_a_registered_name_or_your_own_files(command_line):
  assert command_line("--dataset=mnist").dataset == "mnist"
  assert command_line("--dataset=files:/data/mine.npz").dataset == "files:/data/mine.npz"
  with pytest.raises(flags.IllegalFlagValueError, match=r"--dataset takes one of .*digits.* or files:PATH"):
    command_line("--dataset=nope")
  assert sorted(datasets.REGISTRY) == [n for n in sorted(datasets.REGISTRY) if n in FLAGS["dataset"].help]

