"""TensorFlow Datasets by name: works wherever TFDS can download (or finds) the data."""
import os
import socket
import urllib.parse

import numpy as np

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


def load(tfds_name, data_dir=None, image_key="image", label_fn=None, image_fn=None, download=True):
  """Reads the train and test splits of `tfds_name` into numpy.

  label_fn maps an example dict to its integer label (default: example["label"]); image_fn maps the
  uint8 image to float32 in [0, 1] (default: divide by 255), e.g. CelebA's face crop.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  dataset_builder = builder(tfds_name, data_dir=data_dir)
  if download:
    check_download_reachable(dataset_builder)
    dataset_builder.download_and_prepare()
  splits = {}
  for split in ("train", "test"):
    ds = dataset_builder.as_dataset(split=split)

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
