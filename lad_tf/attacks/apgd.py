"""APGD-CE (Croce & Hein 2020), untargeted L-inf, batched TensorFlow.

The strong, step-size-free attack of AutoAttack, used to keep robustness figures honest: PGD on the
cross-entropy with momentum 0.75, a per-example step size starting at 2 * eps that is halved at
checkpoints (w_j = ceil(p_j * N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06)) when fewer than rho = 75% of the steps since the last checkpoint raised the loss, or when
neither the step size nor the best loss changed since then; after a halving the example restarts
from its best point. Our own implementation: all N iterations of a batch run in one tf.function.
An example counts as broken as soon as any iterate is misclassified, and that iterate is returned.
"""
import math

import numpy as np
import tensorflow as tf

from lad_tf.attacks import common


def checkpoints(n_iter):
  """The APGD checkpoints (iteration indices in 1..n_iter) for a run of n_iter iterations."""
  p = [0.0, 0.22]
  while p[-1] < 1:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # Rounding first keeps float noise (0.22 + 0.19 = 0.41000000000000003) from moving a checkpoint.
  points = sorted({int(math.ceil(round(q * n_iter, 6))) for q in p[1:]})
  return [w for w in points if 0 < w <= n_iter]


def _ce(logits, y):
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


_STATE = ("x_adv", "x_prev", "grad", "loss", "x_best", "grad_best", "loss_best", "x_found", "found",
          "step", "loss_best_ckpt", "reduced_ckpt")


def _project(z, x, eps):
  z = tf.minimum(tf.maximum(z, x - eps), x + eps)
  return tf.clip_by_value(z, common.CLIP_MIN, common.CLIP_MAX)


def _loss_grad(model_fn, z, y):
  with tf.GradientTape() as tape:
    tape.watch(z)
    logits = model_fn(z)
    loss = _ce(logits, y)
    total = tf.reduce_sum(loss)
  grad = tape.gradient(total, z)
  wrong = tf.not_equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
  return loss, grad, wrong


def _expand(mask):
  return mask[:, None, None, None]


@tf.function(reduce_retracing=True)
def _apgd_init(model_fn, x, y, x_start, eps):
  x_adv = _project(x_start, x, eps)
  loss, grad, wrong = _loss_grad(model_fn, x_adv, y)
  n = tf.shape(x)[0]
  return dict(x_adv=x_adv, x_prev=x_adv, grad=grad, loss=loss, x_best=x_adv, grad_best=grad,
              loss_best=loss, x_found=x_adv, found=wrong, step=tf.fill([n], 2.0 * eps),
              loss_best_ckpt=loss, reduced_ckpt=tf.zeros([n], tf.bool))


@tf.function(reduce_retracing=True)
def _apgd_segment(model_fn, x, y, eps, state, first_iter, n_steps, rho, momentum):
  """Runs the n_steps iterations from one checkpoint to the next, then applies the checkpoint rule."""

  def body(i, s, increases):
    a = tf.where(first_iter + i > 0, momentum, 1.0)
    z = _project(s["x_adv"] + _expand(s["step"]) * tf.sign(s["grad"]), x, eps)
    x_new = _project(s["x_adv"] + a * (z - s["x_adv"]) + (1.0 - a) * (s["x_adv"] - s["x_prev"]), x, eps)
    loss, grad, wrong = _loss_grad(model_fn, x_new, y)
    new_found = wrong & tf.logical_not(s["found"])
    improved = loss > s["loss_best"]
    increases = increases + tf.cast(loss > s["loss"], tf.float32)
    s = dict(s, x_prev=s["x_adv"], x_adv=x_new, grad=grad, loss=loss,
             x_found=tf.where(_expand(new_found), x_new, s["x_found"]), found=s["found"] | wrong,
             x_best=tf.where(_expand(improved), x_new, s["x_best"]),
             grad_best=tf.where(_expand(improved), grad, s["grad_best"]),
             loss_best=tf.where(improved, loss, s["loss_best"]))
    return i + 1, s, increases

  def cond(i, s, increases):
    # Stop early once every example of the batch is broken: nothing is left to attack.
    return (i < n_steps) & tf.logical_not(tf.reduce_all(s["found"]))

  increases = tf.zeros_like(state["loss"])
  _, s, increases = tf.while_loop(cond, body, [tf.constant(0), state, increases])
  oscillating = increases < rho * tf.cast(n_steps, tf.float32)
  stalled = tf.logical_not(s["reduced_ckpt"]) & (s["loss_best"] <= s["loss_best_ckpt"])
  reduce = oscillating | stalled
  return dict(s, step=tf.where(reduce, s["step"] / 2.0, s["step"]),
              x_adv=tf.where(_expand(reduce), s["x_best"], s["x_adv"]),
              grad=tf.where(_expand(reduce), s["grad_best"], s["grad"]),
              reduced_ckpt=reduce, loss_best_ckpt=s["loss_best"])


