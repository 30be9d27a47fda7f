"""Flags, logging and error reporting shared by the command lines."""
import logging
import os

from absl import flags
from absl import logging as absl_logging

# --help groups every command shares (each lists only the flags it defines)
DATA_FLAGS = ("dataset", "data_dir", "workdir")
EXECUTION_FLAGS = ("seed", "strategy", "deterministic", "precision", "jit_compile", "verbose")


def run(main, help_groups=(), arguments=None):
  """The command line of `main` through lad_tf.cli.run: one-line errors, exit 2 for usage errors, 1
  for the others, a grouped --help that exits 0 (see lad_tf/cli.py)."""
  from lad_tf import cli
  cli.run(main, help_groups=help_groups, arguments=arguments)


def define_data_flags(default_dataset="digits"):
  from lad_tf.data import datasets
  from lad_tf.data.sources import files
  flags.DEFINE_string("dataset", default_dataset, f"Dataset by name: {', '.join(sorted(datasets.REGISTRY))}; or "
                      f"your own images, {files.PREFIX}PATH (a folder of class sub-folders, or an .npz with x and y).")
  flags.register_validator(
      "dataset", lambda name: name in datasets.REGISTRY or name.startswith(files.PREFIX),
      f"--dataset takes one of {', '.join(sorted(datasets.REGISTRY))} or {files.PREFIX}PATH")
  flags.DEFINE_string("data_dir", None, "Folder with the dataset's own files (also TFDS's data_dir).")
  flags.DEFINE_string("workdir", None, "Work directory (default: runs/DATASET).")
  flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same numbers.")


def setup_logging():
  """lad_tf's progress lines (logger "lad_tf") on stderr through absl."""
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger("lad_tf").setLevel(logging.INFO)


def workdir(flag_values):
  """--workdir (default runs/DATASET), created; a LadError if it cannot be written, before any work."""
  from lad_tf import cli
  default = "runs/" + os.path.splitext(os.path.basename(flag_values.dataset.rstrip("/")))[0]  # files:PATH too
  return cli.writable_dir(flag_values.workdir or default)


# The command lines' --precision: the fastest policy measured accurate enough on this hardware, where
# the library's ExecutionConfig keeps float32 unless a caller asks.
COMMAND_LINE_PRECISION = "auto"


def define_distribution_flags():
  """--strategy, --deterministic, --precision, --jit_compile (see docs/SCALING.md): the choices of
  lad_tf.runtime, the defaults of its ExecutionConfig."""
  from lad_tf.runtime import distribute, precision
  from lad_tf.runtime.execution_config import ExecutionConfig  # no TensorFlow: --help stays quick
  defaults = ExecutionConfig()
  flags.DEFINE_enum("strategy", defaults.strategy, list(distribute.STRATEGIES),
                    "tf.distribute strategy of every training loop: default (one device), mirrored (all "
                    "local GPUs), multi_worker (MultiWorkerMirroredStrategy from the TF_CONFIG environment "
                    "variable; run the same command on every worker, only the chief writes --workdir).")
  flags.DEFINE_bool("deterministic", defaults.deterministic, "Reproducible runs: seeds everything and enables "
                    "tf.config.experimental.enable_op_determinism (slower on GPUs).")
  flags.DEFINE_enum("precision", COMMAND_LINE_PRECISION, list(precision.PRECISIONS),
                    "Keras dtype policy of training (losses in float32): mixed_float16 on GPUs (float32 "
                    "with a warning without one), mixed_bfloat16 on CPUs with AVX512-BF16/AMX, auto: what "
                    "lad_tf.runtime.precision.auto_precision measured accurate enough on this hardware.")
  flags.DEFINE_bool("jit_compile", defaults.jit_compile, "XLA-compile the Keras fit train steps (measured "
                    "slower on CPU for LeNet-5, svhnNet and their decoders, docs/SCALING.md; try it on GPUs).")


def execution_config(flag_values):
  """The ExecutionConfig of --seed and the distribution flags. Creates the strategy first (a
  MultiWorkerMirroredStrategy must exist before TensorFlow runs any op)."""
  from lad_tf.runtime import distribute
  from lad_tf.runtime.execution_config import ExecutionConfig
  distribute.get_strategy(flag_values.strategy)
  return ExecutionConfig(strategy=flag_values.strategy, seed=flag_values.seed,
                         deterministic=flag_values.deterministic, precision=flag_values.precision,
                         jit_compile=flag_values.jit_compile)
