"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack"), L-inf, targeted version as AutoAttack runs it.

FAB looks for the smallest perturbation that crosses the decision boundary towards a target class:
each step linearises the boundary between the true class and the target at the current point,
projects both the current point and the original image onto that hyperplane (minimal L-inf move
within the [0, 1] box), moves to a convex combination of the two projections (weight on the
original's projection alpha <= alpha_max, overshoot eta), and after every success steps back
towards the original by beta. Unlike APGD it does not need a step size or a loss that saturates, so
it catches models whose loss landscape is flat around the data. Targets: the model's top-ranked
other classes on the clean image, one after another, on the images still unbroken. An image counts
as broken when FAB's smallest adversarial point lies within eps.

Our own implementation; the graph is built once per (model, image shape) and reused across targets,
restarts and calls.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common
from lad_tf.attacks.apgd import top_other_classes


def project_linf_hyperplane(p, w, b):
  """d of smallest L-inf norm with w . (p + d) = b and p + d in [0, 1], per row (p, w: (n, d); b: (n,)).

  The best move of L-inf size r pushes each coordinate by min(r, room) in the direction of sign(w),
  so w . d grows piecewise linearly in r; sorting the rooms gives the exact r. Where the box does
  not allow reaching the hyperplane, d is the farthest corner in the right direction.
  """
  gap = b - tf.reduce_sum(w * p, axis=1)
  w = w * tf.where(gap < 0, -1.0, 1.0)[:, None]
  gap = tf.abs(gap)
  room = tf.where(w > 0, 1.0 - p, tf.where(w < 0, p, 0.0))
  order = tf.argsort(room, axis=1)
  room_sorted = tf.gather(room, order, batch_dims=1)
  w_sorted = tf.gather(tf.abs(w), order, batch_dims=1)
  done = tf.cumsum(w_sorted * room_sorted, axis=1)  # from coordinates already at their room
  total = tf.reduce_sum(w_sorted, axis=1, keepdims=True)
  rest = total - tf.cumsum(w_sorted, axis=1)  # weight of the coordinates still below their room
  reach = done + room_sorted * rest >= gap[:, None]  # reachable with r = room_sorted[j]
  feasible = tf.reduce_any(reach, axis=1)
  j = tf.argmax(tf.cast(reach, tf.int32), axis=1, output_type=tf.int32)
  before = tf.maximum(j - 1, 0)
  done_before = tf.where(j > 0, tf.gather(done, before, batch_dims=1), 0.0)
  rest_before = tf.where(j > 0, tf.gather(rest, before, batch_dims=1), total[:, 0])
  r = (gap - done_before) / tf.maximum(rest_before, 1e-12)
  r = tf.where(feasible, r, np.inf)
  return tf.sign(w) * tf.minimum(r[:, None], room)


def _build(model_ref, x_spec):
  labels = tf.TensorSpec([None], tf.int32)
  scalar = tf.TensorSpec([], tf.float32)

  @tf.function(input_signature=[x_spec, labels, labels, x_spec, tf.TensorSpec([], tf.int32), scalar, scalar,
                                scalar])
  def run(x, y, target, x_start, n_iter, alpha_max, eta, beta):
    """Returns (smallest adversarial point found, its L-inf distance; inf where none)."""
    n = tf.shape(x)[0]
    flat = lambda t: tf.reshape(t, [n, -1])
    x0 = flat(x)

    def body(i, x1, adv, res):
      with tf.GradientTape() as tape:
        tape.watch(x1)
        logits = model_ref()(x1)
        diff = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
        total = tf.reduce_sum(diff)
      grad = flat(tape.gradient(total, x1))
      b = -diff + tf.reduce_sum(grad * flat(x1), axis=1)
      d1 = project_linf_hyperplane(flat(x1), grad, b)
      d2 = project_linf_hyperplane(x0, grad, b)
      a1 = tf.maximum(tf.reduce_max(tf.abs(d1), axis=1), 1e-8)
      a2 = tf.maximum(tf.reduce_max(tf.abs(d2), axis=1), 1e-8)
      alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
      new = tf.clip_by_value((flat(x1) + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
      new = tf.reshape(new, tf.shape(x))
      is_adv = tf.not_equal(tf.argmax(model_ref()(new), axis=1, output_type=tf.int32), y)
      dist = tf.reduce_max(tf.abs(flat(new) - x0), axis=1)
      better = is_adv & (dist < res)
      adv = tf.where(better[:, None, None, None], new, adv)
      res = tf.where(better, dist, res)
      new = tf.where(is_adv[:, None, None, None], x + (new - x) * beta, new)
      return i + 1, new, adv, res

    _, _, adv, res = tf.while_loop(lambda i, *_: i < n_iter, body,
                                   [tf.constant(0), x_start, x, tf.fill([n], np.inf)])
    return adv, res

  return run


def fab(model_fn, x, y, eps, n_target_classes=9, n_iter=100, n_restarts=1, alpha_max=0.1, eta=1.05,
        beta=0.9, seed=0, batch_size=512):
  """FAB-T, L-inf: the smallest boundary crossing towards each of the top-ranked other classes.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows).
    eps: L-inf radius within which a crossing counts; 0 returns x unchanged.
    n_target_classes: how many of the highest-ranked other classes (on the clean image) to try, in
      order (9 in AutoAttack for ten classes; capped at classes - 1).
    n_iter: FAB steps per target and restart (100 in AutoAttack).
    n_restarts: runs per target; the first starts at x, later ones at a random point of the ball of
      radius eps / 2 (AutoAttack: 1).
    alpha_max: largest weight of the original image's projection in a step (0.1).
    eta: overshoot of each projection step (1.05).
    beta: backward step towards x after a success (0.9).
    seed: seed of the random starts.
    batch_size: images per batch.
  Returns:
    float32 numpy array: for each image broken within eps, FAB's smallest adversarial point; for
    the others (and images already misclassified) the image unchanged. Values in [0, 1].
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if n_iter < 1 or n_restarts < 1:
    raise ValueError(f"fab: n_iter and n_restarts must be >= 1, got {n_iter} and {n_restarts}")
  x_adv = x.copy()
  if len(x) == 0 or eps == 0:
    return x_adv
  num_classes = common.num_classes_of(model_fn, x)
  y = common.as_labels(y, len(x), "y", num_classes).astype(np.int32)
  run = common.model_graph(model_fn, ("fab", x.shape[1:]), lambda ref: _build(ref, common.image_spec(x)))
  logits = np.concatenate([np.asarray(model_fn(tf.constant(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])
  targets = top_other_classes(logits, y, min(n_target_classes, num_classes - 1))
  todo = np.flatnonzero(np.argmax(logits, axis=1) == y)
  rng = np.random.default_rng(seed)
  settings = [tf.constant(n_iter, tf.int32)] + [tf.constant(float(v)) for v in (alpha_max, eta, beta)]
  for j in range(targets.shape[1]):
    for restart in range(n_restarts):
      if len(todo) == 0:
        return common.project_linf(x_adv, x, eps)
      broken = np.zeros(len(todo), bool)
      for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        x_start = x[rows]
        if restart > 0:
          x_start = np.clip(x_start + rng.uniform(-eps / 2, eps / 2, x_start.shape), 0, 1).astype(np.float32)
        adv, res = run(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(targets[rows, j]),
                       tf.constant(x_start), *settings)
        ok = np.asarray(res) <= eps * (1 + 1e-5)
        x_adv[rows[ok]] = np.asarray(adv)[ok]
        broken[start:start + len(rows)] = ok
      todo = todo[~broken]
  return common.project_linf(x_adv, x, eps)
