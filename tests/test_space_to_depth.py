"""SpaceToDepthConv2D computes what keras Conv2D computes (outputs and gradients, to float
tolerance), so lenet5_decoder_blocked (the image layer on pixel blocks) is the same decoder: same
outputs, same saved weights, and training it reaches the loss the Conv2D decoder reaches."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from lad_tf import models
from lad_tf.data import datasets
from lad_tf.lad import decoder
from lad_tf.runtime import execution, losses, precision
from lad_tf.models import generators
from lad_tf.models.space_to_depth import SpaceToDepthConv2D


def _pair(filters, kernel, block, shape, seed=0):
  rng = np.random.default_rng(seed)
  plain = keras.layers.Conv2D(filters, kernel, activation="sigmoid")
  blocked = SpaceToDepthConv2D(filters, kernel, block=block, activation="sigmoid")
  plain.build(shape)
  blocked.build(shape)
  plain.set_weights([rng.normal(0, 0.3, v.shape).astype(np.float32) for v in plain.weights])
  blocked.set_weights(plain.get_weights())
  return plain, blocked, rng.random(shape, dtype=np.float32)


# the decoder's image layer, odd sizes that need padding, several filters, a non-square kernel
@pytest.mark.parametrize("filters,kernel,block,shape", [
    (1, 5, 2, (4, 32, 32, 16)), (2, 4, 2, (3, 30, 29, 3)), (16, 4, 3, (2, 35, 35, 16)),
    (1, (3, 2), 4, (2, 7, 9, 2)), (1, 5, 2, (2, 5, 5, 1))])
def test_outputs_and_gradients_equal_conv2d(filters, kernel, block, shape):
  plain, blocked, x = _pair(filters, kernel, block, shape)
  x = tf.constant(x)
  grads = []
  for layer in (plain, blocked):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(tf.square(y - 0.5))
    grads.append((y, *tape.gradient(loss, [x, *layer.trainable_variables])))
  for a, b in zip(*grads):
    assert a.shape == b.shape
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
  assert float(tf.reduce_max(tf.abs(grads[0][2]))) > 1e-3  # the kernel gradient compared is not ~0


def test_rejects_what_it_does_not_compute():
  with pytest.raises(ValueError, match="stride-1"):
    SpaceToDepthConv2D(1, 3, strides=2)
  with pytest.raises(ValueError, match="stride-1"):
    SpaceToDepthConv2D(1, 3, padding="same")
  with pytest.raises(ValueError, match="block"):
    SpaceToDepthConv2D(1, 3, block=0)


def test_decoder_same_outputs_saved_and_in_bfloat16(tmp_path):
  keras.utils.set_random_seed(0)
  plain = generators.lenet5_decoder()
  blocked = models.build_generator("lenet5_decoder_blocked", 500, (28, 28, 1))
  assert isinstance(blocked.get_layer("image"), SpaceToDepthConv2D)
  blocked.set_weights(plain.get_weights())  # the same variables: old weights load as they are
  z = np.random.default_rng(1).normal(0, 3, (16, 500)).astype(np.float32)
  np.testing.assert_allclose(blocked(z).numpy(), plain(z).numpy(), atol=1e-5)
  assert float(np.std(plain(z).numpy())) > 1e-3  # outputs that vary, not a constant compared
  path = os.path.join(tmp_path, "decoder.keras")
  blocked.save(path)
  np.testing.assert_array_equal(keras.models.load_model(path, compile=False)(z).numpy(), blocked(z).numpy())
  # the executor's bfloat16 copy keeps the layer and computes within bfloat16 rounding of float32
  copy = precision.with_policy(blocked, "mixed_bfloat16")
  assert isinstance(copy.get_layer("image"), SpaceToDepthConv2D)
  assert copy.get_layer("image").compute_dtype == "bfloat16"
  np.testing.assert_allclose(tf.cast(copy(z), tf.float32).numpy(), plain(z).numpy(), atol=0.02)


def test_training_reaches_the_conv2d_decoders_loss():
  """Both formulations from the same start, on the same digits latents and batches: the loss falls
  by a margin and ends where the Conv2D decoder's does."""
  data = datasets.load("digits")
  keras.utils.set_random_seed(0)
  phi, _ = models.split_at_latent(models.build_classifier("lenet5", (28, 28, 1), 10))
  z = decoder.latents(phi, data.train.x)
  loss = losses.reconstruction("l2")
  start = generators.lenet5_decoder(image_block=1).get_weights()
  final = {}
  for block in (1, 2):
    model = generators.lenet5_decoder(image_block=block)
    model.set_weights(start)
    ds = decoder._pairs(z, data.train.x, 64, seed=0)
    before = execution.evaluate(model, loss, decoder._pairs(z, data.train.x, 512))["loss"]
    execution.fit(model, loss, ds, execution.ExecutionConfig(verbose=0, precision="float32"), 4,
                  lambda: keras.optimizers.Adam(1e-3))
    final[block] = execution.evaluate(model, loss, decoder._pairs(z, data.train.x, 512))["loss"]
    assert final[block] < 0.6 * before, (block, before, final[block])
  assert abs(final[2] - final[1]) < 0.02 * final[1], final


def test_a_fresh_process_loads_a_saved_blocked_decoder(tmp_path):
  """lad_tf.runtime.files.load_model registers the layer itself: a later stage (or pipelines.evaluate) in a
  new process need not have imported lad_tf.models first."""
  path = str(tmp_path / "decoder.keras")
  models.build_generator("lenet5_decoder_blocked", 500, (28, 28, 1)).save(path)
  code = ("import sys; from lad_tf.run.workdir import load_model; "
          "assert 'lad_tf.models' not in sys.modules; "
          "print(type(load_model(sys.argv[1]).get_layer('image')).__name__)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "SpaceToDepthConv2D"
