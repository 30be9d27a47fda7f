"""Training the boundary-guided generator G on the frozen classifier's latents (Eq. 2)."""
import dataclasses

import keras
import numpy as np

from lad_tf.training import fit_resumable

RECON_LOSSES = {"l2": "mean_squared_error", "l1": "mean_absolute_error"}


@dataclasses.dataclass
class GeneratorConfig:
  """The authors' settings are Adam lr 1e-3, batch 256, up to 1000 epochs."""
  epochs: int = 30
  batch_size: int = 256
  learning_rate: float = 1e-3
  recon_norm: str = "l2"
  seed: int = 0
  verbose: int = 2


def latents(phi, x, batch_size=512):
  """phi(x) as float32 numpy, in batches."""
  return phi.predict(x, batch_size=batch_size, verbose=0).astype(np.float32)


def reconstruction_loss(generator, z, x, recon_norm, batch_size=512):
  """Mean per-pixel L2 (MSE) or L1 error of G(z) against x."""
  recon = generator.predict(z, batch_size=batch_size, verbose=0)
  diff = recon - x
  return float(np.mean(np.square(diff)) if recon_norm == "l2" else np.mean(np.abs(diff)))


def train_generator(phi, generator, train, test, config, state_dir):
  """Fits G(phi(x)) ~ x on the training split with phi frozen; resumable from state_dir.

  Returns {"train_loss", "test_loss", "history"}: losses are the chosen norm's mean per pixel,
  measured after training on the whole train and test splits.
  """
  if config.recon_norm not in RECON_LOSSES:
    raise ValueError(f"recon_norm must be one of {sorted(RECON_LOSSES)}, got '{config.recon_norm}'")
  keras.utils.set_random_seed(config.seed)
  z_train, z_test = latents(phi, train.x), latents(phi, test.x)
  generator.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                    loss=RECON_LOSSES[config.recon_norm])
  import tensorflow as tf
  train_ds = (tf.data.Dataset.from_tensor_slices((z_train, train.x)).cache()
              .shuffle(min(len(z_train), 20000), seed=config.seed).batch(config.batch_size)
              .prefetch(tf.data.AUTOTUNE))
  history = fit_resumable(generator, train_ds, config.epochs, state_dir, verbose=config.verbose)
  return {
      "train_loss": reconstruction_loss(generator, z_train, train.x, config.recon_norm),
      "test_loss": reconstruction_loss(generator, z_test, test.x, config.recon_norm),
      "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
  }
