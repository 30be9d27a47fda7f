"""APGD (Croce & Hein 2020), L-inf, batched TensorFlow: APGD-CE, APGD-DLR and APGD-T.

The strong, step-size-free attack of AutoAttack, used to keep robustness figures honest: PGD with
momentum 0.75 on the cross-entropy or the DLR loss (difference of logits ratio, invariant to a
rescaling of the logits, so a model cannot hide behind saturated softmax outputs), with a
per-example step size starting at 2 * eps that is halved at checkpoints (w_j = ceil(p_j * N),
p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when at most rho = 75% of the
steps since the last checkpoint raised the loss, or when neither the step size nor the best loss
changed since then; after a halving the example restarts from its best point.

APGD-T is AutoAttack's targeted variant: the targeted DLR loss (z_y - z_t) / (z_1 - (z_3 + z_4) / 2)
against each of the k classes the model ranks highest after the true one, run only on the images the
earlier targets did not break.

Our own implementation. The graph functions are built once per (model, image shape) with a fixed
input signature and reused across restarts, targets, eps values and calls (see
`common.model_graph`); all iterations between two checkpoints run inside one tf.while_loop.
"""
import math

import numpy as np
import tensorflow as tf

from lad_tf.attacks import common

# Loss ids the graph switches on (a tensor, so one traced graph serves all four).
LOSSES = {"ce": 0, "dlr": 1, "ce-targeted": 2, "dlr-targeted": 3}


def checkpoints(n_iter):
  """The APGD checkpoints (iteration indices in 1..n_iter) for a run of n_iter iterations."""
  p = [0.0, 0.22]
  while p[-1] < 1:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # Rounding first keeps float noise (0.22 + 0.19 = 0.41000000000000003) from moving a checkpoint.
  points = sorted({int(math.ceil(round(q * n_iter, 6))) for q in p[1:]})
  return [w for w in points if 0 < w <= n_iter]


def attack_loss(logits, y, target, loss_id):
  """Per-example loss APGD maximises: CE of y, DLR, or (targeted) -CE of target, targeted DLR."""
  k = logits.shape[-1]
  top = tf.sort(logits, axis=1, direction="DESCENDING")
  z_y = tf.gather(logits, y, batch_dims=1)
  z_t = tf.gather(logits, target, batch_dims=1)
  third = top[:, min(2, k - 1)]
  fourth = top[:, min(3, k - 1)]

  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
  best_other = tf.where(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), top[:, 1], top[:, 0])
  dlr = -(z_y - best_other) / (top[:, 0] - third + 1e-12)
  ce_targeted = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
  dlr_targeted = -(z_y - z_t) / (top[:, 0] - 0.5 * (third + fourth) + 1e-12)
  # All four are cheap next to the model; picking one by index keeps a single graph (the gradient
  # only flows through the picked one).
  return tf.gather(tf.stack([ce, dlr, ce_targeted, dlr_targeted]), loss_id)


def _project(z, x, eps):
  z = tf.minimum(tf.maximum(z, x - eps), x + eps)
  return tf.clip_by_value(z, common.CLIP_MIN, common.CLIP_MAX)


def _expand(mask):
  return mask[:, None, None, None]


