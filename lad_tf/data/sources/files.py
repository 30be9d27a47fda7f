"""Your own images: a folder of class sub-folders (one per class, images inside, read with
keras.utils.image_dataset_from_directory) or an .npz with arrays `x` (N, H, W[, C]) and `y` (N,).
`--dataset=files:PATH` on the command lines and lad_tf.load_data in Python read them here; a fixed,
stratified fifth (seed 0) becomes the test split."""
import functools
import os

import numpy as np

from lad_tf.data.sources import DataFormatError

PREFIX = "files:"
TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@functools.lru_cache(maxsize=4)
def read(path):
  """(x float32 NHWC in [0, 1], y int64, class names) of the folder or .npz at `path`."""
  if os.path.isdir(path):
    return _read_folder(path)
  if path.endswith(".npz") and os.path.isfile(path):
    return _read_npz(path)
  raise DataFormatError(f"{path} is neither a folder of class sub-folders nor an .npz file with x and y")


def splits(path, seed=0):
  """{"train": (x, y), "test": (x, y)}: per class, a fixed fifth of the images is the test split."""
  x, y, _ = read(path)
  order = np.random.default_rng(seed).permutation(len(y))
  test = np.zeros(len(y), dtype=bool)
  for c in np.unique(y):
    members = order[y[order] == c]
    test[members[: max(1, int(round(TEST_FRACTION * len(members))))]] = True
  return {"train": (x[~test], y[~test]), "test": (x[test], y[test])}


def _read_folder(path):
  import keras
  first = _first_image(path)
  ds = keras.utils.image_dataset_from_directory(
      path, batch_size=None, shuffle=False, image_size=(first.height, first.width),
      color_mode="grayscale" if first.mode in ("1", "L", "I", "F") else "rgb")
  pairs = list(ds.as_numpy_iterator())
  x = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
  return x, np.array([p[1] for p in pairs], np.int64), tuple(ds.class_names)


def _read_npz(path):
  with np.load(path) as found:
    missing = {"x", "y"} - set(found.files)
    if missing:
      raise DataFormatError(f"{path} has no array {' or '.join(sorted(missing))}: save it with "
                            f"np.savez(path, x=images, y=labels)")
    x, y = found["x"], found["y"]
  x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or len(x) != len(y) or x.min() < 0 or x.max() > 1:
    raise DataFormatError(f"{path}: x must be N images (N, H, W[, C]) in [0, 1] or uint8 and y N labels, "
                          f"got x {x.shape} in [{x.min():g}, {x.max():g}] and y {np.shape(y)}")
  y = np.asarray(y).reshape(-1).astype(np.int64)
  return x, y, tuple(str(c) for c in range(int(y.max()) + 1))


def _first_image(folder):
  """The first image of a class folder (it sets the size and colour mode of them all)."""
  from PIL import Image
  for root, _, names in sorted(os.walk(folder)):
    for name in sorted(names):
      if name.lower().endswith(IMAGE_SUFFIXES):
        return Image.open(os.path.join(root, name))
  raise DataFormatError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders")
