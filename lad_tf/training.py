"""Training the classifier: Keras `fit` with checkpoints that let a killed run resume."""
import dataclasses
import os

import keras
import numpy as np

from lad_tf import datasets


@dataclasses.dataclass
class TrainConfig:
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0
  verbose: int = 2


def accuracy(model, split, batch_size=512):
  """Top-1 accuracy of a logits model on a Split."""
  logits = model.predict(split.x, batch_size=batch_size, verbose=0)
  return float(np.mean(np.argmax(logits, axis=-1) == split.y))


def compile_classifier(model, learning_rate):
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
  return model


def fit_resumable(model, train_ds, epochs, state_dir, validation_data=None, verbose=2, callbacks=()):
  """model.fit that resumes from `state_dir` after a kill (keras BackupAndRestore at every epoch)."""
  backup = keras.callbacks.BackupAndRestore(os.path.join(state_dir, "backup"), save_freq="epoch",
                                            delete_checkpoint=True)
  return model.fit(train_ds, epochs=epochs, validation_data=validation_data, verbose=verbose,
                   callbacks=[backup, *callbacks])


def train_classifier(model, train, test, config, state_dir):
  """Trains a logits classifier on Splits; returns (history dict, test accuracy).

  state_dir keeps the per-epoch backup, so calling again after a kill resumes where it stopped.
  """
  keras.utils.set_random_seed(config.seed)
  compile_classifier(model, config.learning_rate)
  train_ds = datasets.to_tf_dataset(train, config.batch_size, shuffle=True, seed=config.seed)
  test_ds = datasets.to_tf_dataset(test, 512)
  history = fit_resumable(model, train_ds, config.epochs, state_dir, validation_data=test_ds,
                          verbose=config.verbose)
  return history.history, accuracy(model, test)
