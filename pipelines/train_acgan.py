"""Trains the AC-WGAN-GP behind the GA attack: `python -m pipelines.train_acgan --dataset=NAME --workdir=DIR`.

Writes DIR/acgan/ (generator.keras, critic.keras, acgan.json: settings, per-epoch history, the
auxiliary classifier's test accuracy, the class-conditional accuracy of samples) and
DIR/figures/acgan_samples.png (one row of samples per class). Shows one line per epoch; a killed run
resumes at its last finished epoch (the per-epoch backup lives in DIR/.acgan.partial/ until the stage
completes). Trains on the dataset's training split only.
"""
from absl import flags

from pipelines import common

common.define_data_flags()
flags.DEFINE_integer("epochs", 20, "Training epochs (passes over the training split).", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("noise_dim", 64, "Dimension of the generator's noise input z (Song et al.: 128).", lower_bound=1)
flags.DEFINE_integer("width", 32, "Base number of filters of both networks.", lower_bound=1)
flags.DEFINE_integer("critic_steps", 5, "Critic updates per generator update (WGAN-GP: 5).", lower_bound=1)
flags.DEFINE_float("learning_rate", 2e-4, "Adam learning rate (betas 0 and 0.9) of both networks.")
flags.DEFINE_float("gp_weight", 10.0, "Weight of the gradient penalty.")
flags.DEFINE_float("aux_weight", 1.0, "Weight of the auxiliary classifier's cross-entropy.")
flags.DEFINE_integer("samples_per_class", 10, "Samples per class in DIR/figures/acgan_samples.png.", lower_bound=1)
flags.DEFINE_bool("force", False, "Retrain even if DIR/acgan exists.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  from lad_tf.run import acgan  # pylint: disable=import-outside-toplevel
  config = acgan.ACGANConfig(
      epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, noise_dim=FLAGS.noise_dim, width=FLAGS.width,
      critic_steps=FLAGS.critic_steps, learning_rate=FLAGS.learning_rate, gp_weight=FLAGS.gp_weight,
      aux_weight=FLAGS.aux_weight, seed=FLAGS.seed, verbose=0)
  metrics = acgan.train_stage(common.workdir(FLAGS), FLAGS.dataset, config, data_dir=FLAGS.data_dir,
                              samples_per_class=FLAGS.samples_per_class, force=FLAGS.force)
  line = (f"{FLAGS.dataset}: auxiliary classifier test accuracy {metrics['aux_test_accuracy']:.4f}; samples "
          f"recognised as their class by it {metrics['aux_sample_accuracy']:.4f}")
  if metrics.get("classifier_sample_accuracy") is not None:
    line += f", by DIR/classifier {metrics['classifier_sample_accuracy']:.4f}"
  print(line + f"; model: {metrics['path']}")


if __name__ == "__main__":
  common.run(main, (("data", common.DATA_FLAGS),
                    ("training", ("epochs", "batch_size", "noise_dim", "width", "critic_steps", "learning_rate",
                                  "gp_weight", "aux_weight", "samples_per_class")),
                    ("execution", common.EXECUTION_FLAGS + ("force",))))
