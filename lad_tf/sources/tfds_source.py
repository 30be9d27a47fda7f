"""TensorFlow Datasets by name: works wherever TFDS can download (or finds) the data."""
import numpy as np


def load(tfds_name, data_dir=None, image_key="image", label_fn=None, image_fn=None, download=True):
  """Reads the train and test splits of `tfds_name` into numpy.

  label_fn maps an example dict to its integer label (default: example["label"]); image_fn maps the
  uint8 image to float32 in [0, 1] (default: divide by 255), e.g. CelebA's face crop.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if download:
    builder.download_and_prepare()
  splits = {}
  for split in ("train", "test"):
    ds = builder.as_dataset(split=split)

    def convert(example):
      image = image_fn(example[image_key]) if image_fn else tf.cast(example[image_key], tf.float32) / 255.0
      label = label_fn(example) if label_fn else example["label"]
      return image, tf.cast(label, tf.int64)

    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.map(convert).batch(1024)):
      xs.append(x)
      ys.append(y)
    splits[split] = (np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64))
  return splits
