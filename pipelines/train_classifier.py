"""Trains a classifier: `python -m pipelines.train_classifier --dataset=NAME --workdir=DIR`.

Writes DIR/classifier/model.keras and DIR/classifier/metrics.json (test accuracy on the evaluation
part of the test split); shows progress per epoch and resumes at the last finished epoch after a kill.
"""
from absl import flags

from pipelines import common

common.define_data_flags()
common.define_distribution_flags()
flags.DEFINE_integer("epochs", None, "Training epochs (default: the dataset spec's).", lower_bound=1)
flags.DEFINE_string("architecture", None, "Zoo classifier, e.g. lenet5 or black_cnn (default: the spec's).")
flags.DEFINE_integer("calibration_per_class", None, "Test examples per class held out for calibration (default: the spec's).", lower_bound=1)
flags.DEFINE_bool("force", False, "Retrain even if DIR/classifier exists.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  execution = common.execution_config(FLAGS)
  from lad_tf.run import defend
  config = defend.DefendConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, architecture=FLAGS.architecture,
      classifier_epochs=FLAGS.epochs, calibration_per_class=FLAGS.calibration_per_class,
      force=("classifier",) if FLAGS.force else (), execution=execution)
  run = defend.DefendRun(common.workdir(FLAGS), config)
  path = run.run_stage("classifier")
  if not run.chief:
    print(f"worker: done (the chief writes {common.workdir(FLAGS)})")
    return
  metrics = defend.read_json(f"{path}/metrics.json")
  print(f"{FLAGS.dataset}: test accuracy {metrics['test_accuracy']:.4f} "
        f"({len(run.evaluation)} test examples outside the calibration split); model: {path}/model.keras")


if __name__ == "__main__":
  common.run(main, (("data", common.DATA_FLAGS), ("training", ("epochs", "architecture", "calibration_per_class")),
                    ("execution", common.EXECUTION_FLAGS + ("force",))))
