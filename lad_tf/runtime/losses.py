"""The per-example losses of lad_tf's training loops, each written once for every loop.

Each is a `loss_fn(model, x, y, training)` for lad_tf.runtime.execution.fit (see there): it returns float32
per-example losses (and per-example figures reported as means). Logits are cast to float32 first, so
the losses hold under mixed precision. The Eq. 4 loss lives with the defence (lad_tf.lad.fine_tuning).
"""
import tensorflow as tf

from lad_tf.choices import RECON_NORMS


def cross_entropy(labels, logits):
  """Per-example softmax cross-entropy of logits (cast to float32) against integer labels."""
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))


def correct(labels, logits):
  """1.0 where argmax(logits) is the label, else 0.0."""
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
  return tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)


def classification(model, x, y, training):
  """Cross-entropy of a logits classifier on (x, y), with its accuracy."""
  logits = model(x, training=training)
  return {"loss": cross_entropy(y, logits), "accuracy": correct(y, logits)}


def pixel_error(reconstruction, target, recon_norm="l2"):
  """Per-example mean squared (l2) or absolute (l1) pixel error."""
  diff = tf.cast(reconstruction, tf.float32) - tf.cast(target, tf.float32)
  err = tf.square(diff) if recon_norm == "l2" else tf.abs(diff)
  return tf.reduce_mean(tf.reshape(err, [tf.shape(err)[0], -1]), axis=-1)


def reconstruction(recon_norm="l2"):
  """The decoder's loss (Eq. 2): pixel error of G(z) against x on (z, x) pairs."""
  if recon_norm not in RECON_NORMS:
    raise ValueError(f"recon_norm must be one of {RECON_NORMS}, got '{recon_norm}'")

  def loss(model, z, x, training):
    return pixel_error(model(z, training=training), x, recon_norm)
  return loss


def per_example(out):
  """A loss_fn's result as a dict of float32 per-example vectors with the key "loss"."""
  out = dict(out) if isinstance(out, dict) else {"loss": out}
  if "loss" not in out:
    raise ValueError(f"loss_fn must return per-example losses or a dict with 'loss', got keys {sorted(out)}")
  return {k: tf.cast(v, tf.float32) for k, v in out.items()}
