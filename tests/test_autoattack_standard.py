"""AutoAttack's "standard" version at its default budgets on a LeNet-5 made robust by the project's
own defence (lad_tf.robust, atta), checked against an independent strong attack (cleverhans' PGD),
and the losses APGD maximises checked against the published formulas.

test_autoattack.py runs reduced budgets on the plain and FGSM-RS models; what it cannot see is
whether the four attacks really run their full budgets on the images still robust, and whether the
result holds up against an attack that is not ours. 30 images: AutoAttack spends nearly all its time
on the images nothing breaks (APGD-T and FAB-T: 9 targets x 100 steps, Square: 5,000 queries each).
"""
import importlib

import numpy as np
import pytest
import tensorflow as tf

import digits_models
import independent
from lad_tf import attacks
from lad_tf.attacks.apgd import LOSSES, attack_loss

autoattack_module = importlib.import_module("lad_tf.attacks.autoattack")

EPS = 0.1
PER_CLASS = 3
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
# Model passes per image an attack makes on an image it does not break, at AutoAttack's defaults:
# APGD-CE 1 + 100 steps; APGD-T that for each of 9 targets; FAB-T 2 per step, 100 steps x 9
# targets; Square 1 + 5,000 queries.
PASSES_PER_ROBUST_IMAGE = {"apgd-ce": 101, "apgd-t": 9 * 101, "fab-t": 9 * 100 * 2, "square": 5001}

# Logit rows, true classes and targets for the loss values; sorted descending the rows are
# (3, 2, 1, .5, -2), (4, 2.5, 1, 0, -1), (2, 1.5, .25, -1, -3), (2.5, 1.5, .75, 0, -.5).
LOGITS = np.array([[3.0, 1.0, -2.0, 0.5, 2.0],     # y on top
                   [0.0, 4.0, 1.0, -1.0, 2.5],     # y third
                   [-1.0, 0.25, 2.0, 1.5, -3.0],   # y second, target last but one
                   [0.75, -0.5, 1.5, 2.5, 0.0]], np.float32)  # y on top, target second
Y = np.array([0, 2, 3, 3], np.int32)
TARGET = np.array([4, 1, 0, 2], np.int32)
# DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), by hand
DLR = [-(3 - 2) / (3 - 1), -(1 - 4) / (4 - 1), -(1.5 - 2) / (2 - 0.25), -(2.5 - 1.5) / (2.5 - 0.75)]
# targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), by hand
DLR_TARGETED = [-(3 - 2) / (3 - (1 + 0.5) / 2), -(1 - 4) / (4 - (1 + 0) / 2),
                -(1.5 - -1) / (2 - (0.25 - 1) / 2), -(2.5 - 1.5) / (2.5 - (0.75 + 0) / 2)]


class CountingModel:
  """The model, counting the images it is run on. The count is a variable, so it goes on inside the
  attacks' tf.functions and loops: a test sees how many queries each attack really made."""

  def __init__(self, model):
    self.model = model
    self.images = tf.Variable(0, dtype=tf.int64, trainable=False)

  def __call__(self, x):
    self.images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
    return self.model(x)


def _margin(model, x, y):
  """z_y - max_{i != y} z_i (negative: misclassified), the margin Square lowers."""
  z = np.asarray(model(tf.constant(x)), np.float64)
  z_y = z[np.arange(len(y)), y]
  z[np.arange(len(y)), y] = -np.inf
  return z_y - z.max(axis=1)


@pytest.fixture(scope="module")
def robust():
  """(counting model, images, labels, plain LeNet) with the atta LeNet trained once per test run."""
  model, data = digits_models.plain_lenet()
  x, y = digits_models.sample_images(data, PER_CLASS)
  return CountingModel(digits_models.atta_lenet(EPS)), x, y, model


@pytest.fixture(scope="module")
def pgd_correct(robust):
  """cleverhans' PGD on the robust model's images at eps and eps / 2 (which images survive it)."""
  model, x, y, _ = robust
  return {eps: independent.pgd_correct(model.model, x, y, eps) for eps in (EPS, EPS / 2)}


def _assert_valid(x, x_adv, eps):
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.max(np.abs(x_adv.astype(np.float64) - x)) <= eps + 1e-6


def _loss(name, logits=LOGITS):
  return attack_loss(tf.constant(logits), tf.constant(Y), tf.constant(TARGET), LOSSES[name]).numpy()


def test_losses_match_the_published_formulas():
  np.testing.assert_allclose(_loss("dlr"), DLR, rtol=1e-5)
  np.testing.assert_allclose(_loss("dlr-targeted"), DLR_TARGETED, rtol=1e-5)
  z = LOGITS.astype(np.float64)
  log_sum_exp = np.log(np.sum(np.exp(z), axis=1))
  rows = np.arange(len(z))
  np.testing.assert_allclose(_loss("ce"), log_sum_exp - z[rows, Y], rtol=1e-5)
  np.testing.assert_allclose(_loss("ce-targeted"), -(log_sum_exp - z[rows, TARGET]), rtol=1e-5)
  # why APGD-T uses DLR: a model cannot hide behind rescaled logits (CE changes, DLR does not)
  for name in ("dlr", "dlr-targeted"):
    np.testing.assert_allclose(_loss(name, 7.0 * LOGITS + 3.0), _loss(name), rtol=1e-4)


