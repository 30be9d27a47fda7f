"""Training the decoder G (the paper's boundary-guided generator) on the frozen classifier's latents (Eq. 2).

Not to be confused with lad_tf.lad.generation (decoding perturbed latents into the LAD set) or
lad_tf.models.generators (the decoder architectures).
"""
import dataclasses
import os
from typing import Tuple

import keras
import numpy as np
import tensorflow as tf

from lad_tf.data import datasets
from lad_tf.runtime import execution, losses, training
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.runtime.files import read_json, write_json


@dataclasses.dataclass
class DecoderConfig:
  """The authors' settings are Adam lr 1e-3, batch 256, up to 1000 epochs."""
  epochs: int = 30
  batch_size: int = 256
  learning_rate: float = 1e-3
  recon_norm: str = "l2"
  loss_at_epochs: Tuple[int, ...] = ()  # epochs at which the train / test loss is measured (the MSE curve)
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)


def latents(phi, x, batch_size=512, name="latents"):
  """phi(x) as float32 numpy, in batches (lazy images are streamed); progress lines with the time
  left when it takes long (lad_tf.runtime.progress)."""
  return training.predict(phi, x, batch_size, name=name).astype(np.float32)


def _pairs(z, x, batch_size, seed=None):
  """(z, x) batches, shuffled when a seed is given; lazy images are decoded on the fly."""
  if datasets.images.is_lazy(x):
    ds = x.pairs(z, shuffle=seed is not None, seed=seed or 0)
    return ds.map(lambda xi, zi: (zi, xi)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
  ds = tf.data.Dataset.from_tensor_slices((z, x))
  if seed is not None:
    ds = ds.cache().shuffle(min(len(z), 20000), seed=seed)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class LossAtEpochs(keras.callbacks.Callback):
  """Measures the decoder's loss on the whole train and test splits when each of `epochs` ends, so one
  training run gives the loss curve (the paper reports it after 1000 epochs only). The figures are
  kept in `path`, so a resumed run keeps those measured before the kill."""

  def __init__(self, training, loss, splits, epochs, path):
    super().__init__()
    self.training, self.loss, self.splits, self.path = training, loss, splits, path
    self.epochs = set(int(e) for e in epochs)
    self.values = read_json(path, {}) if path else {}

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 not in self.epochs:
      return
    self.values[str(epoch + 1)] = {name: execution.evaluate(self.training.model, self.loss, data)["loss"]
                                   for name, data in self.splits.items()}
    if self.path:
      write_json(self.path, self.values)


def train_decoder(phi, generator, train, test, config, state_dir):
  """Fits G(phi(x)) ~ x on the training split with phi frozen; resumable from state_dir.

  `generator` ends trained. Returns {"train_loss", "test_loss", "history", "loss_at_epoch"}: losses
  are the chosen norm's mean per pixel, measured after training on the whole train and test splits,
  and (loss_at_epoch, keyed by epoch) when each of config.loss_at_epochs ends.
  """
  loss = losses.reconstruction(config.recon_norm)
  run = config.execution
  run.seed_everything()
  z_train, z_test = latents(phi, train.x, name="generator: train latents"), latents(
      phi, test.x, name="generator: test latents")
  trainer = execution.Training(generator, loss, run, lambda: keras.optimizers.Adam(config.learning_rate),
                               name="generator")
  splits = {"train": _pairs(z_train, train.x, 512), "test": _pairs(z_test, test.x, 512)}
  curve = LossAtEpochs(trainer, loss, splits, config.loss_at_epochs,
                       os.path.join(state_dir, "loss_at_epoch.json") if state_dir else None)
  with datasets.naming_unreadable_files(train, test):
    history = trainer.fit(_pairs(z_train, train.x, config.batch_size, run.seed), config.epochs, state_dir,
                          callbacks=[curve] if config.loss_at_epochs else (), batch_size=config.batch_size)
    trainer.finish()
    return {
        "train_loss": execution.evaluate(generator, loss, splits["train"], name="generator: train loss")["loss"],
        "test_loss": execution.evaluate(generator, loss, splits["test"], name="generator: test loss")["loss"],
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "loss_at_epoch": {e: curve.values[e] for e in sorted(curve.values, key=int)},
    }
