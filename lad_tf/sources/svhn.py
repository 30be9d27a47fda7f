"""SVHN cropped digits in their original MATLAB files (train_32x32.mat, test_32x32.mat).

scipy reads a .mat whole (the files are compressed: no memory map), so the pixels stay uint8 in
memory (lad_tf.sources.images.UInt8Images) and become float32 only per row or per streamed batch."""
import os

import numpy as np

from lad_tf.sources import DataFormatError
from lad_tf.sources.images import UInt8Images

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