def test_atta_lenet_is_robust_but_not_trivially(robust, pgd_correct):
  model, x, y, plain = robust
  clean = digits_models.accuracy(model.model, x, y)
  pgd = pgd_correct[EPS].mean()
  plain_pgd = independent.pgd_correct(plain, x, y, EPS, restarts=1).mean()
  assert clean >= 0.9, clean
  assert 0.4 <= pgd <= clean - 0.15, (pgd, clean)
  assert plain_pgd <= pgd - 0.3, (plain_pgd, pgd)  # the robustness is the defence's doing


def _spy_on_attacks(monkeypatch):
  """Records each attack autoattack calls (which function, on which images, what it returned)."""
  calls = []
  for name in ("apgd", "apgd_targeted", "fab", "square"):
    def spy(model_fn, xs, ys, eps, _real=getattr(autoattack_module, name), _name=name, **options):
      out = _real(model_fn, xs, ys, eps, **options)
      calls.append({"fn": _name, "x": xs, "y": ys, "out": out})
      return out
    monkeypatch.setattr(autoattack_module, name, spy)
  return calls


def _check_each_attack(calls, lines, counts, x, broken_by):
  """Each attack ran once, in order, on exactly the images the earlier ones left, for its full
  default budget on every image it did not break (counted model passes)."""
  assert [c["fn"] for c in calls] == ["apgd", "apgd_targeted", "fab", "square"]
  assert len(lines) == 2 * len(STANDARD), lines
  for k, name in enumerate(STANDARD):
    todo = np.flatnonzero(~np.isin(broken_by, ["clean", *STANDARD[:k]]))
    broken = int(np.sum(broken_by == name))
    np.testing.assert_array_equal(calls[k]["x"], x[todo], err_msg=name)
    assert lines[2 * k] == f"autoattack: {name} on the {len(todo)} images still robust", lines
    assert lines[2 * k + 1].startswith(f"autoattack: {name} broke {broken} in "), lines
    passes = counts[2 * k + 1] - counts[2 * k]
    per_image = PASSES_PER_ROBUST_IMAGE[name]
    assert per_image * (len(todo) - broken) <= passes <= (per_image + 2) * len(todo) + 1, (name, passes)


@pytest.mark.end_to_end("AutoAttack standard at its full default budgets: APGD-T and FAB-T over 9 targets, Square 5,000 queries")
def test_standard_autoattack_at_default_budgets(robust, pgd_correct, monkeypatch):
  model, x, y, _ = robust
  calls = _spy_on_attacks(monkeypatch)
  lines, counts = [], []

  def log(line):
    lines.append(line)
    counts.append(int(model.images.numpy()))

  x_aa, broken_by = attacks.autoattack(model, x, y, EPS, log=log)  # "standard", default budgets
  _assert_valid(x, x_aa, EPS)
  _check_each_attack(calls, lines, counts, x, broken_by)
  # broken_by re-checked on the returned images themselves
  correct = attacks.predict(model.model, x_aa) == y
  np.testing.assert_array_equal(correct, broken_by == "")
  np.testing.assert_array_equal(x_aa[correct], x[correct])
  # Square searched: its points lower the margin of every image it attacked, by a clear amount
  square = calls[3]
  before = _margin(model.model, square["x"], square["y"])
  after = _margin(model.model, square["out"], square["y"])
  assert np.all(after < before) and np.mean(before - after) >= 0.25 * np.mean(before), (before, after)
  # at least as strong as an independent strong attack, and the model keeps real robustness; APGD-CE
  # alone does about what PGD does (else a broken gradient attack hides behind FAB-T and Square)
  pgd_broken = ~pgd_correct[EPS] & (broken_by != "clean")
  assert np.sum(broken_by == "apgd-ce") >= 0.8 * pgd_broken.sum(), (broken_by, np.flatnonzero(pgd_broken))
  aa, pgd = correct.mean(), pgd_correct[EPS].mean()
  clean = digits_models.accuracy(model.model, x, y)
  assert aa <= pgd, (aa, pgd)
  assert 0.4 <= aa <= clean - 0.15, (aa, clean)


def test_fab_t_alone_on_the_robust_model(robust, pgd_correct):
  model, x, y, _ = robust
  # 3 targets (AutoAttack's run above used 9) keep the file's time; 100 steps as in AutoAttack
  x_f = attacks.fab(model, x, y, EPS, n_target_classes=3)
  _assert_valid(x, x_f, EPS)
  broken = attacks.predict(model.model, x_f) != y
  was_correct = attacks.predict(model.model, x) == y
  np.testing.assert_array_equal(x_f[~broken], x[~broken])  # what it does not break comes back unchanged
  linf = attacks.perturbation_norms(x, x_f)["linf"]
  assert np.all(linf[broken & was_correct] > 0)
  # FAB looks for the smallest crossing: at eps and at eps / 2 (FAB's own distances tell which of
  # its points lie within eps / 2) it breaks most of what PGD breaks at that radius
  for radius in (EPS, EPS / 2):
    fab_broken = broken & was_correct & (linf <= radius + 1e-6)
    pgd_broken = ~pgd_correct[radius] & was_correct
    assert fab_broken.sum() >= 2 / 3 * pgd_broken.sum() and pgd_broken.sum() >= 2, (
        radius, np.flatnonzero(fab_broken), np.flatnonzero(pgd_broken))
