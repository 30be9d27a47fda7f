"""The IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed)."""
import gzip
import os

import numpy as np

from lad_tf.data.sources import DataFormatError

# magic = 0x0000 | dtype code | number of dimensions; MNIST-style files use unsigned bytes (0x08).
_UBYTE = 0x08
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path):
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError) as e:  # gzip raises these on truncated or non-gzip data
    raise DataFormatError(f"{path}: cannot be read as {'gzip' if path.endswith('.gz') else 'IDX'} ({e})") from e


def read_idx(path, expected_ndim):
  """Reads one IDX file into a uint8 array, checking magic number, dimensions and length."""
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataFormatError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
  zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or dtype_code != _UBYTE or ndim != expected_ndim:
    raise DataFormatError(
        f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x00000{_UBYTE:x}0{expected_ndim}: "
        f"unsigned bytes, {expected_ndim} dimensions)")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataFormatError(f"{path}: truncated IDX header")
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  size = int(np.prod(dims))
  if len(data) - header != size:
    raise DataFormatError(
        f"{path}: short read: header says {dims} ({size} bytes of data) but the file holds "
        f"{len(data) - header}; the file is truncated or corrupt, download it again")
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_file(directory, stem):
  """The path of `stem` or `stem.gz` in `directory`, or None."""
  for candidate in (stem + ".gz", stem):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def has_files(directory):
  return directory is not None and all(
      find_file(directory, stem) for pair in FILES.values() for stem in pair)


def load(directory):
  """Reads the four MNIST-layout files of `directory` into {"train": (x, y), "test": (x, y)}."""
  splits = {}
  for split, (images_stem, labels_stem) in FILES.items():
    images_path, labels_path = find_file(directory, images_stem), find_file(directory, labels_stem)
    if images_path is None or labels_path is None:
      raise DataFormatError(f"{directory}: missing {images_stem}[.gz] or {labels_stem}[.gz]")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
      raise DataFormatError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    x = (images.astype(np.float32) / 255.0)[..., None]
    splits[split] = (x, labels.astype(np.int64))
  return splits
