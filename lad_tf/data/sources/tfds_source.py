"""TensorFlow Datasets by name: works wherever TFDS can download (or finds) the data."""
import os
import socket
import urllib.parse

import numpy as np

from lad_tf.data.sources import DataFormatError
from lad_tf.data.sources.images import SHUFFLE_BUFFER, LazyImages

# Environment variables through which downloads may go via a proxy: then the download host need not
# resolve here, so the offline check below is skipped.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class TFDSUnreachableError(OSError):
  """TFDS would have to download, and the hosts it downloads from cannot be resolved here."""


def builder(tfds_name, data_dir=None):
  """The TFDS builder of `tfds_name` (no download)."""
  import tensorflow_datasets as tfds
  return tfds.builder(tfds_name, data_dir=data_dir)


def download_hosts(dataset_builder):
  """The host names the builder downloads from (its registered URL infos), sorted."""
  urls = dataset_builder.url_infos or {}
  return sorted({urllib.parse.urlsplit(url).hostname for url in urls} - {None})


def check_download_reachable(dataset_builder):
  """Fails at once when the download hosts do not resolve, instead of TFDS retrying for minutes.

  Skipped when the dataset is already prepared or a proxy is configured.
  """
  prepared = (dataset_builder.data_path / "dataset_info.json").exists()
  if prepared or any(os.environ.get(v) for v in _PROXY_VARIABLES):
    return
  for host in download_hosts(dataset_builder):
    try:
      socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
      raise TFDSUnreachableError(f"cannot resolve {host}, where TFDS downloads "
                                 f"{dataset_builder.name} from (no internet connection?)") from e


# A split whose float32 images would take more than this is streamed from the TFDS records
# (TFDSImages); smaller ones (MNIST, Fashion-MNIST: 188 MB) are read into memory, as fast as before.
IN_MEMORY_BYTES = 256 * 2**20


class TFDSImages(LazyImages):
  """The images of a prepared TFDS split, decoded from its records on demand.

  The records are read in TFDS's fixed order (shuffle_files=False) with the image left encoded
  (SkipDecoding), so a pass holds one record at a time; `positions` are the record numbers this
  object stands for (a subset after `subset`). Shuffling shuffles encoded records in a buffer of
  images.SHUFFLE_BUFFER (TFDS writes its records already shuffled), then decodes.
  """

  def __init__(self, dataset_builder, split, total, image_key="image", image_fn=None, positions=None):
    self.builder, self.split, self.image_key, self.image_fn = dataset_builder, split, image_key, image_fn
    self.total = total  # the split's number of records
    self.positions = np.arange(self.total) if positions is None else np.asarray(positions, np.int64)
    shape = self._records().map(lambda pos, encoded: self._decode(encoded)).element_spec.shape
    if not shape.is_fully_defined():
      raise DataFormatError(f"TFDS {dataset_builder.name} {split}: images of unknown shape {shape}")
    self.image_shape = tuple(shape)

  def __len__(self):
    return len(self.positions)

  def _records(self):
    """(record number, encoded image) over the whole split, in TFDS's order."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                 decoders={self.image_key: tfds.decode.SkipDecoding()})
    return ds.map(lambda example: example[self.image_key]).enumerate().map(
        lambda pos, encoded: (tf.cast(pos, tf.int64), encoded))

  def _decode(self, encoded):
    import tensorflow as tf
    image = self.builder.info.features[self.image_key].decode_example(encoded)
    return self.image_fn(image) if self.image_fn else tf.cast(image, tf.float32) / 255.0

  def _mine(self):
    """(record number, row, encoded image) of this object's records, rows numbered as `positions`."""
    import tensorflow as tf
    row_of = np.full(self.total, -1, np.int64)
    row_of[self.positions] = np.arange(len(self.positions))
    row_of = tf.constant(row_of)
    ds = self._records().map(lambda pos, encoded: (pos, tf.gather(row_of, pos), encoded))
    if len(self.positions) < self.total:
      ds = ds.filter(lambda pos, row, encoded: row >= 0)
    return ds

  def read(self, rows):
    import tensorflow as tf
    wanted = np.zeros(self.total, bool)
    wanted[self.positions[rows]] = True
    wanted = tf.constant(wanted)
    ds = self._records().filter(lambda pos, encoded: tf.gather(wanted, pos))
    ds = ds.map(lambda pos, encoded: (pos, self._decode(encoded)), num_parallel_calls=tf.data.AUTOTUNE)
    images = dict(ds.as_numpy_iterator())
    return np.stack([images[p] for p in self.positions[rows]]).astype(np.float32)

  def subset(self, rows):
    return TFDSImages(self.builder, self.split, self.total, self.image_key, self.image_fn, self.positions[rows])

  def pairs(self, values, shuffle=False, seed=0):
    import tensorflow as tf
    values = tf.constant(values)
    ds = self._mine()
    if shuffle:
      ds = ds.shuffle(min(len(self), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda pos, row, encoded: (self._decode(encoded), tf.gather(values, row)),
                  num_parallel_calls=tf.data.AUTOTUNE)


def load(tfds_name, data_dir=None, image_key="image", label_fn=None, image_fn=None, download=True,
         in_memory_bytes=IN_MEMORY_BYTES):
  """The train and test splits of `tfds_name`: labels as numpy, images as numpy when the split is
  small (under `in_memory_bytes` as float32), else TFDSImages streamed from the records.

  label_fn maps an example dict to its integer label (default: example["label"]); image_fn maps the
  uint8 image to float32 in [0, 1] (default: divide by 255), e.g. CelebA's face crop.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  dataset_builder = builder(tfds_name, data_dir=data_dir)
  if download:
    check_download_reachable(dataset_builder)
    dataset_builder.download_and_prepare()
  label_of = label_fn or (lambda example: example["label"])
  splits = {}
  for split in ("train", "test"):
    # labels in record order, one pass with the images left encoded
    ds = dataset_builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={image_key: tfds.decode.SkipDecoding()})
    labels = np.concatenate([y for y in tfds.as_numpy(ds.map(lambda e: tf.cast(label_of(e), tf.int64))
                                                      .batch(4096))] + [np.zeros(0, np.int64)])
    images = TFDSImages(dataset_builder, split, len(labels), image_key, image_fn)
    if len(images) * 4 * int(np.prod(images.image_shape)) <= in_memory_bytes:
      x = np.concatenate([xb for xb, _ in images.pairs(labels).batch(1024).as_numpy_iterator()]
                         + [np.zeros((0,) + images.image_shape, np.float32)])
      splits[split] = (x.astype(np.float32), labels)
    else:
      splits[split] = (images, labels)
  return splits
