"""An attack from outside lad_tf, to check the robustness figures `defend` reports: cleverhans' PGD.

If defend's robustness stage attacked the wrong model, the wrong images or with a weaker attack than it
says, its AutoAttack accuracy would exceed what an independent PGD finds on the same images.
"""
import numpy as np
import tensorflow as tf

from lad_tf import datasets


def robustness_images(config):
  """The evaluation images defend's robustness stage attacks for a resolved DefendConfig: the test split
  without the calibration examples, `robust_eval_examples` of them drawn with the run's seed."""
  data = datasets.load(config.dataset, config.data_dir)
  evaluation = datasets.calibration_split(data.test, config.calibration_per_class, config.seed)[1]
  n = min(config.robust_eval_examples, len(evaluation))
  pick = np.sort(np.random.default_rng(config.seed).choice(len(evaluation), n, replace=False))
  return evaluation.x[pick], evaluation.y[pick]


def pgd_accuracy(model, x, y, eps, steps=40, restarts=3):
  """Accuracy under cleverhans' L-inf PGD (step 2.5 eps / steps, random starts): an image counts as
  robust only if every restart leaves it correctly classified."""
  from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
  x, robust = tf.constant(x), np.ones(len(y), bool)
  for restart in range(restarts):
    tf.random.set_seed(restart)
    x_adv = projected_gradient_descent(model, x, eps, 2.5 * eps / steps, steps, np.inf, clip_min=0.0,
                                       clip_max=1.0, y=tf.constant(y), rand_init=True, sanity_checks=False)
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= eps + 1e-6
    robust &= np.argmax(model.predict(x_adv.numpy(), verbose=0), -1) == y
  return float(np.mean(robust))
