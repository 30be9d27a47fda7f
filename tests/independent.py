"""An attack from outside lad_tf, to check the robustness figures `defend` reports: cleverhans' PGD.

If defend's robustness stage attacked the wrong model, the wrong images or with a weaker attack than it
says, its AutoAttack accuracy would exceed what an independent PGD finds on the same images.
"""
import numpy as np
import tensorflow as tf

from lad_tf.data import datasets


def robustness_images(config):
  """The evaluation images defend's robustness stage attacks for a resolved DefendConfig: the test split
  without the calibration examples, `robust_eval_examples` of them drawn with the run's seed."""
  data = datasets.load(config.dataset, config.data_dir)
  evaluation = datasets.calibration_split(data.test, config.calibration_per_class, config.seed)[1]
  n = min(config.robust_eval_examples, len(evaluation))
  pick = np.sort(np.random.default_rng(config.seed).choice(len(evaluation), n, replace=False))
  return evaluation.x[pick], evaluation.y[pick]


def _margin_loss(labels, logits):
  """-(z_y - max_{i != y} z_i): PGD on it finds what cross-entropy's saturated gradient misses."""
  others = tf.where(tf.one_hot(labels, logits.shape[-1]) > 0, -np.inf, logits)
  return -(tf.gather(logits, labels, batch_dims=1) - tf.reduce_max(others, axis=1))


def pgd_correct(model, x, y, eps, restarts=4, steps=50):
  """Per image: still classified correctly after every restart of cleverhans' L-inf PGD (random start,
  `steps` steps of eps / 8), the restarts alternating cross-entropy and the margin loss."""
  from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
  predict = lambda images: np.argmax(model.predict(images, verbose=0), -1)
  correct = predict(x) == y
  for restart in range(restarts):
    tf.random.set_seed(restart)
    x_adv = projected_gradient_descent(
        model, tf.constant(x), eps, eps / 8, steps, np.inf, loss_fn=None if restart % 2 == 0 else _margin_loss,
        clip_min=0.0, clip_max=1.0, y=tf.constant(y), rand_init=True).numpy()
    assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
    correct &= predict(x_adv) == y
  return correct


def pgd_accuracy(model, x, y, eps, **options):
  """Accuracy under `pgd_correct`'s attack."""
  return float(np.mean(pgd_correct(model, x, y, eps, **options)))
