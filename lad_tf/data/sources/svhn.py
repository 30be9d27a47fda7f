"""SVHN cropped digits in their original MATLAB files (train_32x32.mat, test_32x32.mat).

scipy reads a .mat whole (the files are compressed: no memory map), so the pixels stay uint8 in
memory (lad_tf.data.sources.images.UInt8Images) and become float32 only per row or per streamed batch.
`write_mat` writes that format (for tests and for benchmarks on full-size files where the real ones
are absent: `write_synthetic`, random images that only stand in for SVHN's sizes, never its content).
"""
import os

import numpy as np

from lad_tf.data.sources import DataFormatError
from lad_tf.data.sources.images import UInt8Images

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def has_files(directory):
  return directory is not None and all(os.path.isfile(os.path.join(directory, f)) for f in FILES.values())


def read_mat(path):
  """`X` is 32x32x3xN uint8; `y` is Nx1 with 10 standing for the digit 0."""
  from scipy import io as scipy_io  # scipy comes with scikit-learn
  try:
    mat = scipy_io.loadmat(path)
  except Exception as e:  # scipy raises several types on corrupt files
    raise DataFormatError(f"{path}: not a readable MATLAB .mat file ({e})") from e
  missing = [k for k in ("X", "y") if k not in mat]
  if missing:
    raise DataFormatError(f"{path}: the .mat file has no variable {' or '.join(missing)} "
                          f"(found {sorted(k for k in mat if not k.startswith('__'))})")
  images, labels = mat["X"], mat["y"].reshape(-1)
  if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
    raise DataFormatError(f"{path}: X has shape {images.shape}, expected 32x32x3xN")
  if images.shape[3] != len(labels):
    raise DataFormatError(f"{path}: X holds {images.shape[3]} images but y {len(labels)} labels")
  # kept as uint8 (225 MB for the training split, not 900 MB as float32), scaled per row or stream element
  x = UInt8Images(np.ascontiguousarray(np.transpose(images, (3, 0, 1, 2))))
  y = labels.astype(np.int64) % 10
  return x, y


def load(directory):
  return {split: read_mat(os.path.join(directory, name)) for split, name in FILES.items()}


SIZES = {"train": 73257, "test": 26032}  # the real files' image counts


def write_mat(path, images, labels):
  """Writes images (N, 32, 32, 3) uint8, or float in [0, 1]) and labels 0..9 as SVHN's .mat file:
  `X` 32x32x3xN uint8, `y` Nx1 with the digit 0 written as 10."""
  from scipy import io as scipy_io
  images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
  if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
    raise ValueError(f"write_mat takes images (N, 32, 32, 3) and N labels, got {images.shape} and {labels.shape}")
  if images.dtype != np.uint8:
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  mat_labels = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
  scipy_io.savemat(path, {"X": np.transpose(images, (1, 2, 3, 0)), "y": mat_labels})


def write_synthetic(directory, sizes=None, seed=0):
  """Writes train_32x32.mat and test_32x32.mat of `sizes` ({"train": n, "test": n}, default the real
  counts) from a seeded generator: uniform random pixels and labels, for timing only (no model can
  learn anything from them). Returns the directory."""
  sizes = sizes or SIZES
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  for split, name in FILES.items():
    n = sizes[split]
    images = np.empty((n, 32, 32, 3), np.uint8)
    for start in range(0, n, 8192):  # in chunks: one float array of 73k images would be 900 MB
      stop = min(start + 8192, n)
      images[start:stop] = rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.uint8)
    write_mat(os.path.join(directory, name), images, rng.integers(0, 10, n))
  return directory
