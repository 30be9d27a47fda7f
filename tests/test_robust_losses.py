"""Each robust-training loss against its definition, followed step by step in numpy.

tests/test_robust.py checks that training helps; a loss with the wrong step, a missing projection or a
reversed KL can still help, so here every loss meets its paper's formula on a fixed linear model
(2x2 images, 3 classes) and a fixed batch. For a linear model the input gradient of CE is
K (softmax(z) - onehot(y)), so the reference below needs no library code. The random starts come from
fixed patterns (adversaries.uniform_noise and TRADES' tf.random.normal are replaced), the same in the
reference. The weights and images were picked so that each fault a test names changes its result,
with pixels at 0 and 1 (the [0, 1] clip) and every gradient component far from zero (`signed`: no
sign is a float32 coin toss).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lad_tf import robust
from lad_tf.runtime import execution
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.robust import adversaries, methods

EPS = 0.3
KERNEL = np.array([[-1.5, 1.9, 0.7], [0.8, -1.9, -0.1], [0.7, -0.1, -1.7], [1.9, -0.6, 0.5]])
BIAS = np.array([-0.3, -0.9, 0.6])
IMAGES = np.array([[0.6, 0.9, 0.0, 0.1], [0.8, 1.0, 0.6, 0.9], [0.9, 0.9, 0.9, 1.0], [0.5, 0.4, 0.4, 0.8],
                   [0.7, 0.8, 1.0, 0.0], [0.8, 0.5, 0.3, 0.1], [1.0, 1.0, 0.1, 0.3], [0.0, 0.1, 0.9, 0.3],
                   [0.1, 0.2, 0.5, 0.1], [0.3, 0.9, 0.0, 0.1]]).reshape(10, 2, 2, 1)
LABELS = np.array([0, 1, 2, 1, 2, 2, 0, 2, 0, 2])
X, Y = IMAGES[:4], LABELS[:4]           # the batch of the single-batch tests
UNIFORM = np.array([0.9, -0.5, -0.1, 0.6]).reshape(1, 2, 2, 1)  # uniform_noise(x, r) is r * UNIFORM
NORMAL = np.array([1.5, -1.0, 0.5, -2.0]).reshape(1, 2, 2, 1)   # TRADES' N(0, 1) draw


# -- the reference, in float64 numpy ---------------------------------------------------------------
def logits(x):
  return x.reshape(len(x), -1) @ KERNEL + BIAS


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce(x, y):
  return -np.log(softmax(logits(x))[np.arange(len(y)), y])


def kl(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), -1)


def ce_gradient(x, y):
  """d CE / dx of the linear model: K (softmax(z) - onehot(y))."""
  return ((softmax(logits(x)) - np.eye(3)[y]) @ KERNEL.T).reshape(x.shape)


def kl_gradient(x, p_clean):
  """d KL(p_clean || softmax(z(x))) / dx: K (softmax(z) - p_clean)."""
  return ((softmax(logits(x)) - p_clean) @ KERNEL.T).reshape(x.shape)


def project(x_adv, x):
  return np.clip(np.clip(x_adv, x - EPS, x + EPS), 0.0, 1.0)


def signed(gradient):
  """sign(gradient), for a gradient whose components are all far enough from 0 that float32 agrees."""
  assert np.abs(gradient).min() > 1e-3, "a gradient component near 0: choose other weights or images"
  return np.sign(gradient)


def atta_step(x, y, start):
  """ATTA's one projected step of eps from `start`."""
  return project(start + EPS * signed(ce_gradient(start, y)), x)


def atta_visits(x, y, visits):
  """The perturbation after `visits` batches: the first starts from noise of radius eps."""
  x_adv = project(x + EPS * UNIFORM, x)
  for _ in range(visits):
    x_adv = atta_step(x, y, x_adv)
  return x_adv - x


# -- the library's side ------------------------------------------------------------------------------
@pytest.fixture
def model():
  linear = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
  linear.set_weights([KERNEL.astype(np.float32), BIAS.astype(np.float32)])
  return linear


