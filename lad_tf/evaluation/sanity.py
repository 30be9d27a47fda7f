"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness"): symptoms that a robustness figure comes from gradients that mislead the attack rather
than from a robust model.

A model whose gradients are hidden (zeroed, shattered, saturated) looks robust to gradient attacks
while it is not. Each check here is a property every honestly robust model has:
- accuracy falls towards 0 as eps grows (0.5x, 1x, 2x, 4x the dataset's eps);
- PGD (iterative) is at least as strong as FGSM (one step);
- an unbounded attack (eps = 1: any image is reachable) succeeds on every image;
- the input gradient of the loss is not exactly zero;
- more PGD steps (100 vs 20) or restarts (5 vs 1) do not lower accuracy much further (if they do,
  the 20-step figure was not converged).
`gradient_masking_checks` runs them all and returns pass/fail with the figures behind each.
"""
import warnings

import numpy as np
import tensorflow as tf

from lad_tf.attacks import common
from lad_tf.attacks.fgsm import fgsm
from lad_tf.attacks.pgd import pgd

EPS_FACTORS = (0.5, 1.0, 2.0, 4.0)
PGD_STEPS = 20  # steps of the reference PGD


def sweep_eps(eps):
  """The eps points of the accuracy-against-eps sweep: EPS_FACTORS x the dataset's eps, at most 1."""
  return [min(f * eps, 1.0) for f in EPS_FACTORS]


def _accuracy(model_fn, x, y, batch_size):
  return float(np.mean(common.predict(model_fn, x, batch_size) == y)) if len(x) else float("nan")


def zero_gradient_fraction(model_fn, x, y, batch_size=512):
  """Fraction of images whose input gradient of the cross-entropy is exactly zero everywhere
  (a gradient that does not reach the input counts as zero)."""
  zero = []
  for start in range(0, len(x), batch_size):
    xb = tf.constant(x[start:start + batch_size])
    with tf.GradientTape() as tape:
      tape.watch(xb)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=tf.constant(y[start:start + batch_size]), logits=model_fn(xb)))
    grad = tape.gradient(loss, xb, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    zero.append(np.all(np.reshape(np.asarray(grad), (len(xb), -1)) == 0, axis=1))
  return float(np.mean(np.concatenate(zero))) if zero else 0.0


def accuracy_against_eps(model_fn, x, y, eps, pgd_steps=PGD_STEPS, seed=0, batch_size=512):
  """PGD accuracy at each eps of sweep_eps(eps) (0.5x, 1x, 2x, 4x the dataset's eps): the curve a
  robust model draws falling towards 0, and the eps-sweep check's figures.

  Args:
    model_fn, x, y: as in gradient_masking_checks (images float32 NHWC in [0, 1], labels).
    eps: the dataset's L-inf eps.
    pgd_steps: PGD steps (20), seed: PGD's random start, batch_size: images per batch.
  Returns:
    dict f"{eps:.4g}" -> accuracy, in increasing eps.
  """
  x = common.as_images(x)
  y = common.as_labels(y, len(x), "y", common.num_classes_of(model_fn, x))
  return {f"{e:.4g}": _accuracy(model_fn, pgd(model_fn, x=x, eps=e, y=y, nb_iter=pgd_steps, seed=seed,
                                               batch_size=batch_size), y, batch_size) for e in sweep_eps(eps)}


def gradient_masking_checks(model_fn, x, y, eps, pgd_steps=PGD_STEPS, more_steps=100, restarts=5,
                            sweep_floor=0.1, tolerance=0.03, max_zero_gradient=0.01, seed=0,
                            batch_size=512, warn=True):
  """Runs the gradient-masking checks on one model; a failed check warns by name.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (a few hundred test images are enough).
    y: true class indices (or one-hot rows).
    eps: the dataset's L-inf eps (e.g. 0.1 for Fashion-MNIST, 0.3 for MNIST).
    pgd_steps: steps of the reference PGD (20).
    more_steps: steps of the longer PGD run compared with it (100).
    restarts: random restarts of the reference PGD compared with one (5).
    sweep_floor: accuracy the attack must reach at the largest eps of the sweep (4x eps, at most 1).
    tolerance: slack, in accuracy, for the comparisons (PGD vs FGSM, accuracy rising with eps,
      more steps / restarts below the reference).
    max_zero_gradient: largest fraction of images with an all-zero input gradient that passes.
    seed: seed of the PGD random starts (restart r uses seed + r).
    batch_size: images per batch.
    warn: issue a UserWarning naming each failed check.
  Returns:
    dict: check name -> {"passed": bool, "detail": str, figures...} for "eps_sweep",
    "pgd_vs_fgsm", "unbounded", "zero_gradient", "more_steps", "more_restarts"; plus "passed"
    (all checks passed), "clean_accuracy", "eps" and "n".
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  eps = common.check_eps(eps)
  if eps == 0 or len(x) == 0:
    raise ValueError("gradient_masking_checks needs images and eps > 0 (the dataset's L-inf eps)")
  y = common.as_labels(y, len(x), "y", common.num_classes_of(model_fn, x))
  acc = lambda x_adv: _accuracy(model_fn, x_adv, y, batch_size)
  attack = lambda e, steps, s=seed: acc(pgd(model_fn, x=x, eps=e, y=y, nb_iter=steps, seed=s,
                                            batch_size=batch_size))
  checks = {}

  sweep = accuracy_against_eps(model_fn, x, y, eps, pgd_steps, seed, batch_size)
  values = list(sweep.values())
  falling = all(b <= a + tolerance for a, b in zip(values, values[1:]))
  checks["eps_sweep"] = dict(
      passed=falling and values[-1] <= sweep_floor, accuracy=sweep,
      detail=f"PGD-{pgd_steps} accuracy at eps x{EPS_FACTORS}: {values}; must not rise and must end "
             f"at most {sweep_floor}")

  reference = sweep[f"{eps:.4g}"]
  fgsm_acc = acc(fgsm(model_fn, x=x, eps=eps, y=y, batch_size=batch_size))
  checks["pgd_vs_fgsm"] = dict(
      passed=reference <= fgsm_acc + tolerance, pgd=reference, fgsm=fgsm_acc,
      detail=f"PGD-{pgd_steps} {reference:.4f} vs FGSM {fgsm_acc:.4f}: the iterative attack must not "
             "be weaker")

  unbounded = attack(1.0, more_steps)
  checks["unbounded"] = dict(
      passed=unbounded == 0.0, accuracy=unbounded,
      detail=f"PGD-{more_steps} at eps 1 leaves accuracy {unbounded:.4f}; it must break every image")

  zero = zero_gradient_fraction(model_fn, x, y, batch_size)
  checks["zero_gradient"] = dict(
      passed=zero <= max_zero_gradient, fraction=zero,
      detail=f"{zero:.4f} of the images have an all-zero input gradient (at most {max_zero_gradient})")

  longer = attack(eps, more_steps)
  checks["more_steps"] = dict(
      passed=longer >= reference - tolerance, accuracy=longer, reference=reference,
      detail=f"PGD-{more_steps} {longer:.4f} vs PGD-{pgd_steps} {reference:.4f}: must not be far below")

  restarted = _worst_of_restarts(model_fn, x, y, eps, pgd_steps, seed, restarts, batch_size)
  checks["more_restarts"] = dict(
      passed=restarted >= reference - tolerance, accuracy=restarted, reference=reference,
      detail=f"PGD-{pgd_steps} worst of {restarts} restarts {restarted:.4f} vs one {reference:.4f}: must "
             "not be far below")

  for name, check in checks.items():
    check["passed"] = bool(check["passed"])
    if warn and not check["passed"]:
      warnings.warn(f"gradient-masking check '{name}' failed: {check['detail']}", stacklevel=2)
  return {**checks, "passed": all(c["passed"] for c in checks.values()),
          "clean_accuracy": acc(x), "eps": eps, "n": len(x)}


def _worst_of_restarts(model_fn, x, y, eps, steps, seed, restarts, batch_size):
  """Accuracy when an image counts as broken if any of `restarts` seeded PGD runs breaks it."""
  robust = np.ones(len(x), bool)
  for r in range(restarts):
    x_adv = pgd(model_fn, x=x, eps=eps, y=y, nb_iter=steps, seed=seed + r, batch_size=batch_size)
    robust &= common.predict(model_fn, x_adv, batch_size) == y
  return float(np.mean(robust))
