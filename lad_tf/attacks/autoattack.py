"""AutoAttack (Croce & Hein 2020), L-inf, as RobustBench runs it: APGD-CE, APGD-T, FAB-T, Square.

The field's standard robustness figure: four complementary attacks (two gradient attacks with
different losses, a minimal-perturbation attack and a gradient-free search), each run only on the
images all earlier ones left classified correctly, so the result is the worst case per image.
"standard" uses Croce & Hein's settings (APGD-CE 100 iterations; APGD-T and FAB-T 100 iterations
against each of the 9 top-ranked other classes; Square 5,000 queries, p_init 0.8; one restart each);
"fast" runs APGD-CE and APGD-T only.
"""
import time

import numpy as np

from lad_tf.attacks import common
from lad_tf.attacks.apgd import apgd, apgd_targeted
from lad_tf.attacks.fab import fab
from lad_tf.attacks.square import square
from lad_tf.choices import AUTOATTACK_VERSIONS

VERSIONS = AUTOATTACK_VERSIONS  # {version: the attacks it runs, in order}
CLEAN = "clean"  # broken_by value of images the model already misclassifies
ROBUST = ""      # broken_by value of images no attack broke


def autoattack(model_fn, x, y, eps, version="standard", n_iter=100, n_target_classes=9, n_queries=5000,
               seed=0, batch_size=512, log=None, record=None):
  """Runs AutoAttack's attacks in turn, each on the images still classified correctly.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y: true class indices (or one-hot rows).
    eps: L-inf radius of the ball (e.g. 0.3 for MNIST, 8/255 for CIFAR-10).
    version: "standard" (APGD-CE, APGD-T, FAB-T, Square) or "fast" (APGD-CE, APGD-T).
    n_iter: iterations of APGD-CE, APGD-T (per target) and FAB-T (per target); 100 in AutoAttack.
    n_target_classes: targets of APGD-T and FAB-T (9 for ten classes; capped at classes - 1).
    n_queries: Square's query budget (5,000).
    seed: seed of every attack's random draws.
    batch_size: images per batch.
    log: None, or a callable given one progress line as each attack starts and ends (how many images
      it attacks, how many it broke, the robust accuracy so far and its time; e.g. print or
      absl.logging.info): the standard version can run for tens of minutes on a robust model.
    record: None, or a list to which each attack run appends {"attack", "attacked", "broken", "seconds"}
      (what the evaluation's cost is made of).
  Returns:
    (x_adv, broken_by): x_adv, float32 numpy images with |x_adv - x| <= eps in [0, 1] (the
    adversarial image where an attack succeeded, else x); broken_by, a numpy array of strings per
    image: the attack that broke it ("apgd-ce", "apgd-t", "fab-t", "square"), "clean" where the
    model misclassifies x itself, "" where the image is robust.
  """
  if version not in VERSIONS:
    raise ValueError(f"autoattack: version must be one of {', '.join(VERSIONS)}, got {version!r}")
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  num_classes = common.num_classes_of(model_fn, x) if len(x) else None
  y = common.as_labels(y, len(x), "y", num_classes)
  x_adv = x.copy()
  broken_by = np.full(len(x), ROBUST, dtype=object)
  if len(x) == 0:
    return x_adv, broken_by.astype(str)
  if num_classes < 4:
    raise ValueError(f"autoattack: needs at least 4 classes (APGD-T's DLR loss), the model has "
                     f"{num_classes}; use apgd(..., loss='ce') and square() directly")
  broken_by[common.predict(model_fn, x, batch_size) != y] = CLEAN
  attacks = {
      "apgd-ce": lambda xs, ys: apgd(model_fn, xs, ys, eps, loss="ce", n_iter=n_iter, seed=seed,
                                     batch_size=batch_size),
      "apgd-t": lambda xs, ys: apgd_targeted(model_fn, xs, ys, eps, n_target_classes=n_target_classes,
                                             n_iter=n_iter, seed=seed, batch_size=batch_size),
      "fab-t": lambda xs, ys: fab(model_fn, xs, ys, eps, n_target_classes=n_target_classes, n_iter=n_iter,
                                  seed=seed, batch_size=batch_size),
      "square": lambda xs, ys: square(model_fn, xs, ys, eps, n_queries=n_queries, seed=seed,
                                      batch_size=batch_size),
  }
  for name in VERSIONS[version]:
    todo = np.flatnonzero(broken_by == ROBUST)
    if len(todo) == 0 or eps == 0:
      break
    if log:
      log(f"autoattack: {name} on the {len(todo)} images still robust")
    start = time.perf_counter()
    adv = attacks[name](x[todo], y[todo])
    broken = common.predict(model_fn, adv, batch_size) != y[todo]
    x_adv[todo[broken]] = adv[broken]
    broken_by[todo[broken]] = name
    seconds = time.perf_counter() - start
    if record is not None:
      record.append({"attack": name, "attacked": len(todo), "broken": int(broken.sum()), "seconds": seconds})
    if log:
      log(f"autoattack: {name} broke {int(broken.sum())} in {seconds:.0f} s; "
          f"robust accuracy {np.mean(broken_by == ROBUST):.4f}")
  return common.project_linf(x_adv, x, eps), broken_by.astype(str)


def figures(broken_by):
  """Clean and robust accuracy and how many images each attack broke, from autoattack's broken_by."""
  return {"clean_accuracy": float(np.mean(broken_by != CLEAN)), "robust_accuracy": float(np.mean(broken_by == ROBUST)),
          "broken_by": {str(k): int(v) for k, v in zip(*np.unique(broken_by, return_counts=True))}}