def _build(model_ref, x_spec):
  """The two graph functions of APGD for one model and image shape."""
  labels = tf.TensorSpec([None], tf.int32)
  scalar = lambda dtype=tf.float32: tf.TensorSpec([], dtype)
  vector = lambda dtype=tf.float32: tf.TensorSpec([None], dtype)
  state_spec = (x_spec, x_spec, x_spec, vector(), x_spec, x_spec, vector(), x_spec, vector(tf.bool),
                vector(), vector(), vector(tf.bool))

  def loss_grad(z, y, target, loss_id, to_target):
    with tf.GradientTape() as tape:
      tape.watch(z)
      logits = model_ref()(z)
      loss = attack_loss(logits, y, target, loss_id)
      total = tf.reduce_sum(loss)
    grad = tape.gradient(total, z)
    pred = tf.argmax(logits, axis=1, output_type=tf.int32)
    success = tf.where(to_target, tf.equal(pred, target), tf.not_equal(pred, y))
    return loss, grad, success

  @tf.function(input_signature=[x_spec, labels, labels, x_spec, scalar(), scalar(tf.int32), scalar(tf.bool)])
  def init(x, y, target, x_start, eps, loss_id, to_target):
    x_adv = _project(x_start, x, eps)
    loss, grad, success = loss_grad(x_adv, y, target, loss_id, to_target)
    n = tf.shape(x)[0]
    return (x_adv, x_adv, grad, loss, x_adv, grad, loss, x_adv, success, tf.fill([n], 2.0 * eps), loss,
            tf.zeros([n], tf.bool))

  @tf.function(input_signature=[x_spec, labels, labels, scalar(), state_spec, scalar(tf.int32),
                                scalar(tf.int32), scalar(), scalar(), scalar(tf.int32), scalar(tf.bool),
                                scalar(tf.bool)])
  def segment(x, y, target, eps, state, first_iter, n_steps, rho, momentum, loss_id, to_target, stop_early):
    """The n_steps iterations from one checkpoint to the next, then the checkpoint rule."""

    def body(i, s, increases):
      (x_adv, x_prev, grad, loss, x_best, grad_best, loss_best, x_found, found, step, loss_best_ckpt,
       reduced_ckpt) = s
      a = tf.where(first_iter + i > 0, momentum, 1.0)
      z = _project(x_adv + _expand(step) * tf.sign(grad), x, eps)
      x_new = _project(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev), x, eps)
      loss_new, grad_new, success = loss_grad(x_new, y, target, loss_id, to_target)
      first_success = success & tf.logical_not(found)
      improved = loss_new > loss_best
      increases = increases + tf.cast(loss_new > loss, tf.float32)
      s = (x_new, x_adv, grad_new, loss_new,
           tf.where(_expand(improved), x_new, x_best), tf.where(_expand(improved), grad_new, grad_best),
           tf.where(improved, loss_new, loss_best),
           tf.where(_expand(first_success), x_new, x_found), found | success, step, loss_best_ckpt,
           reduced_ckpt)
      return i + 1, s, increases

    def cond(i, s, increases):
      # Stop early once every example of the batch is broken: nothing is left to attack.
      return (i < n_steps) & tf.logical_not(stop_early & tf.reduce_all(s[8]))

    _, s, increases = tf.while_loop(cond, body, [tf.constant(0), state, tf.zeros_like(state[3])])
    (x_adv, x_prev, grad, loss, x_best, grad_best, loss_best, x_found, found, step, loss_best_ckpt,
     reduced_ckpt) = s
    oscillating = increases <= rho * tf.cast(n_steps, tf.float32)
    stalled = tf.logical_not(reduced_ckpt) & (loss_best <= loss_best_ckpt)
    reduce = oscillating | stalled
    return (tf.where(_expand(reduce), x_best, x_adv), x_prev, tf.where(_expand(reduce), grad_best, grad),
            loss, x_best, grad_best, loss_best, x_found, found, tf.where(reduce, step / 2.0, step),
            loss_best, reduce)

  return init, segment


def _graphs(model_fn, x):
  return common.model_graph(model_fn, ("apgd", x.shape[1:]), lambda ref: _build(ref, common.image_spec(x)))


def _run(graphs, x, y, target, x_start, eps, n_iter, rho, momentum, loss_id, to_target, highest_loss):
  """One APGD run on a batch. Unless highest_loss, examples leave the batch at the checkpoint after
  they are broken. Returns numpy (x_out, success, best loss): x_out is the first successful iterate
  where there is one, else the highest-loss iterate (always the latter with highest_loss)."""
  init, segment = graphs
  eps_t = tf.constant(eps, tf.float32)
  flags = (tf.constant(loss_id, tf.int32), tf.constant(bool(to_target)))
  state = init(tf.constant(x), tf.constant(y), tf.constant(target), tf.constant(x_start), eps_t, *flags)
  x_found, found_all, best = np.array(state[7]), np.array(state[8]), np.array(state[6])
  x_best = np.array(state[4])
  rows = np.arange(len(x))
  previous = 0
  ends = checkpoints(n_iter)
  if ends[-1] < n_iter:
    ends.append(n_iter)  # the iterations after the last checkpoint
  for w in ends:
    keep = np.ones(len(rows), bool) if highest_loss else ~np.asarray(state[8])
    if not keep.any():
      break
    if not keep.all():
      idx = tf.constant(np.flatnonzero(keep))
      state = tuple(tf.gather(value, idx) for value in state)
      rows = rows[keep]
    state = segment(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(target[rows]), eps_t, state,
                    tf.constant(previous), tf.constant(w - previous), tf.constant(float(rho)),
                    tf.constant(float(momentum)), *flags, tf.constant(not highest_loss))
    x_found[rows], found_all[rows] = np.asarray(state[7]), np.asarray(state[8])
    x_best[rows], best[rows] = np.asarray(state[4]), np.asarray(state[6])
    previous = w
  if highest_loss:
    return x_best, found_all, best
  return np.where(_expand(found_all), x_found, x_best), found_all, best


