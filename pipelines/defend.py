"""Hardens a classifier: `python -m pipelines.defend --dataset=NAME --defence=NAME --workdir=DIR`.

Stages (each skipped once done; a killed run resumes): classifier -> generator -> boundaries ->
generation -> defended -> robustness (AutoAttack on the original and the defended classifier) ->
metrics.json, figures/ -> export/<version>/ (SavedModel of the defended classifier alone). Only the
stages the defence needs run. With no flags it runs on the embedded `digits` dataset in a few minutes
on 2 CPU cores.
"""
import json

from absl import flags

from lad_tf.run.defend_config import STAGES, DefendConfig
from pipelines import common, config_flags

# DefendConfig's fields that the shared flags set: --dataset, --data_dir (common.define_data_flags) and
# the ExecutionConfig of --seed and the distribution flags (common.execution_config).
SHARED_FIELDS = ("dataset", "data_dir", "execution")

common.define_data_flags(default_dataset=DefendConfig.dataset)
common.define_distribution_flags()
config_flags.define(DefendConfig, exclude=SHARED_FIELDS)
flags.DEFINE_integer("plan_batches", 3, "Before running, time this many batches of each stage's pieces "
                     "and print the plan with each stage's estimated time (0: no plan).", lower_bound=0)
# the report, the last stage, is left out: a run that gets there goes on to the export
flags.DEFINE_enum("stop_after", None, list(STAGES[:-1]), "Stop after this stage (e.g. generator: only the "
                  "decoder's loss curve).")
flags.DEFINE_bool("export", True, "Export the defended classifier as a SavedModel for TF Serving.")
flags.DEFINE_string("export_base", None, "Export base path (default: DIR/export).")
flags.DEFINE_string("model_name", "lad", "Model name in models.config.")
flags.DEFINE_bool("evaluate", False, "Run the robustness evaluation (pipelines.evaluate) at the end.")
FLAGS = flags.FLAGS

# --help's groups; a DefendConfig field missing here still shows, under "other" (a test keeps it empty)
HELP_GROUPS = (
    ("data", common.DATA_FLAGS + ("classifier", "latent_layer", "allow_weak_classifier", "calibration_per_class",
                                  "classifier_epochs")),
    ("defence", ("defence", "defence_eps", "defence_epochs", "defence_learning_rate", "defence_lr_schedule",
                 "defence_train_examples", "defence_pgd_steps", "defence_init", "defence_step_scale",
                 "defence_atta_steps", "defence_tradeoff", "defence_generated_weight",
                 "defence_selection", "defence_weight_averaging")),
    ("defence: LAD's parts (--defence=lad and its controls; atta with --defence_generated_weight)", (
        "generator", "generator_epochs", "recon_norm", "attention", "eps", "normal", "target", "adaptive",
        "fine_tune_mode", "fine_tune_eps", "fine_tune_schedule", "fine_tune_epochs", "decoder_mse_epochs")),
    ("evaluation", ("autoattack", "autoattack_examples", "report_images", "evaluate")),
    ("export", ("export", "export_base", "model_name")),
    ("execution", common.EXECUTION_FLAGS + ("force", "stop_after", "plan_batches")),
)


def config_from_flags(flag_values=FLAGS):
  """The DefendConfig the command line asks for (creates the distribution strategy first)."""
  return DefendConfig(**config_flags.values(DefendConfig, flag_values, exclude=SHARED_FIELDS),
                      dataset=flag_values.dataset, data_dir=flag_values.data_dir,
                      execution=common.execution_config(flag_values))


def main(argv):
  del argv
  common.setup_logging()
  config = config_from_flags()
  workdir = common.workdir(FLAGS)
  from pipelines import stages
  metrics = stages.run_defend(workdir, config, export=FLAGS.export, export_base=FLAGS.export_base,
                              model_name=FLAGS.model_name, stop_after=FLAGS.stop_after,
                              plan_batches=FLAGS.plan_batches)
  from lad_tf.runtime import distribute
  if not distribute.is_chief(FLAGS.strategy):
    print(f"worker {distribute.task(FLAGS.strategy)}: done (the chief writes {workdir})")
    return
  if FLAGS.evaluate and not FLAGS.stop_after:
    from lad_tf.run import evaluate
    evaluate.evaluate_workdir(workdir)
  print(json.dumps({k: metrics.get(k) for k in ("dataset", "defence", "original", "defended", "robust_evaluation",
                                                "generator", "boundary", "lad")},
                   indent=1))
  print(f"work directory: {workdir} (metrics.json, figures/, export/)")


if __name__ == "__main__":
  common.run(main, HELP_GROUPS)