def _apgd_run(model_fn, x, y, x_start, eps, n_iter, rho, momentum):
  """One APGD run on a batch; examples leave the batch at the checkpoint after they are broken.
  Returns (x_adv, found) as numpy arrays."""
  eps_t = tf.constant(eps, tf.float32)
  state = _apgd_init(model_fn, tf.constant(x), tf.constant(y), tf.constant(x_start), eps_t)
  out = np.array(state["x_found"])
  found_all = np.array(state["found"])
  rows = np.arange(len(x))
  previous = 0
  ends = checkpoints(n_iter)
  if ends[-1] < n_iter:
    ends.append(n_iter)  # the iterations after the last checkpoint
  for w in ends:
    keep = ~np.asarray(state["found"])
    if not keep.any():
      break
    if not keep.all():
      idx = tf.constant(np.flatnonzero(keep))
      state = {key: tf.gather(value, idx) for key, value in state.items()}
      rows = rows[keep]
    state = _apgd_segment(model_fn, tf.constant(x[rows]), tf.constant(y[rows]), eps_t, state,
                          tf.constant(previous), tf.constant(w - previous), tf.constant(float(rho)),
                          tf.constant(float(momentum)))
    found = np.asarray(state["found"])
    out[rows] = np.where(found[:, None, None, None], np.asarray(state["x_found"]),
                         np.asarray(state["x_best"]))
    found_all[rows] = found
    previous = w
  return out, found_all


def apgd(model_fn, x, y, eps, n_iter=100, n_restarts=1, rho=0.75, momentum=0.75, random_start=True,
         seed=0, batch_size=512):
  """APGD with the cross-entropy loss, untargeted, L-inf.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows); the attack raises their cross-entropy.
    eps: L-inf radius of the ball (e.g. 0.3, or 8/255); 0 returns x unchanged.
    n_iter: iterations N per restart (100 in AutoAttack).
    n_restarts: runs from fresh random starts; each later run attacks only the examples the earlier
      ones did not break.
    rho: fraction of loss-raising steps below which a checkpoint halves the step size.
    momentum: weight of the new step against the previous one (0.75).
    random_start: start at a uniformly random point of the ball (True) or at x (False).
    seed: seed of the random starts (restart r uses seed + r).
    batch_size: images per batch.
  Returns:
    float32 numpy array of adversarial images with |x_adv - x| <= eps and values in [0, 1]:
    the first misclassified iterate where one was found, else the iterate of highest loss.
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if n_iter < 1 or n_restarts < 1:
    raise ValueError(f"apgd: n_iter and n_restarts must be >= 1, got {n_iter} and {n_restarts}")
  if len(x) == 0:
    return x.copy()
  num_classes = common.num_classes_of(model_fn, x)
  y = common.as_labels(y, len(x), "y", num_classes).astype(np.int32)
  if eps == 0:
    return x.copy()
  x_adv = x.copy()
  todo = np.arange(len(x))
  for restart in range(n_restarts):
    if len(todo) == 0:
      break
    rng = np.random.default_rng(seed + restart)
    unbroken = []
    for start in range(0, len(todo), batch_size):
      rows = todo[start:start + batch_size]
      x_start = x[rows]
      if random_start:
        x_start = x_start + rng.uniform(-eps, eps, size=x_start.shape).astype(np.float32)
      adv, found = _apgd_run(model_fn, x[rows], y[rows], x_start, eps, n_iter, rho, momentum)
      # Later restarts only replace the result of examples they break.
      replace = found if restart > 0 else np.ones(len(rows), bool)
      x_adv[rows[replace]] = adv[replace]
      unbroken.append(rows[~found])
    todo = np.concatenate(unbroken)
  return common.project_linf(x_adv, x, eps)