def _check(x, y, eps, n_iter, n_restarts, loss, model_fn, name):
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if n_iter < 1 or n_restarts < 1:
    raise ValueError(f"{name}: n_iter and n_restarts must be >= 1, got {n_iter} and {n_restarts}")
  if loss not in ("ce", "dlr"):
    raise ValueError(f"{name}: loss must be 'ce' or 'dlr', got {loss!r}")
  num_classes = common.num_classes_of(model_fn, x) if len(x) else 0
  if loss == "dlr" and len(x) and num_classes < 4:
    raise ValueError(f"{name}: the DLR loss needs at least 4 classes, the model has {num_classes}; "
                     "use loss='ce'")
  y = common.as_labels(y, len(x), "y", num_classes or None).astype(np.int32)
  return x, y, eps, num_classes


def _attack(model_fn, x, y, target, eps, n_iter, n_restarts, loss_id, to_target, highest_loss, rho,
            momentum, random_start, seed, batch_size, todo):
  """Restarts and batching around _run over the rows `todo`. Returns (x_adv, success, best loss) for
  all rows of x (rows outside todo: x, False, -inf)."""
  graphs = _graphs(model_fn, x)
  x_adv = x.copy()
  success = np.zeros(len(x), bool)
  best = np.full(len(x), -np.inf, np.float32)
  for restart in range(n_restarts):
    if len(todo) == 0:
      break
    rng = np.random.default_rng(seed + restart)
    for start in range(0, len(todo), batch_size):
      rows = todo[start:start + batch_size]
      x_start = x[rows]
      if random_start:
        x_start = x_start + rng.uniform(-eps, eps, size=x_start.shape).astype(np.float32)
      adv, found, loss = _run(graphs, x[rows], y[rows], target[rows], x_start, eps, n_iter, rho, momentum,
                              loss_id, to_target, highest_loss)
      # A later restart replaces an earlier result where it is better: a success (first mode) or a
      # higher loss (highest-loss mode).
      replace = (loss > best[rows]) if highest_loss else (found | (restart == 0))
      x_adv[rows[replace]] = adv[replace]
      best[rows[replace]] = loss[replace]
      success[rows] |= found
    if not highest_loss:
      todo = todo[~success[todo]]
  return x_adv, success, best


