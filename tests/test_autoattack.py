"""AutoAttack and its parts (APGD-CE/DLR/T, FAB-T, Square) on LeNet-5s trained on the real `digits`
images: a plainly trained one and an adversarially fine-tuned one; cross-checked against ART."""
import importlib

import numpy as np
import pytest
import tensorflow as tf

from lad_tf import attacks
from digits_models import accuracy as _accuracy, fgsm_rs_lenet, plain_lenet, sample_images

fab_module = importlib.import_module("lad_tf.attacks.fab")
square_module = importlib.import_module("lad_tf.attacks.square")

EPS = 0.1  # digits' attack eps


@pytest.fixture(scope="module")
def plain():
  model, data = plain_lenet()
  x, y = sample_images(data, 6)
  assert _accuracy(model, x, y) > 0.9
  return model, data, x, y


@pytest.fixture(scope="module")
def robust(plain):
  model, data, x, y = plain
  robust = fgsm_rs_lenet(EPS)
  clean = _accuracy(robust, x, y)
  assert clean > 0.8, f"FGSM-RS fine-tuning should keep clean accuracy, got {clean}"
  return robust


def _assert_valid(x, x_adv, eps):
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.max(np.abs(x_adv.astype(np.float64) - x)) <= eps + 1e-6


def test_autoattack_is_at_least_as_strong_as_pgd_and_apgd_ce(plain):
  model, _, x, y = plain
  x_aa, broken_by = attacks.autoattack(model, x, y, 0.3)
  _assert_valid(x, x_aa, 0.3)
  aa = _accuracy(model, x_aa, y)
  pgd = _accuracy(model, attacks.pgd(model, x=x, eps=0.3, y=y, nb_iter=40, seed=0), y)
  apgd_ce = _accuracy(model, attacks.apgd(model, x, y, 0.3), y)
  assert aa <= min(pgd, apgd_ce), (aa, pgd, apgd_ce)
  # broken_by says which images are still correct, and who broke the others.
  correct = attacks.predict(model, x_aa) == y
  np.testing.assert_array_equal(correct, broken_by == "")
  assert set(broken_by) <= {"", "clean", "apgd-ce", "apgd-t", "fab-t", "square"}


def test_autoattack_fast_on_the_robust_model(plain, robust):
  _, _, x, y = plain
  lines = []
  x_aa, broken_by = attacks.autoattack(robust, x, y, EPS, version="fast", n_iter=30, n_target_classes=3,
                                       log=lines.append)
  _assert_valid(x, x_aa, EPS)
  aa = _accuracy(robust, x_aa, y)
  assert aa <= _accuracy(robust, attacks.apgd(robust, x, y, EPS, n_iter=30), y)
  assert aa > 0.2, f"FGSM-RS training should leave some robustness at eps {EPS}, got {aa}"
  assert not np.any(np.isin(broken_by, ["fab-t", "square"]))
  # the progress log: each attack as it starts and what it broke, the same counts as broken_by
  ce_left = int(np.sum(broken_by != "clean"))
  assert lines[0] == f"autoattack: apgd-ce on the {ce_left} images still robust", lines
  assert lines[1].startswith(f"autoattack: apgd-ce broke {int(np.sum(broken_by == 'apgd-ce'))} in "), lines
  assert lines[3].startswith(f"autoattack: apgd-t broke {int(np.sum(broken_by == 'apgd-t'))} in "), lines
  assert lines[3].endswith(f"robust accuracy {np.mean(broken_by == ''):.4f}") and len(lines) == 4, lines


def test_apgd_targeted_reaches_its_targets(plain):
  model, _, x, y = plain
  target = (y + np.random.default_rng(0).integers(1, 10, len(y))) % 10
  x_t = attacks.apgd(model, x, y, 0.2, loss="dlr", y_target=target, n_iter=50)
  _assert_valid(x, x_t, 0.2)
  assert np.mean(attacks.predict(model, x_t) == target) >= 0.8
  # APGD-T (AutoAttack's: top-ranked other classes in turn): the broken images land on their target.
  x_at, used = attacks.apgd_targeted(model, x, y, EPS, n_iter=50, return_targets=True)
  _assert_valid(x, x_at, EPS)
  broken = used >= 0
  assert broken.mean() >= 0.5
  assert np.mean(attacks.predict(model, x_at[broken]) == used[broken]) >= 0.9
  np.testing.assert_array_equal(x_at[~broken], x[~broken])


