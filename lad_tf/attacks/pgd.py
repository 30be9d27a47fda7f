"""PGD (Madry et al. 2018), L-inf: cleverhans 4's projected_gradient_descent, batched, in [0, 1]."""
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from lad_tf.attacks import common


def pgd(model_fn, x, y, eps, nb_iter=40, eps_iter=None, rand_init=True, targeted=False, seed=None,
        batch_size=512):
  """Projected gradient descent in the L-inf ball of radius eps, clipped to [0, 1].

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: class indices. Untargeted: the true labels (None: the model's predictions). Targeted: the
      target classes (required).
    eps: L-inf radius of the ball (e.g. 0.3, or 8/255); 0 returns x unchanged.
    nb_iter: number of signed-gradient steps (40 is the usual PGD-40).
    eps_iter: step size; None uses 2.5 * eps / nb_iter (Madry et al.), capped at eps.
    rand_init: start from a uniformly random point of the ball (True) or from x (False, i.e. BIM).
    targeted: False raises the loss of y; True lowers it (moves towards class y).
    seed: when given, TensorFlow's global seed is set to it before the random start (cleverhans
      draws the start from TensorFlow's global generator), so runs repeat.
    batch_size: images per batch.
  Returns:
    float32 numpy array of adversarial images with |x_adv - x| <= eps and values in [0, 1].
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if nb_iter < 1:
    raise ValueError(f"pgd: nb_iter must be >= 1, got {nb_iter}")
  y = common.attack_labels("pgd", model_fn, x, y, targeted)
  if eps == 0 or len(x) == 0:
    return x.copy()
  step = min(eps, 2.5 * eps / nb_iter) if eps_iter is None else float(eps_iter)
  if not 0 < step <= eps:
    raise ValueError(f"pgd: eps_iter must be in (0, eps={eps}], got {step}")
  if seed is not None:
    tf.random.set_seed(seed)

  def batch(xb, yb):
    adv = projected_gradient_descent(model_fn, tf.constant(xb), eps, step, nb_iter, np.inf,
                                     clip_min=common.CLIP_MIN, clip_max=common.CLIP_MAX,
                                     y=tf.constant(yb), targeted=targeted, rand_init=rand_init)
    return adv.numpy()

  return common.project_linf(common.run_batched(batch, [x, y], batch_size, pad=True), x, eps)
