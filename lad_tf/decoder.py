"""Training the decoder G (the paper's boundary-guided generator) on the frozen classifier's latents (Eq. 2).

Not to be confused with lad_tf.generation (decoding perturbed latents into the LAD set) or
lad_tf.models.generators (the decoder architectures).
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from lad_tf import datasets, execution, losses, training
from lad_tf.execution import ExecutionConfig


@dataclasses.dataclass
class DecoderConfig:
  """The authors' settings are Adam lr 1e-3, batch 256, up to 1000 epochs."""
  epochs: int = 30
  batch_size: int = 256
  learning_rate: float = 1e-3
  recon_norm: str = "l2"
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)


def latents(phi, x, batch_size=512):
  """phi(x) as float32 numpy, in batches (lazy images are streamed)."""
  return training.predict(phi, x, batch_size).astype(np.float32)


def _pairs(z, x, batch_size, seed=None):
  """(z, x) batches, shuffled when a seed is given; lazy images are decoded on the fly."""
  if datasets.images.is_lazy(x):
    ds = x.pairs(z, shuffle=seed is not None, seed=seed or 0)
    return ds.map(lambda xi, zi: (zi, xi)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
  ds = tf.data.Dataset.from_tensor_slices((z, x))
  if seed is not None:
    ds = ds.cache().shuffle(min(len(z), 20000), seed=seed)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_decoder(phi, generator, train, test, config, state_dir):
  """Fits G(phi(x)) ~ x on the training split with phi frozen; resumable from state_dir.

  `generator` ends trained. Returns {"train_loss", "test_loss", "history"}: losses are the chosen
  norm's mean per pixel, measured after training on the whole train and test splits.
  """
  loss = losses.reconstruction(config.recon_norm)
  run = config.execution
  run.seed_everything()
  z_train, z_test = latents(phi, train.x), latents(phi, test.x)
  with datasets.naming_unreadable_files(train, test):
    history = execution.fit(generator, loss, _pairs(z_train, train.x, config.batch_size, run.seed), run,
                            config.epochs, lambda: keras.optimizers.Adam(config.learning_rate), state_dir,
                            name="generator")
    return {
        "train_loss": execution.evaluate(generator, loss, _pairs(z_train, train.x, 512))["loss"],
        "test_loss": execution.evaluate(generator, loss, _pairs(z_test, test.x, 512))["loss"],
        "history": history,
    }