def test_highest_loss_iterate_beats_the_first_misclassified_one(plain):
  model, _, x, y = plain
  loss = lambda xa: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(xa)).numpy()
  first = attacks.apgd(model, x, y, EPS, n_iter=30)
  best = attacks.apgd(model, x, y, EPS, n_iter=30, return_highest_loss=True)
  _assert_valid(x, best, EPS)
  # Same seed, same trajectory: the highest-loss iterate is at least as lossy as the first
  # misclassified one on every image, and clearly more on average.
  assert np.all(loss(best) >= loss(first) - 1e-3)
  assert loss(best).mean() > loss(first).mean() + 0.3
  assert _accuracy(model, best, y) <= _accuracy(model, first, y)


def test_fab_finds_small_crossings(plain):
  model, _, x, y = plain
  x_f = attacks.fab(model, x, y, EPS, n_target_classes=3, n_iter=50)
  _assert_valid(x, x_f, EPS)
  broken = attacks.predict(model, x_f) != y
  assert broken.mean() >= 0.6
  unchanged = np.all(x_f == x, axis=(1, 2, 3))
  assert np.all(broken | unchanged)  # what FAB does not break within eps comes back unchanged


def test_hyperplane_projection_is_the_smallest_linf_move():
  from scipy.optimize import linprog
  rng = np.random.default_rng(0)
  n, d = 8, 12
  p = rng.uniform(0, 1, (n, d)).astype(np.float32)
  w = rng.normal(size=(n, d)).astype(np.float32)
  b = (np.sum(w * p, axis=1) + rng.normal(scale=0.5, size=n)).astype(np.float32)
  moves = fab_module.project_linf_hyperplane(tf.constant(p), tf.constant(w), tf.constant(b)).numpy()
  for i in range(n):
    # min t s.t. -t <= d_j <= t, 0 <= p + d <= 1, w . d = b - w . p   (variables d_1..d_d, t)
    ones = np.ones((d, 1))
    a_ub = np.block([[np.eye(d), -ones], [-np.eye(d), -ones]])
    res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                  A_eq=np.r_[w[i], 0.0][None], b_eq=[b[i] - w[i] @ p[i]],
                  bounds=[(-p[i, j], 1 - p[i, j]) for j in range(d)] + [(0, None)])
    if res.status == 0:
      np.testing.assert_allclose(np.abs(moves[i]).max(), res.x[-1], rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(w[i] @ (p[i] + moves[i]), b[i], rtol=1e-4, atol=1e-4)
    assert np.all(p[i] + moves[i] >= -1e-6) and np.all(p[i] + moves[i] <= 1 + 1e-6)


def test_square_breaks_a_model_with_zeroed_gradients(plain):
  model, _, x, y = plain
  masked = lambda z: model(tf.stop_gradient(z) + 0.0 * z)  # same outputs, input gradient exactly 0
  x, y = x[::2], y[::2]
  apgd_acc = _accuracy(masked, attacks.apgd(masked, x, y, 0.2, n_iter=20), y)
  x_sq = attacks.square(masked, x, y, 0.2, n_queries=1000)
  _assert_valid(x, x_sq, 0.2)
  square_acc = _accuracy(masked, x_sq, y)
  assert square_acc <= 0.2 and square_acc < apgd_acc - 0.4, (square_acc, apgd_acc)


def test_square_schedule_follows_the_paper():
  assert square_module.p_at(0.8, 10, 5000) == 0.8 and square_module.p_at(0.8, 11, 5000) == 0.4
  assert square_module.p_at(0.8, 4999, 5000) == 0.8 / 2 ** 7  # past 4000 of the 10,000-step schedule
  assert square_module.p_at(0.8, 4999, 5000, rescale_schedule=True) == 0.8 / 2 ** 9
  sides = square_module.square_sides((28, 28, 1), 5000, 0.8)
  assert sides[0] == 25 and sides[-1] == 2 and np.all(np.diff(sides) <= 0)


def test_clear_errors(plain):
  model, _, x, y = plain
  with pytest.raises(ValueError, match="version"):
    attacks.autoattack(model, x, y, EPS, version="plus")
  with pytest.raises(ValueError, match="loss"):
    attacks.apgd(model, x, y, EPS, loss="hinge")
  two_class = lambda z: model(z)[:, :2]
  with pytest.raises(ValueError, match="4 classes"):
    attacks.apgd(two_class, x, y % 2, EPS, loss="dlr")


def test_attack_benchmark_without_art_says_how_to_install(monkeypatch):
  import sys
  from pipelines.benchmarks import attacks as benchmark
  monkeypatch.setitem(sys.modules, "art", None)  # makes `import art` raise ImportError
  with pytest.raises(SystemExit, match=r"pip install -e '\.\[bench\]'"):
    benchmark.run(dataset="digits", n=10)
