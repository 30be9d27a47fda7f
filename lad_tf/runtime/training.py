"""Training a classifier: cross-entropy (lad_tf.runtime.losses.classification) through lad_tf.runtime.execution.fit,
which resumes a killed run from its per-epoch backup and runs under any tf.distribute strategy."""
import dataclasses

import keras
import numpy as np

from lad_tf.data import datasets
from lad_tf.errors import ConfigError
from lad_tf.runtime import execution, losses
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.runtime.progress import Progress


@dataclasses.dataclass
class TrainConfig:
  epochs: int = 10
  batch_size: int = 128          # the global batch size (split over the replicas)
  learning_rate: float = 1e-3
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)


def predict(model, x, batch_size=512, name="predict"):
  """model.predict over images x, in batches, with progress lines when it takes long
  (lad_tf.runtime.progress); lazy images (lad_tf.data.sources.images) are streamed, never decoded whole."""
  split = datasets.Split(x, np.zeros(len(x), np.int64))
  progress = [Progress(name, batch_size=batch_size, steps=-(-len(x) // batch_size))]
  if not split.streamed:
    return model.predict(x, batch_size=batch_size, verbose=0, callbacks=progress)
  with datasets.naming_unreadable_files(split):
    return model.predict(datasets.to_tf_dataset(split, batch_size).map(lambda xb, _: xb), verbose=0,
                         callbacks=progress)


def accuracy(model, x, y, batch_size=512):
  """Top-1 accuracy of a logits model on images x with labels y (nan when x is empty)."""
  if len(x) == 0:
    return float("nan")
  logits = predict(model, x, batch_size, name="accuracy")
  return float(np.mean(np.argmax(logits, axis=-1) == y))


def check_better_than_chance(model, x, y, way_out, margin=0.05):
  """Refuses a classifier no better than always saying the most frequent class (+ `margin`): a defence
  would harden a model that has learnt nothing. Returns its accuracy on (x, y)."""
  measured = accuracy(model, x, y)
  chance = float(np.max(np.bincount(np.asarray(y, np.int64)))) / len(y) if len(y) else 0.0
  if not measured > chance + margin:
    raise ConfigError(f"the classifier is {measured:.1%} accurate on {len(y)} of your images, no better than "
                      f"chance ({chance:.1%}): train it first, {way_out}")
  return measured


def train_classifier(model, train, test, config, state_dir):
  """Trains a logits classifier on Splits; returns (history dict, test accuracy).

  state_dir keeps the per-epoch backup, so calling again after a kill resumes where it stopped
  (under multi_worker only the chief keeps it). `model` may be built outside the strategy's scope:
  it ends trained either way.
  """
  run = config.execution
  run.seed_everything()
  train_ds = datasets.to_tf_dataset(train, config.batch_size, shuffle=True, seed=run.seed)
  test_ds = datasets.to_tf_dataset(test, 512)
  with datasets.naming_unreadable_files(train, test):
    history = execution.fit(model, losses.classification, train_ds, run, config.epochs,
                            lambda: keras.optimizers.Adam(config.learning_rate), state_dir,
                            validation_data=test_ds, name="classifier", batch_size=config.batch_size)
  return history, accuracy(model, test.x, test.y)
