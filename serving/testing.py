"""Small Keras classifiers for the serving tests and the serving benchmark.

They follow the library's contract (one image input in [0, 1], logits out, a layer named `latent`)
so the export, the server and the client are exercised exactly as with the zoo models, in seconds.
"""
import time

import numpy as np


def tiny_classifier(input_shape=(8, 8, 1), num_classes=3, seed=0):
  """conv -> flatten -> dense `latent` -> relu -> logits; distinct weights for distinct seeds."""
  import keras

  keras.utils.set_random_seed(seed)
  inputs = keras.Input(input_shape, name="images")
  x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(16, name="latent")(x)
  x = keras.layers.ReLU(name="latent_relu")(x)
  outputs = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name=f"tiny_{seed}")


def lenet_like(input_shape=(28, 28, 1), num_classes=10, seed=0):
  """The zoo's LeNet-5 when lad_tf.models is importable, else a functional LeNet-shaped CNN."""
  import keras

  keras.utils.set_random_seed(seed)
  try:
    from lad_tf import models
    return models.build_classifier("lenet5", tuple(input_shape), num_classes)
  except Exception:  # pylint: disable=broad-except  The zoo is optional for latency figures.
    pass
  inputs = keras.Input(input_shape, name="images")
  x = keras.layers.Conv2D(20, 5, activation="relu")(inputs)
  x = keras.layers.MaxPooling2D(2)(x)
  x = keras.layers.Conv2D(50, 5, activation="relu")(x)
  x = keras.layers.MaxPooling2D(2)(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(500, name="latent")(x)
  x = keras.layers.ReLU()(x)
  outputs = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name="lenet_like")


def random_images(n, input_shape=(8, 8, 1), seed=0):
  return np.random.default_rng(seed).random((n, *input_shape), dtype=np.float32)


def keras_outputs(model, images):
  """What the served `serving_default` must answer: softmax probabilities and argmax classes."""
  logits = np.asarray(model(np.asarray(images, np.float32), training=False), dtype=np.float64)
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return {"probabilities": (shifted / shifted.sum(-1, keepdims=True)).astype(np.float32),
          "classes": logits.argmax(-1).astype(np.int64)}


def wait_for(predicate, timeout=60.0, what="condition"):
  """Polls predicate() every 0.2 s until it returns a true value (returned); fails after `timeout` s."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError(f"{what} not reached within {timeout:.0f}s")


def benign_copies(image, rng, noise=0.02, jpeg_quality=85):
  """What honest clients send again of an image: an exact retry, a copy with light uniform
  noise, a copy shifted by one pixel, a JPEG re-encoding ({kind: image}, float32 in [0, 1])."""
  import tensorflow as tf

  image = np.asarray(image, np.float32)
  noisy = np.clip(image + rng.uniform(-noise, noise, image.shape), 0, 1).astype(np.float32)
  axis = int(rng.integers(0, 2))
  shifted = np.roll(image, int(rng.choice([-1, 1])), axis=axis)
  pixels = tf.constant(np.round(image * 255).astype(np.uint8))
  jpeg = tf.io.decode_jpeg(tf.io.encode_jpeg(pixels, quality=jpeg_quality),
                           channels=image.shape[-1]).numpy().astype(np.float32) / 255.0
  return {"retry": image.copy(), "noise": noisy, "shift": shifted, "jpeg": jpeg}
