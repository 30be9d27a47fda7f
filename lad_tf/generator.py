"""Training the boundary-guided generator G on the frozen classifier's latents (Eq. 2)."""
import dataclasses
from typing import Optional

import keras
import numpy as np

from lad_tf import distribute
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
  strategy: Optional[str] = None  # "default" (None), "mirrored" or "multi_worker"
  loop: str = "auto"              # "auto": custom loop under multi_worker, fit otherwise
  jit_compile: bool = False


def latents(phi, x, batch_size=512):
  """phi(x) as float32 numpy, in batches."""
  return phi.predict(x, batch_size=batch_size, verbose=0).astype(np.float32)


def reconstruction_loss(generator, z, x, recon_norm, batch_size=512):
  """Mean per-pixel L2 (MSE) or L1 error of G(z) against x."""
  recon = generator.predict(z, batch_size=batch_size, verbose=0)
  diff = recon - x
  return float(np.mean(np.square(diff)) if recon_norm == "l2" else np.mean(np.abs(diff)))


def train_generator(phi, generator, train, test, config, state_dir, strategy=None):
  """Fits G(phi(x)) ~ x on the training split with phi frozen; resumable from state_dir.

  `strategy` (a name or a tf.distribute.Strategy) overrides config.strategy; `generator` ends
  trained (a copy built in the strategy's scope is trained when needed, its weights copied back).
  Returns {"train_loss", "test_loss", "history"}: losses are the chosen norm's mean per pixel,
  measured after training on the whole train and test splits.
  """
  if config.recon_norm not in RECON_LOSSES:
    raise ValueError(f"recon_norm must be one of {sorted(RECON_LOSSES)}, got '{config.recon_norm}'")
  strategy = distribute.get_strategy(strategy if strategy is not None else config.strategy)
  keras.utils.set_random_seed(config.seed)
  z_train, z_test = latents(phi, train.x), latents(phi, test.x)
  import tensorflow as tf
  train_ds = (tf.data.Dataset.from_tensor_slices((z_train, train.x)).cache()
              .shuffle(min(len(z_train), 20000), seed=config.seed).batch(config.batch_size)
              .prefetch(tf.data.AUTOTUNE))
  trained = distribute.build_in_scope(generator, strategy)
  if distribute.uses_custom_loop(strategy, config.loop):
    optimizer = distribute.custom_loop_optimizer(strategy, lambda: keras.optimizers.Adam(config.learning_rate))
    history = distribute.distributed_fit(
        trained, optimizer, distribute.reconstruction_loss(config.recon_norm), train_ds, config.epochs,
        strategy, state_dir, verbose=config.verbose, name="generator")
  else:
    with strategy.scope():
      trained.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=RECON_LOSSES[config.recon_norm], jit_compile=config.jit_compile)
    history = fit_resumable(trained, train_ds, config.epochs, state_dir, verbose=config.verbose).history
  if trained is not generator:
    generator.set_weights(trained.get_weights())
  return {
      "train_loss": reconstruction_loss(generator, z_train, train.x, config.recon_norm),
      "test_loss": reconstruction_loss(generator, z_test, test.x, config.recon_norm),
      "history": {k: [float(v) for v in vs] for k, vs in history.items()},
  }
