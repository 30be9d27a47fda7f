"""lad_tf.attacks on a LeNet-5 trained on the real `digits` images (trained once for the module)."""
import importlib

import numpy as np
import pytest
import tensorflow as tf

from lad_tf import attacks, models
from lad_tf.data import datasets
from lad_tf.runtime import training
from lad_tf.runtime.execution import ExecutionConfig

# The package exports functions named like their modules; reach the modules themselves.
apgd_module = importlib.import_module("lad_tf.attacks.apgd")
jsma_module = importlib.import_module("lad_tf.attacks.jsma")

EPS = 0.15
NUM_FEATURES = 28 * 28


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data = datasets.load("digits")
  import keras
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  training.train_classifier(model, data.train, data.test,
                            training.TrainConfig(epochs=15, batch_size=64, execution=ExecutionConfig(verbose=0)),
                            str(tmp_path_factory.mktemp("lenet")))
  idx = datasets.stratified_indices(data.test.y, 6, seed=0)
  x, y = data.test.x[idx], data.test.y[idx]
  clean = float(np.mean(attacks.predict(model, x) == y))
  assert clean > 0.9, f"the digits LeNet should be accurate, got {clean}"
  target = (y + np.random.default_rng(0).integers(1, 10, len(y))) % 10
  return model, x, y, target, clean


def _accuracy(model, x, y):
  return float(np.mean(attacks.predict(model, x) == y))


def _assert_valid(x, x_adv, eps=None):
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  if eps is not None:
    assert np.max(np.abs(x_adv.astype(np.float64) - x)) <= eps + 1e-6


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mim", "apgd"])
def test_linf_attacks_lower_accuracy_and_stay_in_the_ball(setup, name):
  model, x, y, _, clean = setup
  run = {"fgsm": lambda: attacks.fgsm(model, x, y, EPS),
         "pgd": lambda: attacks.pgd(model, x, y, EPS, nb_iter=20, seed=0),
         "mim": lambda: attacks.get("mim")(model, x, y, EPS),
         "apgd": lambda: attacks.apgd(model, x, y, EPS, n_iter=20, seed=0)}[name]
  x_adv = run()
  _assert_valid(x, x_adv, EPS)
  robust = _accuracy(model, x_adv, y)
  assert robust < clean - 0.5, f"{name} at eps {EPS}: accuracy {robust} vs clean {clean}"


def test_apgd_is_at_least_as_strong_as_pgd_and_repeatable(setup):
  model, x, y, _, _ = setup
  pgd_acc = _accuracy(model, attacks.pgd(model, x, y, 0.1, nb_iter=20, seed=0), y)
  first = attacks.apgd(model, x, y, 0.1, n_iter=20, seed=3)
  assert _accuracy(model, first, y) <= pgd_acc + 0.05
  np.testing.assert_array_equal(first, attacks.apgd(model, x, y, 0.1, n_iter=20, seed=3))


def test_jsma_reaches_its_targets_within_the_budget(setup):
  model, x, y, target, _ = setup
  x_adv = attacks.jsma(model, x, target, theta=1.0, gamma=0.1)
  _assert_valid(x, x_adv)
  assert np.mean(attacks.predict(model, x_adv) == target) >= 0.7
  changed = attacks.perturbation_norms(x, x_adv)["l0"]
  assert changed.max() <= 2 * np.floor(0.1 * NUM_FEATURES / 2)
  # theta = 1: every changed value is set to white.
  assert np.all(x_adv[np.abs(x_adv - x) > 1e-6] == 1.0)


def test_jsma_pair_search_matches_brute_force():
  rng = np.random.default_rng(1)
  n, features = 6, 40
  for k in (3, 8, 40):
    u = rng.normal(size=(n, features)).astype(np.float32)
    v = (0.5 * u + rng.normal(size=(n, features))).astype(np.float32)
    domain = rng.random((n, features)) > 0.2
    p, q = jsma_module._best_pair(tf.constant(u), tf.constant(v), tf.constant(domain), k, True)
    p, q = p.numpy(), q.numpy()
    for i in range(n):
      big_u = u[i][:, None] + u[i][None]
      big_v = v[i][:, None] + v[i][None]
      ok = domain[i][:, None] & domain[i][None] & ~np.eye(features, dtype=bool) & (big_u > 0) & (big_v > 0)
      best = np.max(np.where(ok, big_u * big_v, -np.inf))
      assert p[i] != q[i] and domain[i, p[i]] and domain[i, q[i]]
      np.testing.assert_allclose(big_u[p[i], q[i]] * big_v[p[i], q[i]], best, rtol=1e-5)


