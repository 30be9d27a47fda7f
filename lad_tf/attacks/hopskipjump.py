"""HopSkipJump (Chen, Jordan and Wainwright 2020), L-inf, untargeted: an attack that sees only the
predicted label, so an endpoint that hides its probabilities still leaks enough.

From an adversarial starting point (uniform noise, pulled towards the image by a binary search),
each iteration walks the decision boundary: a binary search puts the point on the boundary, the
sign of the boundary's normal is estimated from the labels of `num_evals` random points around it
(Monte Carlo, baseline-corrected), a geometric step search moves along that sign while the label
stays wrong, and the next binary search pulls the point back towards the image. Our own numpy
implementation, one image at a time (each image is one attacker's run), every model call counted
against a per-image query budget; the run of an image stops once it holds an adversarial example
within eps.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common


class _Spent(Exception):
  """The image's query budget is used up, or an adversarial example within eps was found."""


class _Oracle:
  """Labels of query points for one image, counting queries and keeping the best adversarial."""

  def __init__(self, model_fn, x0, y, eps, budget):
    self.model_fn, self.x0, self.y, self.eps, self.budget = model_fn, x0, y, eps, budget
    self.used = 0
    self.found_at = None  # Queries (1-based) when an adversarial within eps was first seen.
    self.best, self.best_dist = x0, np.inf

  def adversarial(self, points):
    """Whether each of `points` is misclassified (a batch is one call, len(points) queries)."""
    room = self.budget - self.used
    if room <= 0:
      raise _Spent()
    asked = len(points)
    points = points[:room]
    labels = np.argmax(np.asarray(self.model_fn(tf.constant(points, tf.float32))), axis=-1)
    adv = labels != self.y
    dists = np.max(np.abs(points - self.x0).reshape(len(points), -1), axis=1)
    if adv.any():
      k = int(np.argmin(np.where(adv, dists, np.inf)))
      if dists[k] < self.best_dist:
        self.best, self.best_dist = points[k], float(dists[k])
      within = adv & (dists <= self.eps + 1e-6)
      if within.any() and self.found_at is None:
        self.found_at = self.used + int(np.argmax(within)) + 1
    self.used += len(points)
    if self.found_at is not None or len(points) < asked:
      raise _Spent()
    return adv


def _linf(a, b):
  return float(np.max(np.abs(a - b)))


def _boundary(oracle, x0, adv, theta):
  """Binary search on the L-inf radius: the point nearest x0 on the segment of projections."""
  high, low = _linf(adv, x0), 0.0
  threshold = min(high * theta, theta)
  while high - low > threshold:
    mid = (high + low) / 2
    if oracle.adversarial(np.clip(adv, x0 - mid, x0 + mid)[None])[0]:
      high = mid
    else:
      low = mid
  return np.clip(adv, x0 - high, x0 + high)


def _start(oracle, x0, rng, tries=100):
  """A misclassified point: uniform noise, then blended towards x0 by binary search."""
  for _ in range(tries):
    noise = rng.uniform(0, 1, x0.shape).astype(np.float32)
    if oracle.adversarial(noise[None])[0]:
      break
  else:
    raise _Spent()
  low, high = 0.0, 1.0
  while high - low > 1e-3:
    mid = (high + low) / 2
    if oracle.adversarial(((1 - mid) * x0 + mid * noise)[None])[0]:
      high = mid
    else:
      low = mid
  return ((1 - high) * x0 + high * noise).astype(np.float32)


def _gradient_sign(oracle, point, delta, num_evals, rng):
  """Sign of the boundary normal at `point` from the labels of num_evals nearby points."""
  u = rng.uniform(-1, 1, (num_evals, *point.shape)).astype(np.float32)
  u /= np.sqrt(np.sum(u ** 2, axis=tuple(range(1, u.ndim)), keepdims=True))
  probes = np.clip(point + delta * u, 0, 1)
  u = (probes - point) / delta
  f = 2.0 * oracle.adversarial(probes) - 1.0
  if abs(f.mean()) == 1.0:
    grad = f.mean() * u.mean(axis=0)
  else:
    grad = np.mean((f - f.mean()).reshape(-1, *[1] * point.ndim) * u, axis=0)
  return np.sign(grad)


def _attack_one(oracle, x0, rng, init_evals, max_evals, gamma):
  d = x0.size
  theta = gamma / d ** 2
  if oracle.adversarial(x0[None])[0]:
    return
  point = _boundary(oracle, x0, _start(oracle, x0, rng), theta)
  dist = _linf(point, x0)
  for t in range(1, 1_000_000):
    delta = d * theta * dist
    num_evals = int(min(init_evals * np.sqrt(t), max_evals))
    step_dir = _gradient_sign(oracle, point, delta, num_evals, rng)
    step = dist / np.sqrt(t)
    while not oracle.adversarial(np.clip(point + step * step_dir, 0, 1)[None])[0]:
      step /= 2
    point = _boundary(oracle, x0, np.clip(point + step * step_dir, 0, 1).astype(np.float32), theta)
    dist = _linf(point, x0)


def hop_skip_jump_queries(model_fn, x, y, eps, n_queries=1000, init_evals=100, max_evals=10000, gamma=1.0,
                          seed=0):
  """HopSkipJump, L-inf, untargeted, from labels alone, with the queries each image took.

  Args:
    model_fn: callable mapping a float32 NHWC batch to logits or scores; only their argmax is used.
    x, y: images (float32 NHWC in [0, 1]) and true class indices (or one-hot rows).
    eps: L-inf radius within which an adversarial example counts as success.
    n_queries: model queries per image (every evaluated point is one).
    init_evals, max_evals: points of the first gradient estimate, growing with sqrt(iteration).
    gamma: sets the binary search's precision and the probing radius (theta = gamma / d^2).
    seed: seed of the random draws (image i uses seed + i).
  Returns:
    (x_adv, broken, queries): the adversarial example within eps where found (else x), whether one
    was found, and the queries each image took (up to and including the successful one). A run is
    the prefix of a longer one, so `queries <= B` tells what budget B breaks.
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if n_queries < 1 or init_evals < 1 or max_evals < init_evals:
    raise ValueError(f"hop_skip_jump: n_queries and init_evals must be >= 1 and max_evals >= init_evals, got "
                     f"{n_queries}, {init_evals}, {max_evals}")
  y = common.as_labels(y, len(x), "y")
  x_adv = x.copy()
  broken = np.zeros(len(x), bool)
  queries = np.zeros(len(x), np.int64)
  for i in range(len(x)):
    oracle = _Oracle(model_fn, x[i], int(y[i]), eps, n_queries)
    try:
      _attack_one(oracle, x[i], np.random.default_rng(seed + i), init_evals, max_evals, gamma)
    except _Spent:
      pass
    broken[i] = oracle.found_at is not None
    queries[i] = oracle.found_at if broken[i] else oracle.used
    if broken[i]:
      x_adv[i] = common.project_linf(oracle.best[None], x[i:i + 1], eps)[0]
  return x_adv, broken, queries


def hop_skip_jump(model_fn, x, y, eps, n_queries=1000, **options):
  """HopSkipJump's adversarial images alone (the registry's convention); see hop_skip_jump_queries."""
  return hop_skip_jump_queries(model_fn, x, y, eps, n_queries, **options)[0]
