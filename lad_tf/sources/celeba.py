"""CelebA's aligned faces (img_align_celeba/*.jpg) with list_attr_celeba.txt, as smiling / not smiling.

The paper crops faces with dlib's detector. The aligned CelebA images (178x218) already have the
eyes at fixed positions, so we take a fixed square: the 178x178 window starting at row 20, which holds
the whole face, then resize to 128x128. No detector, no extra dependency, identical for every image.
"""
import os

import numpy as np

from lad_tf.sources import DataFormatError

ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
CROP_TOP, CROP_SIZE = 20, 178
# The paper's sizes: 19,999 training and 2,000 test images.
DEFAULT_TRAIN, DEFAULT_TEST = 20000, 2000


def has_files(directory):
  return (directory is not None and os.path.isfile(os.path.join(directory, ATTRIBUTES))
          and os.path.isdir(os.path.join(directory, IMAGES)))


def read_attribute(path, attribute="Smiling"):
  """Returns {filename: 0/1} for one attribute of list_attr_celeba.txt (values -1/1)."""
  with open(path) as f:
    lines = f.read().splitlines()
  if len(lines) < 2:
    raise DataFormatError(f"{path}: too short for a CelebA attribute file")
  names = lines[1].split()
  if attribute not in names:
    raise DataFormatError(f"{path}: no attribute column '{attribute}' (columns: {' '.join(names[:5])} ...)")
  column = names.index(attribute)
  labels = {}
  for number, line in enumerate(lines[2:], start=3):
    parts = line.split()
    if not parts:
      continue
    if len(parts) != len(names) + 1 or parts[column + 1] not in ("1", "-1"):
      raise DataFormatError(f"{path}: line {number} does not hold {len(names)} values of -1/1")
    labels[parts[0]] = int(parts[column + 1] == "1")
  return labels


def read_partition(path):
  """{filename: 0 train / 1 validation / 2 test} from list_eval_partition.txt."""
  partition = {}
  with open(path) as f:
    for line in f:
      parts = line.split()
      if len(parts) == 2:
        partition[parts[0]] = int(parts[1])
  return partition


def crop_face(image, size=128):
  """The face square of an aligned CelebA image (uint8 HWC tensor): 178x178 from row 20 (centred
  horizontally, shrunk to fit smaller images), resized to size x size, float32 in [0, 1]. TensorFlow
  ops only, so the local folder and the TFDS path (and a tf.data map) crop identically."""
  import tensorflow as tf
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  top = tf.minimum(CROP_TOP, tf.maximum(0, height - CROP_SIZE))
  side = tf.minimum(tf.minimum(CROP_SIZE, height - top), width)
  left = (width - side) // 2
  image = tf.image.crop_to_bounding_box(image, top, left, side, side)
  image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (size, size), antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def decode_face(path, size=128):
  import tensorflow as tf
  try:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    raise DataFormatError(f"{path}: not a readable image ({e.message})") from e
  return crop_face(image, size).numpy()


class FaceFiles:
  """The faces of a CelebA split, decoded on demand (memory does not grow with the split): indexing
  decodes only the files asked for; `decode` is the tf.data map that streams them (datasets.to_tf_dataset).
  Behaves as the float32 array (N, size, size, 3) it stands for where lad_tf indexes images."""
  dtype = np.float32

  def __init__(self, paths, size=128):
    self.paths, self.size = np.asarray(paths, dtype=str), size

  def __len__(self):
    return len(self.paths)

  @property
  def shape(self):
    return (len(self.paths), self.size, self.size, 3)

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return decode_face(self.paths[index], self.size)
    chosen = self.paths[index]
    if len(chosen) == 0:
      return np.zeros((0, self.size, self.size, 3), np.float32)
    return np.stack([decode_face(p, self.size) for p in chosen]).astype(np.float32)

  def subset(self, index):
    return FaceFiles(self.paths[index], self.size)

  def decode(self, path):
    """A file path tensor -> its face, float32 (size, size, 3) in [0, 1] (TensorFlow ops)."""
    import tensorflow as tf
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    face = crop_face(image, self.size)
    face.set_shape([self.size, self.size, 3])
    return face


def load(directory, max_train=DEFAULT_TRAIN, max_test=DEFAULT_TEST, size=128):
  """Train: partition 0 (or the first files), test: partition 2 (or the files after), capped.

  The training split's images are FaceFiles, decoded on the fly; the test split (capped at max_test)
  is decoded into memory."""
  labels = read_attribute(os.path.join(directory, ATTRIBUTES))
  files = sorted(f for f in labels if os.path.isfile(os.path.join(directory, IMAGES, f)))
  if not files:
    raise DataFormatError(f"{os.path.join(directory, IMAGES)}: none of the images named in {ATTRIBUTES} exist")
  partition_path = os.path.join(directory, PARTITION)
  if os.path.isfile(partition_path):
    partition = read_partition(partition_path)
    train_files = [f for f in files if partition.get(f) == 0][:max_train]
    test_files = [f for f in files if partition.get(f) == 2][:max_test]
  else:  # no official partition: the last tenth (at most max_test) is the test split
    n_test = min(max_test, max(1, len(files) // 10))
    train_files, test_files = files[:-n_test][:max_train], files[-n_test:]

  def read(names):
    x = FaceFiles([os.path.join(directory, IMAGES, f) for f in names], size)
    return x, np.array([labels[f] for f in names], dtype=np.int64)

  (train_x, train_y), (test_x, test_y) = read(train_files), read(test_files)
  return {"train": (train_x, train_y), "test": (test_x[:], test_y)}