def test_cw_l2_targeted_and_untargeted(setup):
  model, x, y, target, _ = setup
  x_t = attacks.carlini_wagner_l2(model, x, target, targeted=True, binary_search_steps=4,
                                  max_iterations=30, learning_rate=0.1)
  _assert_valid(x, x_t)
  reached = attacks.predict(model, x_t) == target
  assert np.mean(reached) >= 0.9
  np.testing.assert_array_equal(x_t[~reached], x[~reached])  # failures come back unchanged
  x_u = attacks.carlini_wagner_l2(model, x, y, targeted=False, binary_search_steps=4,
                                  max_iterations=30, learning_rate=0.1)
  _assert_valid(x, x_u)
  assert _accuracy(model, x_u, y) <= 0.1
  # A minimal-L2 attack: untargeted needs no more distortion than targeted, on average.
  l2_u = attacks.perturbation_norms(x, x_u)["l2"].mean()
  assert 0 < l2_u <= attacks.perturbation_norms(x[reached], x_t[reached])["l2"].mean() + 1e-6


def test_batching_does_not_change_results(setup):
  model, x, y, _, _ = setup
  np.testing.assert_allclose(attacks.fgsm(model, x, y, EPS, batch_size=7),
                             attacks.fgsm(model, x, y, EPS), atol=1e-6)


def test_clear_errors_on_bad_input(setup):
  model, x, y, target, _ = setup
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    attacks.fgsm(model, x * 255, y, EPS)
  with pytest.raises(ValueError, match="NHWC"):
    attacks.pgd(model, x[0], None, EPS)
  with pytest.raises(ValueError, match="one class index per image"):
    attacks.jsma(model, x, target[:3])
  with pytest.raises(ValueError, match="eps"):
    attacks.apgd(model, x, y, -0.1)
  with pytest.raises(ValueError, match="target"):
    attacks.carlini_wagner_l2(model, x, None, targeted=True)
  with pytest.raises(TypeError, match="callable"):
    attacks.fgsm("model", x, y, EPS)


def test_apgd_checkpoints_follow_the_paper():
  assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert apgd_module.checkpoints(1) == [1]


def test_mim_follows_the_momentum_of_l1_normalised_gradients():
  """Four MIM steps on a fixed two-layer tanh model against the update followed by hand in numpy
  (its gradients turn between steps, so the L1 normalisation and the momentum both change the
  result); one step is FGSM."""
  rng = np.random.default_rng(3)
  w1, w2 = (rng.normal(size=(12, 8)) * 1.5).astype(np.float32), (rng.normal(size=(8, 4)) * 2).astype(np.float32)
  model = lambda images: tf.matmul(tf.tanh(tf.matmul(tf.reshape(images, (-1, 12)), w1)), w2)
  x = rng.uniform(0.2, 0.8, size=(20, 2, 2, 3)).astype(np.float32)
  y = rng.integers(0, 4, 20)
  eps, steps = 0.3, 4

  def ce_gradient(images):  # d CE / d x of softmax(tanh(x W1) W2)
    h = np.tanh(images.reshape(len(images), -1) @ w1)
    logits = h @ w2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return ((((p - np.eye(4)[y]) @ w2.T) * (1 - h ** 2)) @ w1.T).reshape(images.shape)

  adv, momentum = x.astype(np.float64), np.zeros(x.shape)
  for _ in range(steps):
    g = ce_gradient(adv)
    momentum = momentum + g / np.abs(g).sum(axis=(1, 2, 3), keepdims=True)  # decay 1, Dong et al.'s
    adv = np.clip(adv + eps / steps * np.sign(momentum), 0, 1)
  np.testing.assert_allclose(attacks.mim(model, x, y, eps, nb_iter=steps), adv, atol=1e-5)
  np.testing.assert_allclose(attacks.mim(model, x, y, eps, nb_iter=1), attacks.fgsm(model, x, y, eps), atol=1e-6)


def test_the_registry_calls_every_attack_with_one_argument_order(setup):
  model, x, y, target, _ = setup
  np.testing.assert_array_equal(attacks.get("fgsm")(model, x, y, EPS), attacks.fgsm(model, x, y, EPS))
  assert [n for n in ("fgsm", "pgd", "apgd") if attacks.get(n).bounded and not attacks.get(n).targeted] == [
      "fgsm", "pgd", "apgd"]
  assert all(attacks.get(n).targeted and not attacks.get(n).bounded for n in ("jsma", "cw"))
  with pytest.raises(ValueError, match="pgd needs an eps"):
    attacks.get("pgd")(model, x, y)
  with pytest.raises(ValueError, match="jsma is not bounded by an eps"):
    attacks.get("jsma")(model, x, target, 0.1)
  with pytest.raises(ValueError, match="unknown attack 'nope'; known: apgd, autoattack, cw, fgsm"):
    attacks.get("nope")
