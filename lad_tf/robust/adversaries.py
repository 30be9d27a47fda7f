"""Input-space L-inf adversaries built inside the training graph (TensorFlow ops, no numpy).

The attacks in lad_tf.attacks batch over numpy arrays for evaluation; training needs the same
adversaries as graph ops on one batch, so they live here. Images are float32 NHWC in [0, 1]; every
function takes `model` (images -> logits) and runs it with training=False (the adversary must see
the model as it will be attacked).
"""
import tensorflow as tf

from lad_tf.runtime import losses


def logits_of(model, x, training=False):
  """The model's logits as float32 (they are bfloat16 under a mixed policy)."""
  return tf.cast(model(x, training=training), tf.float32)


def kl_divergence(clean_logits, logits):
  """KL(p_clean || p) per example, the TRADES regulariser."""
  log_p = tf.nn.log_softmax(clean_logits)
  return tf.reduce_sum(tf.exp(log_p) * (log_p - tf.nn.log_softmax(logits)), axis=-1)


def input_gradient(model, x, objective):
  """d sum(objective(logits(x))) / dx, with the per-example objective values."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    values = objective(logits_of(model, x))
    total = tf.reduce_sum(values)
  return tape.gradient(total, x), values


def project(x_adv, x, eps):
  """Into the L-inf ball of radius eps around x, and into [0, 1]."""
  return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def uniform_noise(x, radius, seed=None):
  return tf.random.uniform(tf.shape(x), -radius, radius, dtype=x.dtype, seed=seed)


def pgd(model, x, y, eps, steps=10, step_size=None, random_start=True, objective=None, start=None):
  """Untargeted PGD in the eps ball around x: `steps` signed-gradient ascent steps of `objective`
  (default: cross-entropy of y), step_size 2.5 * eps / steps by default (Madry et al.). The first
  point is `start` when given (TRADES' x + 0.001 N(0, 1): every step still projects around x), else
  uniform in the ball (random_start) or x."""
  step_size = 2.5 * eps / steps if step_size is None else step_size
  objective = objective or (lambda logits: losses.cross_entropy(y, logits))
  if start is None:
    start = project(x + uniform_noise(x, eps), x, eps) if random_start else x
  x_adv = start
  for _ in range(steps):
    grad, _ = input_gradient(model, x_adv, objective)
    x_adv = project(x_adv + step_size * tf.sign(grad), x, eps)
  return tf.stop_gradient(x_adv)


def fgsm(model, x, y, eps):
  """One signed step of size eps from x (no random start): the guard's cheap attack."""
  grad, _ = input_gradient(model, x, lambda logits: losses.cross_entropy(y, logits))
  return tf.stop_gradient(project(x + eps * tf.sign(grad), x, eps))
