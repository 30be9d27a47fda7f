"""The autoattack_cost suite's pass counting: every image through the model, and every image whose
input gradient is taken, inside and outside graphs, as AutoAttack's attacks call the model."""
import keras
import numpy as np
import tensorflow as tf

from lad_tf.attacks.autoattack import autoattack
from pipelines.benchmarks import autoattack_cost


def _model():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


def test_the_counting_model_counts_forward_images_and_input_gradients():
  counting = autoattack_cost.CountingModel(_model())
  x = tf.constant(np.random.default_rng(0).random((4, 6, 6, 1), np.float32))
  np.testing.assert_allclose(counting(x), counting.model(x))
  assert counting.counts() == (4, 0)

  @tf.function
  def gradient(z):
    with tf.GradientTape() as tape:
      tape.watch(z)
      total = tf.reduce_sum(counting(z))
    return tape.gradient(total, z)

  for _ in range(3):
    gradient(x)
  assert counting.counts() == (16, 12)


def test_each_attack_is_recorded_with_the_passes_it_took():
  counting = autoattack_cost.CountingModel(_model())
  x = np.random.default_rng(1).random((8, 6, 6, 1)).astype(np.float32)
  y = np.argmax(counting.model(x), -1)  # every image starts classified correctly
  record = autoattack_cost._PerAttack(counting)
  autoattack(counting, x, y, 0.001, version="fast", n_iter=4, n_target_classes=2, record=record)
  assert [r["attack"] for r in record][0] == "apgd-ce" and record[0]["attacked"] == 8
  assert sum(r["model_images"] for r in record) == counting.counts()[0]
  # APGD takes an input gradient of every image it attacks at every step: at least 8 x 4 of them
  assert record[0]["gradient_images"] >= 8 * 4 and record[0]["model_images"] >= record[0]["gradient_images"]