@pytest.fixture
def radii(monkeypatch):
  """Replaces the losses' uniform noise by radius * UNIFORM; lists the radii asked for."""
  asked = []

  def fixed(x, radius, seed=None):
    asked.append(float(radius))
    return radius * tf.broadcast_to(tf.constant(UNIFORM, x.dtype), tf.shape(x))
  monkeypatch.setattr(adversaries, "uniform_noise", fixed)
  return asked


def loss_of(method, **config):
  return methods.make_loss(robust.RobustConfig(method=method, eps=EPS, **config))


def run(loss, model, x, y, training=True):
  return loss(model, x, tf.constant(y), training).numpy()


def images(x):
  return tf.constant(x, tf.float32)


def test_fgsm_rs_steps_1_25_eps_from_a_uniform_start_and_projects(model, radii):
  start = project(X + EPS * UNIFORM, X)
  x_adv = project(start + 1.25 * EPS * signed(ce_gradient(start, Y)), X)
  got = run(loss_of("fgsm_rs"), model, images(X), Y)
  np.testing.assert_allclose(got, ce(x_adv, Y), rtol=1e-5)
  assert radii == [EPS]


def test_pgd_at_takes_k_steps_of_2_5_eps_over_k(model, radii):
  steps = 3
  x_adv = project(X + EPS * UNIFORM, X)
  for _ in range(steps):
    x_adv = project(x_adv + 2.5 * EPS / steps * signed(ce_gradient(x_adv, Y)), X)
  got = run(loss_of("pgd_at", pgd_steps=steps), model, images(X), Y)
  np.testing.assert_allclose(got, ce(x_adv, Y), rtol=1e-5)
  assert radii == [EPS]


def test_trades_ascends_kl_of_clean_to_adversarial_around_x(model, monkeypatch):
  """CE(f(x), y) + beta KL(p(x) || p(x')), x' ascending that KL (not KL(p(x') || p(x))) from
  x + 0.001 N(0, 1), projected around x (not around the noisy start) at every step."""
  steps, beta = 3, 6.0
  monkeypatch.setattr(tf.random, "normal", lambda shape, *a, **k: tf.broadcast_to(
      tf.constant(NORMAL, tf.float32), shape))
  p_clean = softmax(logits(X))
  x_adv = np.clip(X + 0.001 * NORMAL, 0.0, 1.0)
  for _ in range(steps):
    x_adv = project(x_adv + 2.5 * EPS / steps * signed(kl_gradient(x_adv, p_clean)), X)
  want = ce(X, Y) + beta * kl(p_clean, softmax(logits(x_adv)))
  got = run(loss_of("trades", pgd_steps=steps, trades_beta=beta), model, images(X), Y)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_nfgsm_steps_eps_from_2_eps_noise_without_projecting(model, radii):
  start = np.clip(X + 2 * EPS * UNIFORM, 0.0, 1.0)
  x_adv = np.clip(start + EPS * signed(ce_gradient(start, Y)), 0.0, 1.0)
  assert np.abs(x_adv - X).max() > EPS + 0.1  # the fixture leaves the eps ball, as N-FGSM may
  got = run(loss_of("nfgsm"), model, {"image": images(X)}, Y)
  np.testing.assert_allclose(got, ce(x_adv, Y), rtol=1e-5)
  assert radii == [2 * EPS]


