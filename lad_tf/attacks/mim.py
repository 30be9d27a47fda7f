"""MIM, the momentum iterative method (Dong et al. 2018), L-inf: iterative FGSM whose step follows an
accumulated, L1-normalised gradient, which keeps the direction steady across steps (the paper's
argument: fewer poor local maxima, better transfer to other models)."""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common


def mim(model_fn, x, y, eps, nb_iter=10, decay=1.0, targeted=False, batch_size=512):
  """`nb_iter` signed steps of eps / nb_iter along g_t = decay * g_{t-1} + grad / |grad|_1.

  Args: as lad_tf.attacks.fgsm's (model_fn, x, y, eps, targeted, batch_size), and
    nb_iter: steps (Dong et al.: 10);
    decay: momentum factor mu (Dong et al.: 1.0; 0 gives the basic iterative method).
  Returns float32 images with |x_adv - x| <= eps in [0, 1].
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if nb_iter < 1:
    raise ValueError(f"mim: nb_iter must be >= 1, got {nb_iter}")
  y = common.attack_labels("mim", model_fn, x, y, targeted)
  if eps == 0 or len(x) == 0:
    return x.copy()
  step = eps / nb_iter
  direction = -1.0 if targeted else 1.0

  @tf.function
  def gradient(xb, yb):
    with tf.GradientTape() as tape:
      tape.watch(xb)
      logits = tf.cast(model_fn(xb), tf.float32)
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
    return tape.gradient(loss, xb)

  def batch(xb, yb):
    x0, labels = tf.constant(xb), tf.constant(yb, tf.int64)
    adv, momentum = x0, tf.zeros_like(x0)
    for _ in range(nb_iter):
      grad = gradient(adv, labels)
      l1 = tf.reduce_sum(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
      momentum = decay * momentum + grad / tf.maximum(l1, 1e-12)
      adv = adv + direction * step * tf.sign(momentum)
      adv = tf.clip_by_value(adv, common.CLIP_MIN, common.CLIP_MAX)  # steps of eps / nb_iter stay in the ball
    return adv.numpy()

  return common.project_linf(common.run_batched(batch, [x, y], batch_size, pad=True), x, eps).astype(np.float32)
