"""Images that are not held in memory as float32: the streamed half of a `lad_tf.data.datasets.Split`.

A large split (CelebA's 162,770 faces are 32 GB as float32) cannot be an array. A `LazyImages` stands
for the float32 NHWC array in [0, 1] it would be, with two ways in:
- indexing (`images[rows]`, an int, slice, index or mask array) decodes only the rows asked for, into
  numpy: for the stages that need arrays and take a bounded number of examples (calibration, figures,
  the attacked examples);
- `pairs(values, shuffle, seed)` is a `tf.data` pipeline of (image, value) for every row, decoded on
  the fly, where `values[i]` belongs to row i (labels, latents): for training and evaluation passes.
  Its memory does not grow with the split beyond what the source itself holds (file names, record
  positions or the compact uint8 pixels).

The sources: `celeba.FaceFiles` (JPEG files), `tfds_source.TFDSImages` (TFDS records) and `UInt8Images`
below (uint8 arrays read from files such as SVHN's .mat: a quarter of the float32 size).
"""
import numpy as np

# Shuffle buffer (in examples) for sources that cannot shuffle their whole index cheaply.
SHUFFLE_BUFFER = 10000


def is_lazy(x):
  return isinstance(x, LazyImages)


class LazyImages:
  """Base class: subclasses define `__len__`, `image_shape`, `read(rows)`, `subset(rows)`, `pairs`."""
  dtype = np.float32
  image_shape = None
  way_out = "read the dataset's files again"  # what to do when some cannot be decoded

  def __len__(self):
    raise NotImplementedError

  @property
  def shape(self):
    return (len(self),) + tuple(self.image_shape)

  def read(self, rows):
    """float32 images of the sorted-or-not int64 row numbers `rows`, in that order."""
    raise NotImplementedError

  def subset(self, rows):
    """The images at `rows`, still lazy."""
    raise NotImplementedError

  def pairs(self, values, shuffle=False, seed=0):
    """An unbatched tf.data pipeline of (image, values[i]) over the rows (shuffled when asked)."""
    raise NotImplementedError

  def unreadable(self):
    """The names of the items that cannot be decoded (sources that can have such items override)."""
    return []

  def __getitem__(self, index):
    rows = np.arange(len(self))[index]
    if np.ndim(rows) == 0:
      return self.read(np.array([rows], np.int64))[0]
    if len(rows) == 0:
      return np.zeros((0,) + tuple(self.image_shape), np.float32)
    return np.asarray(self.read(np.asarray(rows, np.int64)), np.float32)

  def __array__(self, dtype=None, copy=None):
    raise TypeError(f"{type(self).__name__} of {len(self)} images is not converted to an array whole "
                    f"(it may not fit in memory): index the rows you need, or stream it with "
                    f"lad_tf.data.datasets.to_tf_dataset")


class UInt8Images(LazyImages):
  """uint8 NHWC pixels kept as read, scaled to float32 [0, 1] per row or per element of the stream."""

  def __init__(self, pixels):
    self.pixels = pixels
    self.image_shape = tuple(pixels.shape[1:])

  def __len__(self):
    return len(self.pixels)

  def read(self, rows):
    return self.pixels[rows].astype(np.float32) / 255.0

  def subset(self, rows):
    return UInt8Images(self.pixels[rows])

  def pairs(self, values, shuffle=False, seed=0):
    import tensorflow as tf
    pixels, values = tf.constant(self.pixels), tf.constant(values)
    ds = tf.data.Dataset.range(len(self))  # whole-split shuffle of row numbers, pixels gathered per row
    if shuffle:
      ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda i: (tf.cast(tf.gather(pixels, i), tf.float32) / 255.0, tf.gather(values, i)),
                  num_parallel_calls=tf.data.AUTOTUNE)
