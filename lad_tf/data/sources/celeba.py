"""CelebA's aligned faces (img_align_celeba/*.jpg) with list_attr_celeba.txt, as smiling / not smiling.

The paper crops faces with dlib's detector. The aligned CelebA images (178x218) already have the
eyes at fixed positions, so we take a fixed square: the 178x178 window starting at row 20, which holds
the whole face, then resize to 128x128. No detector, no extra dependency, identical for every image.
"""
import os

import numpy as np

from lad_tf.data.sources import DataFormatError
from lad_tf.data.sources.images import LazyImages

ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
CROP_TOP, CROP_SIZE = 20, 178


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


WAY_OUT = ("download CelebA's img_align_celeba again (or remove the file and its line from "
           f"{ATTRIBUTES} and {PARTITION})")


def check_files(paths):
  """Raises DataFormatError naming the images that cannot be whole JPEGs: empty, not starting with
  the JPEG start marker, or truncated (no end marker in the last bytes). Reads 2 + 64 bytes a file,
  so a half-downloaded folder fails at load, not hours into training."""
  bad = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        head = f.read(3)
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read()
    except OSError as e:
      bad.append(f"{path} ({e.strerror})")
      continue
    if head != b"\xff\xd8\xff":
      bad.append(f"{path} (not a JPEG)" if head else f"{path} (empty)")
    elif b"\xff\xd9" not in tail:
      bad.append(f"{path} (truncated: no JPEG end marker)")
  if bad:
    raise DataFormatError(f"{len(bad)} CelebA image(s) are unreadable: {'; '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''}. Way out: {WAY_OUT}")


def _decode(path, size):
  """A file path tensor -> its face, float32 (size, size, 3) in [0, 1] (TensorFlow ops)."""
  import tensorflow as tf
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  face = crop_face(image, size)
  face.set_shape([size, size, 3])
  return face


def decode_face(path, size=128):
  import tensorflow as tf
  try:
    return _decode(tf.constant(path), size).numpy()
  except tf.errors.OpError as e:
    raise DataFormatError(f"{path}: not a readable image ({e.message.strip()}). Way out: {WAY_OUT}") from e


class FaceFiles(LazyImages):
  """The faces of a CelebA split as files, decoded on demand: indexing decodes only the rows asked
  for; `pairs` streams them (file names shuffled, then decoded in parallel)."""
  way_out = WAY_OUT

  def __init__(self, paths, size=128):
    self.paths, self.size = np.asarray(paths, dtype=str), size
    self.image_shape = (size, size, 3)

  def __len__(self):
    return len(self.paths)

  def read(self, rows):
    return np.stack([decode_face(p, self.size) for p in self.paths[rows]]).astype(np.float32)

  def subset(self, rows):
    return FaceFiles(self.paths[rows], self.size)

  def pairs(self, values, shuffle=False, seed=0):
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((self.paths, values))
    if shuffle:
      ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda path, v: (_decode(path, self.size), v), num_parallel_calls=tf.data.AUTOTUNE)

  def unreadable(self):
    """The paths that fail to decode (one parallel pass over the files, decode errors dropped)."""
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(self)), self.paths))
    ds = ds.map(lambda i, path: (i, tf.shape(_decode(path, self.size))[0]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors().batch(4096)
    read = np.concatenate([i for i, _ in ds.as_numpy_iterator()] + [np.zeros(0, np.int64)])
    return [str(p) for p in np.delete(self.paths, read)]


def load(directory, max_train=None, max_test=None, size=128):
  """Train: partition 0 (or the first files), test: partition 2 (or the last tenth), each optionally
  capped; both splits are FaceFiles, decoded on the fly, so neither is held in memory whole.

  Every listed file is checked to be a whole JPEG first (check_files)."""
  labels = read_attribute(os.path.join(directory, ATTRIBUTES))
  files = sorted(f for f in labels if os.path.isfile(os.path.join(directory, IMAGES, f)))
  if not files:
    raise DataFormatError(f"{os.path.join(directory, IMAGES)}: none of the images named in {ATTRIBUTES} exist")
  partition_path = os.path.join(directory, PARTITION)
  if os.path.isfile(partition_path):
    partition = read_partition(partition_path)
    train_files = [f for f in files if partition.get(f) == 0][:max_train]
    test_files = [f for f in files if partition.get(f) == 2][:max_test]
  else:  # no official partition: the last tenth is the test split
    n_test = max(1, len(files) // 10)
    train_files, test_files = files[:-n_test][:max_train], files[-n_test:][:max_test]

  def read(names):
    paths = [os.path.join(directory, IMAGES, f) for f in names]
    check_files(paths)
    return FaceFiles(paths, size), np.array([labels[f] for f in names], dtype=np.int64)

  return {"train": read(train_files), "test": read(test_files)}
