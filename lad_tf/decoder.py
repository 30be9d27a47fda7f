"""Training the decoder G (the paper's boundary-guided generator) on the frozen classifier's latents (Eq. 2).

Not to be confused with lad_tf.generation (decoding perturbed latents into the LAD set) or
lad_tf.models.generators (the decoder architectures).
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from lad_tf import execution, losses
from lad_tf.execution import ExecutionConfig
from lad_tf.progress import Progress


@dataclasses.dataclass
class DecoderConfig:
  """The authors' settings are Adam lr 1e-3, batch 256, up to 1000 epochs."""
  epochs: int = 30
  batch_size: int = 256
  learning_rate: float = 1e-3
  recon_norm: str = "l2"
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)


def latents(phi, x, batch_size=512, name="latents"):
  """phi(x) as float32 numpy, in batches (images read from files are streamed); progress lines with
  the time left when it takes long (lad_tf.progress)."""
  progress = [Progress(name, batch_size=batch_size, steps=-(-len(x) // batch_size))]
  if hasattr(x, "decode"):
    from lad_tf import datasets
    images = datasets.to_tf_dataset(datasets.Split(x, np.zeros(len(x), np.int64)), batch_size)
    return phi.predict(images.map(lambda xb, _: xb), verbose=0, callbacks=progress).astype(np.float32)
  return phi.predict(x, batch_size=batch_size, verbose=0, callbacks=progress).astype(np.float32)


def _pairs(z, x, batch_size, seed=None):
  """(z, x) batches, shuffled when a seed is given; images read from files are decoded on the fly."""
  if hasattr(x, "decode"):
    ds = tf.data.Dataset.from_tensor_slices((z, x.paths))
    if seed is not None:
      ds = ds.shuffle(len(z), seed=seed)
    ds = ds.map(lambda zi, path: (zi, x.decode(path)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
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
  z_train, z_test = latents(phi, train.x, name="generator: train latents"), latents(
      phi, test.x, name="generator: test latents")
  history = execution.fit(generator, loss, _pairs(z_train, train.x, config.batch_size, run.seed), run,
                          config.epochs, lambda: keras.optimizers.Adam(config.learning_rate), state_dir,
                          name="generator", batch_size=config.batch_size)
  return {
      "train_loss": execution.evaluate(generator, loss, _pairs(z_train, train.x, 512),
                                       name="generator: train loss")["loss"],
      "test_loss": execution.evaluate(generator, loss, _pairs(z_test, test.x, 512),
                                      name="generator: test loss")["loss"],
      "history": history,
  }
