"""Training a classifier: accuracy it must reach on real digits, and resuming after a kill."""
import keras
import numpy as np
import pytest

from lad_tf import models
from lad_tf.data import datasets
from lad_tf.runtime import execution, losses, training
from kill import Killed, KillAfter

QUIET = execution.ExecutionConfig(verbose=0)


def test_lenet_on_real_digits_reaches_90_percent(tmp_path):
  data = datasets.load("digits")
  model = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  history, accuracy = training.train_classifier(
      model, data.train, data.test, training.TrainConfig(epochs=12, batch_size=64, execution=QUIET), str(tmp_path))
  assert history["loss"][-1] < 0.5 * history["loss"][0]
  assert accuracy >= 0.90


def test_killed_training_resumes_at_its_last_epoch(tmp_path):
  data = datasets.load("digits")
  train = data.train.take(np.arange(256))
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", data.spec.image_shape, 10)
  ds = datasets.to_tf_dataset(train, 64)
  adam = lambda: keras.optimizers.Adam(1e-3)
  with pytest.raises(Killed):
    execution.fit(model, losses.classification, ds, QUIET, 5, adam, str(tmp_path), callbacks=[KillAfter(2)])
  # a new process would build a fresh model: the backup restores weights and the epoch counter
  fresh = models.build_classifier("lenet5", data.spec.image_shape, 10)
  history = execution.fit(fresh, losses.classification, ds, QUIET, 5, adam, str(tmp_path))
  assert len(history["loss"]) == 2  # epochs 4 and 5 only: 1-3 were done before the kill
  assert history["loss"][0] < 1.0  # and it started from trained weights, not from scratch


def test_fused_adam_follows_keras_adams_trajectory():
  """lad_tf.runtime.optimizers.FusedAdam: TensorFlow's one-kernel update, the same arithmetic as Keras'
  Adam, so the weights after a few real steps agree to float rounding (and differ from plain SGD's)."""
  import tensorflow as tf
  from lad_tf.runtime.optimizers import FusedAdam
  data = datasets.load("digits")
  x, y = tf.constant(data.train.x[:64]), tf.constant(data.train.y[:64])
  keras.utils.set_random_seed(0)
  first = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  start = first.get_weights()

  def trained(optimizer):
    model = keras.models.clone_model(first)
    model.set_weights(start)
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.classification(model, x, y, training=True)["loss"])
      optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
    for _ in range(4):
      step()
    return model.get_weights()

  ours, theirs = trained(FusedAdam(1e-3)), trained(keras.optimizers.Adam(1e-3))
  sgd = trained(keras.optimizers.SGD(1e-3))
  for a, b, c, w in zip(ours, theirs, sgd, start):
    np.testing.assert_allclose(a, b, atol=2e-6)
    assert np.max(np.abs(a - w)) > 1e-3  # four steps of 1e-3 moved every weight array
  assert max(float(np.max(np.abs(a - c))) for a, c in zip(ours, sgd)) > 1e-3