def test_atta_carries_each_rows_perturbation_to_its_next_batch(model, radii):
  """Batch 1 stores each row's one-step perturbation; batch 2, the same rows in another order, starts
  from it (not from fresh noise, not from another row's) and takes another projected step of eps."""
  loss = loss_of("atta")
  loss.allocate(6, (2, 2, 1))
  rows = np.array([5, 2, 0, 3])
  first = run(loss, model, {"image": images(X), "index": tf.constant(rows)}, Y)
  once = atta_visits(X, Y, 1)
  np.testing.assert_allclose(first, ce(X + once, Y), rtol=1e-5)
  np.testing.assert_allclose(loss.carried.numpy()[rows], once, atol=1e-6)
  assert loss.seen.numpy().tolist() == [True, False, True, True, False, True]
  assert not loss.carried.numpy()[[1, 4]].any()
  order = np.array([3, 2, 1, 0])
  second = run(loss, model, {"image": images(X[order]), "index": tf.constant(rows[order])}, Y[order])
  twice = atta_visits(X, Y, 2)
  assert np.abs(twice - once).max() > 0.1  # the second step moves: a restart would be caught
  np.testing.assert_allclose(second, ce(X + twice, Y)[order], rtol=1e-5)
  np.testing.assert_allclose(loss.carried.numpy()[rows], twice, atol=1e-6)
  assert radii == [EPS, EPS]


def test_atta_trained_on_a_shuffled_dataset_keeps_images_and_rows_paired(model, radii, monkeypatch):
  """Through robust.train (two epochs of shuffled batches, learning rate 0 so the model stays the
  reference's): every training row's carried perturbation is the two-step one of its own image."""
  made = []
  make_loss = methods.make_loss
  monkeypatch.setattr(methods, "make_loss", lambda config: made.append(make_loss(config)) or made[-1])
  config = robust.RobustConfig(method="atta", eps=EPS, epochs=2, batch_size=2, learning_rate=0.0, guard=False,
                               guard_examples=2, execution=ExecutionConfig(verbose=0))
  _, info = robust.train(model, IMAGES, LABELS, config)
  # guard_examples rows are held out even with the guard off (every method of a seed trains on the same rows)
  rows, _ = methods.holdout_split(len(LABELS), 2, config.seed)
  assert info["train_examples"] == len(rows) == 8 and len(made) == 1
  assert made[0].seen.numpy().all()
  np.testing.assert_allclose(made[0].carried.numpy(), atta_visits(IMAGES[rows], LABELS[rows], 2), atol=1e-6)
  assert set(radii) == {EPS}


def test_the_metric_probe_carries_nothing(model, radii):
  """LossTrainer.build_metrics calls the loss once on a zero batch before training (training=False):
  row 0 must stay unseen, or its first real batch would start from the zero image's perturbation."""
  loss = loss_of("atta")
  loss.allocate(4, (2, 2, 1))
  data = tf.data.Dataset.from_tensor_slices(({"image": X.astype(np.float32), "index": np.arange(4)}, Y)).batch(2)
  training = execution.Training(model, loss, ExecutionConfig(verbose=0), lambda: keras.optimizers.Adam(0.0))
  training.trainer.build_metrics(data.element_spec)
  assert list(training.trainer.trackers) == ["loss"]
  assert not loss.seen.numpy().any() and not loss.carried.numpy().any()


def test_carry_needs_rows_in_training_and_evaluation_carries_nothing(model, radii):
  """A training batch without x["index"] is an error (it used to turn carrying off silently); an
  evaluation batch (training=False), with or without rows, starts from fresh noise and stores nothing."""
  loss = loss_of("atta")
  loss.allocate(4, (2, 2, 1))
  with pytest.raises(ValueError, match=r"x\['index'\]"):
    loss(model, {"image": images(X)}, tf.constant(Y))
  rows = {"image": images(X), "index": tf.constant(np.arange(4))}
  once = atta_visits(X, Y, 1)
  for batch in (rows, {"image": images(X)}):
    np.testing.assert_allclose(run(loss, model, batch, Y, training=False), ce(X + once, Y), rtol=1e-5)
  assert not loss.seen.numpy().any() and not loss.carried.numpy().any()
  run(loss, model, rows, Y)  # training: row i is seen
  np.testing.assert_allclose(run(loss, model, rows, Y, training=False), ce(X + once, Y), rtol=1e-5)
  np.testing.assert_allclose(loss.carried.numpy(), once, atol=1e-6)
