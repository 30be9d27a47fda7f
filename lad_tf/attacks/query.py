"""Query attacks on a model the attacker can only ask: what an outsider gets from an endpoint.

`QueryModel(query_fn, num_classes)` turns any function from a numpy image batch to what an
endpoint answers (probabilities, or class labels only) into a `model_fn`, so the library's own
attacks (`square_queries` on scores, `hop_skip_jump_queries` on labels) run unchanged against a
Keras model in-process or a served model through its API: one implementation behind both.
`budget_curve` turns the queries each image took into robust accuracy at each budget.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks.hopskipjump import hop_skip_jump_queries
from lad_tf.attacks.square import square_queries

OUTPUTS = ("probabilities", "labels")
_TINY = 1e-30  # log(0) guard: a probability that underflowed still ranks last.


class QueryRefused(RuntimeError):
  """The endpoint refused a query (e.g. its query detector flagged this client)."""


class QueryModel:
  """A model_fn over `query_fn` (numpy float32 NHWC -> numpy [N, K] probabilities or [N] labels).

  Its "logits" are log-probabilities (their differences are the logits' differences, so Square's
  margin is the same), or one-hot rows for a label-only endpoint. Works eagerly and inside
  tf.functions (through tf.numpy_function). `queries` counts the images sent; when query_fn
  raises QueryRefused, `refused_after` keeps the count of images answered before it.
  """

  def __init__(self, query_fn, num_classes, output="probabilities"):
    if output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    self.query_fn, self.num_classes, self.output = query_fn, int(num_classes), output
    self.queries = 0
    self.refused_after = None

  def _answer(self, images):
    try:
      answer = np.asarray(self.query_fn(np.asarray(images, np.float32)))
    except QueryRefused:
      if self.refused_after is None:
        self.refused_after = self.queries
      raise
    self.queries += len(images)
    if self.output == "labels":
      return np.eye(self.num_classes, dtype=np.float32)[answer.astype(np.int64).reshape(-1)]
    return np.log(np.maximum(answer.astype(np.float32), _TINY))

  def __call__(self, x):
    out = tf.numpy_function(self._answer, [tf.convert_to_tensor(x, tf.float32)], tf.float32, stateful=True)
    out.set_shape([None, self.num_classes])
    return out


ATTACKS = {"square": (square_queries, "probabilities"), "hopskipjump": (hop_skip_jump_queries, "labels")}


def run_query_attack(attack, model_fn, x, y, eps, n_queries, seed=0, **options):
  """(x_adv, broken, queries) of `attack` ('square' or 'hopskipjump') under a budget of n_queries
  model queries per image (Square's first query is its starting point's, hence n_queries - 1 steps)."""
  if attack not in ATTACKS:
    raise ValueError(f"unknown query attack {attack!r}; choose {' or '.join(ATTACKS)}")
  if n_queries < 2:
    raise ValueError(f"a query budget needs at least 2 queries per image, got {n_queries}")
  steps = n_queries - 1 if attack == "square" else n_queries
  return ATTACKS[attack][0](model_fn, x, y, eps, n_queries=steps, seed=seed, **options)


def budget_curve(correct, broken, queries, budgets):
  """Robust accuracy at each budget: correct images not broken within that many queries, plus
  the queries of each successful attack (on correctly classified images)."""
  correct, broken, queries = (np.asarray(a) for a in (correct, broken, queries))
  n = max(1, len(correct))
  curve = {int(b): float(np.sum(correct & ~(broken & (queries <= b))) / n) for b in budgets}
  used = np.sort(queries[correct & broken]).astype(int).tolist()
  return {"robust_accuracy": curve, "clean_accuracy": float(np.mean(correct)) if len(correct) else 0.0,
          "queries_per_success": used,
          "median_queries_per_success": float(np.median(used)) if used else None}
