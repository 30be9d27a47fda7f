"""Square Attack (Andriushchenko et al. 2020), L-inf, untargeted: a random search that needs no
gradients, so a model that hides or zeroes its gradients cannot stop it.

Start from vertical stripes of +-eps; each query replaces the perturbation inside one random square
window (side s from the fraction p of pixels, p halved on the paper's schedule) with +-eps per
channel, and keeps the change when the margin z_y - max_{j != y} z_j drops. An image is done once
its margin is negative (misclassified). Our own implementation: all queries of a batch run in one
tf.while_loop that only feeds the still-unbroken images to the model, built once per (model, image
shape) and reused.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common

# Iterations (of 10,000) after which p is halved again: Andriushchenko et al., Sec. 3 / their code.
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_at(p_init, it, n_queries, rescale_schedule=False):
  """Fraction of pixels the square covers at iteration `it` (0-based): p_init halved after each
  P_SCHEDULE entry passed. AutoAttack's standard version uses the schedule as is (rescale False);
  rescale_schedule=True stretches it over n_queries as if they were 10,000 (ART's choice)."""
  if rescale_schedule:
    it = int(it / n_queries * 10000)
  return p_init / 2 ** sum(it > point for point in P_SCHEDULE)


def _margin(logits, y):
  z_y = tf.gather(logits, y, batch_dims=1)
  others = tf.where(tf.one_hot(y, tf.shape(logits)[1]) > 0, -np.inf, logits)
  return z_y - tf.reduce_max(others, axis=1)


def _build(model_ref, x_spec):
  h, w, c = x_spec.shape[1:]

  @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
                                tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
  def run(x, y, eps, sides, seed):
    """sides[i]: the square's side at query i (their number is the query budget)."""
    n = tf.shape(x)[0]
    n_queries = tf.shape(sides)[0]

    def signs(shape, step):
      bits = tf.random.stateless_uniform(shape, [seed, step], 0, 2, dtype=tf.int32)
      return tf.cast(2 * bits - 1, tf.float32)

    x_best = tf.clip_by_value(x + eps * signs([n, 1, w, c], 0), 0.0, 1.0)
    margin = _margin(model_ref()(x_best), y)
    used = tf.ones([n], tf.int32)  # Model queries per image: the first one, then one per step.

    def body(i, x_best, margin, used):
      idx = tf.where(margin > 0)[:, 0]
      xa, xb, ya, ma = (tf.gather(t, idx) for t in (x, x_best, y, margin))
      m = tf.shape(idx)[0]
      side = sides[i]
      top = tf.random.stateless_uniform([m], [seed, 3 * i + 1], 0, h - side + 1, dtype=tf.int32)
      left = tf.random.stateless_uniform([m], [seed, 3 * i + 2], 0, w - side + 1, dtype=tf.int32)
      rows, cols = tf.range(h)[None], tf.range(w)[None]
      in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
      in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
      window = in_rows[:, :, None, None] & in_cols[:, None, :, None]
      new = eps * signs([m, 1, 1, c], 3 * i + 3)
      candidate = tf.clip_by_value(xa + new, 0.0, 1.0)
      # A window that would not change at all is a wasted query: take the opposite signs instead.
      same = tf.reduce_all(tf.logical_not(window) | (tf.abs(candidate - xb) < 1e-7), axis=[1, 2, 3])
      new = tf.where(same[:, None, None, None], -new, new)
      x_new = tf.where(window, tf.clip_by_value(xa + new, 0.0, 1.0), xb)
      m_new = _margin(model_ref()(x_new), ya)
      better = m_new < ma
      x_best = tf.tensor_scatter_nd_update(x_best, idx[:, None],
                                           tf.where(better[:, None, None, None], x_new, xb))
      margin = tf.tensor_scatter_nd_update(margin, idx[:, None], tf.where(better, m_new, ma))
      used = tf.tensor_scatter_nd_add(used, idx[:, None], tf.ones([m], tf.int32))
      return i + 1, x_best, margin, used

    def cond(i, x_best, margin, used):
      return (i < n_queries) & tf.reduce_any(margin > 0)

    _, x_best, margin, used = tf.while_loop(cond, body, [tf.constant(0), x_best, margin, used])
    return x_best, margin <= 0, used

  return run


def square_sides(shape, n_queries, p_init, rescale_schedule=False):
  """Side of the square at each query for images of shape (h, w, c): sqrt(p * h * w) rounded,
  at least 1 and at most h - 1."""
  h, w = shape[0], shape[1]
  sides = [int(round(np.sqrt(p_at(p_init, i, n_queries, rescale_schedule) * h * w))) for i in range(n_queries)]
  return np.clip(sides, 1, min(h, w) - 1).astype(np.int32)


def square(model_fn, x, y, eps, n_queries=5000, p_init=0.8, n_restarts=1, rescale_schedule=False, seed=0,
           batch_size=512):
  """Square Attack, L-inf, untargeted, margin loss (AutoAttack's fourth attack); see
  `square_queries` for the arguments. Returns the adversarial images alone."""
  return square_queries(model_fn, x, y, eps, n_queries, p_init, n_restarts, rescale_schedule, seed,
                        batch_size)[0]


def square_queries(model_fn, x, y, eps, n_queries=5000, p_init=0.8, n_restarts=1, rescale_schedule=False,
                   seed=0, batch_size=512):
  """Square Attack with the model queries each image took, for attacks under a query budget.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model); only its
      outputs are used (no gradients).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows).
    eps: L-inf radius of the ball; 0 returns x unchanged.
    n_queries: search iterations (model queries) per image after the initial one (5,000 in AutoAttack).
    p_init: initial fraction of pixels the square covers (0.8 in AutoAttack for L-inf).
    n_restarts: runs with fresh random draws; later runs attack only the images still unbroken.
    rescale_schedule: False uses the paper's p schedule at its iteration counts (AutoAttack's
      standard setting); True stretches it over n_queries (as ART does).
    seed: seed of the random draws (restart r uses seed + r).
    batch_size: images per batch.
  Returns:
    (x_adv, broken, queries): float32 images with |x_adv - x| <= eps and values in [0, 1] (the
    first misclassified point found, else the point of lowest margin); whether each image is
    misclassified; the model queries each image took (over all restarts). Without a rescaled
    schedule a run is the prefix of a longer one, so `queries <= B` tells what budget B breaks.
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if n_queries < 1 or n_restarts < 1 or not 0 < p_init <= 1:
    raise ValueError(f"square: n_queries and n_restarts must be >= 1 and p_init in (0, 1], got "
                     f"{n_queries}, {n_restarts}, {p_init}")
  if len(x) == 0 or eps == 0:
    return x.copy(), np.zeros(len(x), bool), np.zeros(len(x), np.int64)
  if min(x.shape[1:3]) < 2:
    raise ValueError(f"square: images must be at least 2x2 pixels, got {x.shape[1:3]}")
  num_classes = common.num_classes_of(model_fn, x)
  y = common.as_labels(y, len(x), "y", num_classes).astype(np.int32)
  run = common.model_graph(model_fn, ("square", x.shape[1:]), lambda ref: _build(ref, common.image_spec(x)))
  sides = tf.constant(square_sides(x.shape[1:], n_queries, p_init, rescale_schedule))
  x_adv = x.copy()
  queries = np.zeros(len(x), np.int64)
  broken_all = np.zeros(len(x), bool)
  todo = np.arange(len(x))
  for restart in range(n_restarts):
    for start in range(0, len(todo), batch_size):
      rows = todo[start:start + batch_size]
      adv, broken, used = run(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(eps, tf.float32), sides,
                              tf.constant(seed + restart, tf.int32))
      broken = np.asarray(broken)
      replace = broken | (restart == 0)
      x_adv[rows[replace]] = np.asarray(adv)[replace]
      broken_all[rows] = broken
      queries[rows] += np.asarray(used)
    todo = todo[~broken_all[todo]]
    if len(todo) == 0:
      break
  return common.project_linf(x_adv, x, eps), broken_all, queries
