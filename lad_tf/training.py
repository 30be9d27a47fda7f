"""Training the classifier: Keras `fit` with checkpoints that let a killed run resume.

Every loop takes a `tf.distribute` strategy (`TrainConfig.strategy` or the `strategy` argument: a
name from lad_tf.distribute.STRATEGIES or a Strategy). Under `multi_worker` the loop is
lad_tf.distribute.distributed_fit (Keras fit fails there with several workers); elsewhere Keras
`fit` with BackupAndRestore, under `strategy.scope()`.
"""
import dataclasses
import os
from typing import Optional

import keras
import numpy as np

from lad_tf import datasets
from lad_tf import distribute


@dataclasses.dataclass
class TrainConfig:
  epochs: int = 10
  batch_size: int = 128          # the global batch size (split over the replicas)
  learning_rate: float = 1e-3
  seed: int = 0
  verbose: int = 2
  strategy: Optional[str] = None  # "default" (None), "mirrored" or "multi_worker"
  loop: str = "auto"              # "auto": custom loop under multi_worker, fit otherwise
  jit_compile: bool = False       # XLA; measured slower for LeNet on CPU (docs/SCALING.md)


def accuracy(model, split, batch_size=512):
  """Top-1 accuracy of a logits model on a Split."""
  logits = model.predict(split.x, batch_size=batch_size, verbose=0)
  return float(np.mean(np.argmax(logits, axis=-1) == split.y))


def compile_classifier(model, learning_rate, jit_compile=False):
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=jit_compile)
  return model


def fit_resumable(model, train_ds, epochs, state_dir, validation_data=None, verbose=2, callbacks=()):
  """model.fit that resumes from `state_dir` after a kill (keras BackupAndRestore at every epoch);
  state_dir None: plain fit."""
  backup = [] if state_dir is None else [keras.callbacks.BackupAndRestore(
      os.path.join(state_dir, "backup"), save_freq="epoch", delete_checkpoint=True)]
  return model.fit(train_ds, epochs=epochs, validation_data=validation_data, verbose=verbose,
                   callbacks=[*backup, *callbacks])


def train_classifier(model, train, test, config, state_dir, strategy=None):
  """Trains a logits classifier on Splits; returns (history dict, test accuracy).

  state_dir keeps the per-epoch backup, so calling again after a kill resumes where it stopped
  (under multi_worker only the chief keeps it). `strategy` (a name or a tf.distribute.Strategy)
  overrides config.strategy. `model` may be built outside the strategy's scope: a copy is trained in
  the scope and its weights are copied back, so `model` ends trained either way.
  """
  strategy = distribute.get_strategy(strategy if strategy is not None else config.strategy)
  keras.utils.set_random_seed(config.seed)
  train_ds = datasets.to_tf_dataset(train, config.batch_size, shuffle=True, seed=config.seed)
  test_ds = datasets.to_tf_dataset(test, 512)
  trained = distribute.build_in_scope(model, strategy)
  if distribute.uses_custom_loop(strategy, config.loop):
    optimizer = distribute.custom_loop_optimizer(strategy, lambda: keras.optimizers.Adam(config.learning_rate))
    history = distribute.distributed_fit(
        trained, optimizer, distribute.classifier_loss, train_ds, config.epochs, strategy, state_dir,
        validation_data=test_ds, verbose=config.verbose, name="classifier")
  else:
    with strategy.scope():
      compile_classifier(trained, config.learning_rate, config.jit_compile)
    history = fit_resumable(trained, train_ds, config.epochs, state_dir, validation_data=test_ds,
                            verbose=config.verbose).history
  if trained is not model:
    model.set_weights(trained.get_weights())
  return history, accuracy(model, test)
