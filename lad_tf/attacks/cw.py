"""Carlini-Wagner L2 (Carlini & Wagner 2017), targeted or untargeted, batched TensorFlow.

cleverhans 4's carlini_wagner_l2 breaks on Keras 3 and ART's CarliniL2Method is slow, so this is our
own implementation of the attack as published: the image is x' = (tanh(w) + 1) / 2 (always in
[0, 1]); for each example we minimise ||x' - x||_2^2 + c * f(x') with Adam over w, where
f = max(max_{j != t} Z_j - Z_t, -kappa) for a target t (untargeted: max(Z_y - max_{j != y} Z_j,
-kappa) for the true class y), and a binary search per example over c keeps the smallest successful
perturbation. Each binary-search step runs all its Adam iterations for the whole batch in one
tf.function.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common

_UPPER = 1e10
_TANH_SCALE = 0.999999  # keeps atanh finite at 0 and 1


def _margin(logits, onehot, targeted, confidence):
  real = tf.reduce_sum(logits * onehot, axis=1)
  other = tf.reduce_max(logits - 1e9 * onehot, axis=1)
  if targeted:
    return tf.maximum(other - real, -confidence)
  return tf.maximum(real - other, -confidence)


def _succeeded(logits, label, onehot, targeted, confidence):
  if targeted:
    return tf.equal(tf.argmax(logits - confidence * onehot, axis=1, output_type=tf.int32), label)
  return tf.not_equal(tf.argmax(logits + confidence * onehot, axis=1, output_type=tf.int32), label)


@tf.function(reduce_retracing=True)
def _cw_search_step(model_fn, x, w0, label, const, best_l2, best_adv, targeted, confidence,
                    learning_rate, max_iterations, abort_early):
  """One binary-search step: Adam on w for every example; returns the updated best results and which
  examples succeeded during this step."""
  num_classes = model_fn(x[:1]).shape[-1]
  onehot = tf.one_hot(label, num_classes)
  n = tf.shape(x)[0]
  beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
  check_every = tf.maximum(max_iterations // 10, 1)

  def body(i, modifier, m, v, best_l2, best_adv, success, prev_loss, stop):
    with tf.GradientTape() as tape:
      tape.watch(modifier)
      x_new = (tf.tanh(w0 + modifier) + 1.0) / 2.0
      logits = model_fn(x_new)
      l2 = tf.reduce_sum(tf.square(x_new - x), axis=[1, 2, 3])
      loss_each = l2 + const * _margin(logits, onehot, targeted, confidence)
      loss = tf.reduce_sum(loss_each)
    # The logits and distance are those of the current point (before this update): record it.
    ok = _succeeded(logits, label, onehot, targeted, confidence)
    better = ok & (l2 < best_l2)
    best_l2 = tf.where(better, l2, best_l2)
    best_adv = tf.where(better[:, None, None, None], x_new, best_adv)
    success = success | ok
    grad = tape.gradient(loss, modifier)
    t = tf.cast(i + 1, tf.float32)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * tf.square(grad)
    step = learning_rate * tf.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    modifier = modifier - step * m / (tf.sqrt(v) + adam_eps)
    # Abort early (as the authors' code): every tenth of the run, stop when the loss no longer falls.
    check = tf.equal((i + 1) % check_every, 0)
    stop = abort_early & check & (loss > prev_loss * 0.9999)
    prev_loss = tf.where(check, loss, prev_loss)
    return i + 1, modifier, m, v, best_l2, best_adv, success, prev_loss, stop

  def cond(i, modifier, m, v, best_l2, best_adv, success, prev_loss, stop):
    return (i < max_iterations) & tf.logical_not(stop)

  zeros = tf.zeros_like(x)
  state = [tf.constant(0), zeros, zeros, zeros, best_l2, best_adv, tf.zeros([n], tf.bool),
           tf.constant(np.inf, tf.float32), tf.constant(False)]
  _, modifier, _, _, best_l2, best_adv, success, _, _ = tf.while_loop(cond, body, state)
  # The point reached by the last update has not been scored yet.
  x_new = (tf.tanh(w0 + modifier) + 1.0) / 2.0
  logits = model_fn(x_new)
  l2 = tf.reduce_sum(tf.square(x_new - x), axis=[1, 2, 3])
  ok = _succeeded(logits, label, onehot, targeted, confidence)
  better = ok & (l2 < best_l2)
  best_l2 = tf.where(better, l2, best_l2)
  best_adv = tf.where(better[:, None, None, None], x_new, best_adv)
  return best_l2, best_adv, success | ok


def carlini_wagner_l2(model_fn, x, y=None, targeted=False, confidence=0.0, learning_rate=0.01,
                      binary_search_steps=5, max_iterations=100, initial_const=0.01, abort_early=True,
                      batch_size=256):
  """Carlini-Wagner L2 attack.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: class indices. Targeted: the target classes (required). Untargeted: the true labels (None:
      the model's predictions).
    targeted: True moves each image to class y; False moves it away from class y.
    confidence: kappa, the logit margin a success must have (0: just cross the boundary).
    learning_rate: Adam's step size on w (x = (tanh(w) + 1) / 2).
    binary_search_steps: rounds of the per-example search over the constant c (c starts at
      initial_const; multiplied by 10 until a first success, then bisected).
    max_iterations: Adam steps per round.
    initial_const: the first c.
    abort_early: end a round early when the total loss stops falling (checked every tenth of it).
    batch_size: images optimised together.
  Returns:
    float32 numpy array of adversarial images in [0, 1]: for each example the successful image with
    the smallest L2 distance found; examples never successful come back unchanged (equal to x).
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  if binary_search_steps < 1 or max_iterations < 1:
    raise ValueError("carlini_wagner_l2: binary_search_steps and max_iterations must be >= 1, got "
                     f"{binary_search_steps} and {max_iterations}")
  if learning_rate <= 0 or initial_const <= 0 or confidence < 0:
    raise ValueError("carlini_wagner_l2: learning_rate and initial_const must be > 0 and confidence "
                     f">= 0, got {learning_rate}, {initial_const}, {confidence}")
  if len(x) == 0:
    return x.copy()
  num_classes = common.num_classes_of(model_fn, x)
  y = common.attack_labels("carlini_wagner_l2", model_fn, x, y, targeted, num_classes).astype(np.int32)

  def batch(xb, yb):
    n = len(xb)
    xt = tf.constant(xb)
    w0 = tf.atanh(tf.constant((xb * 2.0 - 1.0) * _TANH_SCALE, tf.float32))
    lower = np.zeros(n)
    upper = np.full(n, _UPPER)
    const = np.full(n, float(initial_const))
    best_l2 = tf.fill([n], tf.constant(np.inf, tf.float32))
    best_adv = xt
    for _ in range(binary_search_steps):
      best_l2, best_adv, success = _cw_search_step(
          model_fn, xt, w0, tf.constant(yb), tf.constant(const, tf.float32), best_l2, best_adv,
          bool(targeted), tf.constant(float(confidence)), tf.constant(float(learning_rate)),
          tf.constant(int(max_iterations)), tf.constant(bool(abort_early)))
      success = success.numpy()
      upper = np.where(success, np.minimum(upper, const), upper)
      lower = np.where(success, lower, np.maximum(lower, const))
      bounded = upper < _UPPER / 10
      const = np.where(bounded, (lower + upper) / 2, const * 10)
    return best_adv.numpy()

  return common.run_batched(batch, [x, y], batch_size, pad=True)
