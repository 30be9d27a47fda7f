"""Training a classifier: accuracy it must reach on real digits, and resuming after a kill."""
import keras
import numpy as np
import pytest

from lad_tf import datasets, models, training
from kill import Killed, KillAfter


def test_lenet_on_real_digits_reaches_90_percent(tmp_path):
  data = datasets.load("digits")
  model = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  history, accuracy = training.train_classifier(
      model, data.train, data.test, training.TrainConfig(epochs=12, batch_size=64, verbose=0), str(tmp_path))
  assert history["loss"][-1] < 0.5 * history["loss"][0]
  assert accuracy >= 0.90


def test_killed_training_resumes_at_its_last_epoch(tmp_path):
  data = datasets.load("digits")
  train = data.train.take(np.arange(256))
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", data.spec.image_shape, 10)
  training.compile_classifier(model, 1e-3)
  ds = datasets.to_tf_dataset(train, 64)
  with pytest.raises(Killed):
    training.fit_resumable(model, ds, 5, str(tmp_path), verbose=0, callbacks=[KillAfter(2)])
  # a new process would build a fresh model: the backup restores weights and the epoch counter
  fresh = models.build_classifier("lenet5", data.spec.image_shape, 10)
  training.compile_classifier(fresh, 1e-3)
  history = training.fit_resumable(fresh, ds, 5, str(tmp_path), verbose=0)
  assert len(history.history["loss"]) == 2  # epochs 4 and 5 only: 1-3 were done before the kill
  assert history.history["loss"][0] < 1.0  # and it started from trained weights, not from scratch