def apgd(model_fn, x, y, eps, loss="ce", y_target=None, n_iter=100, n_restarts=1,
         return_highest_loss=False, rho=0.75, momentum=0.75, random_start=True, seed=0, batch_size=512):
  """APGD with the cross-entropy or DLR loss, L-inf, untargeted or towards given targets.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows).
    eps: L-inf radius of the ball (e.g. 0.3, or 8/255); 0 returns x unchanged.
    loss: "ce" (cross-entropy, APGD-CE) or "dlr" (difference of logits ratio, APGD-DLR; needs at
      least 4 classes).
    y_target: None for the untargeted attack (raise the loss of y; success = misclassified), or one
      target class per image: the targeted loss (-CE of the target, or the targeted DLR) is raised
      and success means the model says the target.
    n_iter: iterations N per restart (100 in AutoAttack).
    n_restarts: runs from fresh random starts. By default each later run attacks only the examples
      the earlier ones did not break; with return_highest_loss every run attacks every example.
    return_highest_loss: False returns the first successful iterate (the cheapest adversarial
      example, what robust accuracy needs); True runs all iterations on every image and returns the
      iterate of highest loss, which keeps fooling a model after small weight changes (use it when
      the examples are transferred to another model).
    rho: fraction of loss-raising steps at or below which a checkpoint halves the step size.
    momentum: weight of the new step against the previous one (0.75).
    random_start: start at a uniformly random point of the ball (True) or at x (False).
    seed: seed of the random starts (restart r uses seed + r).
    batch_size: images per batch.
  Returns:
    float32 numpy array of adversarial images with |x_adv - x| <= eps and values in [0, 1]: the
    first successful iterate where one was found, else the iterate of highest loss (always the
    highest-loss iterate with return_highest_loss).
  """
  x, y, eps, num_classes = _check(x, y, eps, n_iter, n_restarts, loss, model_fn, "apgd")
  if len(x) == 0 or eps == 0:
    return x.copy()
  to_target = y_target is not None
  target = (common.as_labels(y_target, len(x), "y_target", num_classes).astype(np.int32)
            if to_target else y)
  loss_id = LOSSES[loss + "-targeted"] if to_target else LOSSES[loss]
  x_adv, _, _ = _attack(model_fn, x, y, target, eps, n_iter, n_restarts, loss_id, to_target,
                        return_highest_loss, rho, momentum, random_start, seed, batch_size,
                        np.arange(len(x)))
  return common.project_linf(x_adv, x, eps)


def top_other_classes(logits, y, k):
  """The k classes with the highest logits other than y, best first (int32 array, shape (n, k))."""
  logits = np.array(logits, np.float64)
  logits[np.arange(len(y)), y] = -np.inf
  return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)


def apgd_targeted(model_fn, x, y, eps, n_target_classes=9, n_iter=100, n_restarts=1, loss="dlr",
                  rho=0.75, momentum=0.75, random_start=True, seed=0, batch_size=512,
                  return_targets=False):
  """APGD-T (AutoAttack's targeted APGD), L-inf: for the images still classified correctly, the
  targeted DLR loss against the model's top-ranked other class, then the next, and so on.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows).
    eps: L-inf radius of the ball; 0 returns x unchanged.
    n_target_classes: how many of the highest-ranked other classes (on the clean image) to try, in
      order (9 in AutoAttack for ten classes; capped at classes - 1).
    n_iter: iterations per target and restart (100 in AutoAttack).
    n_restarts: random starts per target (1 in AutoAttack).
    loss: "dlr" (targeted DLR, AutoAttack's choice; needs at least 4 classes) or "ce" (-CE of the
      target).
    rho, momentum, random_start, seed, batch_size: as in `apgd` (target j uses seed + 1000 * j).
    return_targets: also return, per image, the target class of the run that broke it (-1 where none
      did or the image was already misclassified).
  Returns:
    float32 numpy array of adversarial images in the ball and in [0, 1] (the image unchanged where
    nothing broke it or it was already misclassified); with return_targets, (images, targets).
    An image counts as broken when the model misclassifies it (as in AutoAttack).
  """
  x, y, eps, num_classes = _check(x, y, eps, n_iter, n_restarts, loss, model_fn, "apgd_targeted")
  x_adv = x.copy()
  used = np.full(len(x), -1, np.int32)
  if len(x) and eps > 0:
    logits = np.concatenate([np.asarray(model_fn(tf.constant(x[i:i + batch_size])))
                             for i in range(0, len(x), batch_size)])
    targets = top_other_classes(logits, y, min(n_target_classes, num_classes - 1))
    todo = np.flatnonzero(np.argmax(logits, axis=1) == y)
    for j in range(targets.shape[1]):
      if len(todo) == 0:
        break
      adv, broken, _ = _attack(model_fn, x, y, targets[:, j], eps, n_iter, n_restarts,
                               LOSSES[loss + "-targeted"], False, False, rho, momentum, random_start,
                               seed + 1000 * j, batch_size, todo)
      x_adv[broken] = adv[broken]
      used[broken] = targets[broken, j]
      todo = todo[~broken[todo]]
  x_adv = common.project_linf(x_adv, x, eps)
  return (x_adv, used) if return_targets else x_adv
