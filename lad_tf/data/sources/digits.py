"""scikit-learn's bundled 1,797 real 8x8 handwritten digits, made MNIST-like (28x28).

The 8x8 digits are resized to 20x20 and centred in a 28x28 frame, as MNIST centres its 20x20 digits,
so the MNIST models (LeNet-5 and its generator) apply unchanged. Split: per class, a fixed 20% (seed 0)
is the test split (359 images), the rest the training split (1,438 images).
"""
import numpy as np

TEST_FRACTION = 0.2


def load():
  import tensorflow as tf
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0
  images = tf.image.resize(images, (20, 20), method="bilinear").numpy()
  images = np.clip(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))), 0.0, 1.0).astype(np.float32)
  labels = digits.target.astype(np.int64)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(labels))
  test = np.zeros(len(labels), dtype=bool)
  for c in np.unique(labels):
    members = order[labels[order] == c]
    test[members[: int(round(TEST_FRACTION * len(members)))]] = True
  return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}
