"""FGSM (Goodfellow et al. 2015), L-inf: cleverhans 4's fast_gradient_method, batched, in [0, 1]."""
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from lad_tf.attacks import common


def fgsm(model_fn, x, y, eps, targeted=False, batch_size=512):
  """One signed-gradient step of size eps (L-inf), clipped to [0, 1].

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: class indices. Untargeted: the true labels (None: the model's predictions, which avoids
      label leaking). Targeted: the target classes (required).
    eps: L-inf size of the step (e.g. 0.3, or 8/255); 0 returns x unchanged.
    targeted: False raises the loss of y; True lowers it (moves towards class y).
    batch_size: images per gradient computation.
  Returns:
    float32 numpy array of adversarial images with |x_adv - x| <= eps and values in [0, 1].
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  y = common.attack_labels("fgsm", model_fn, x, y, targeted)
  if eps == 0 or len(x) == 0:
    return x.copy()

  def batch(xb, yb):
    adv = fast_gradient_method(model_fn, tf.constant(xb), eps, np.inf, clip_min=common.CLIP_MIN,
                               clip_max=common.CLIP_MAX, y=tf.constant(yb), targeted=targeted)
    return adv.numpy()

  return common.project_linf(common.run_batched(batch, [x, y], batch_size, pad=True), x, eps)
