"""One registry of dataset specs, and loading by name.

A `DatasetSpec` holds everything that differs between datasets (shape, classes, the default latent
layer, eps grid, reconstruction norm, model architectures, where the data comes from), so no other
module needs `if dataset == ...`. Images are float32 NHWC in [0, 1]; labels int64.

Sources are tried in this order (unless `source` names one): local files in `data_dir`, the files of
Debian's `dataset-fashion-mnist` package, then TensorFlow Datasets by name.
"""
import contextlib
import dataclasses
import os
from typing import Any, Callable, Optional, Tuple

import numpy as np

from lad_tf.data.sources import DataFormatError, DatasetNotFoundError
from lad_tf.data.sources import celeba, digits, files, idx, images, svhn, tfds_source

__all__ = ["DatasetSpec", "Split", "Dataset", "REGISTRY", "get_spec", "load", "stratified_indices",
           "calibration_split", "to_tf_dataset", "naming_unreadable_files", "DataFormatError", "DatasetNotFoundError"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Split:
  """Images and their labels. `x` is a float32 array, or for large splits a LazyImages that stands for
  one (decoded per row or streamed, lad_tf.data.sources.images); `y` is always an int64 array."""
  x: Any
  y: np.ndarray

  def __len__(self):
    return len(self.y)

  def take(self, indices):
    """The examples at `indices` (lazy images stay unread)."""
    return Split(self.x.subset(indices) if self.streamed else self.x[indices], self.y[indices])

  def in_memory(self):
    """The same examples with the images as a numpy array (for bounded splits: decodes them all)."""
    return Split(np.asarray(self.x[:], np.float32), self.y) if self.streamed else self

  @property
  def streamed(self):
    """Whether the images are decoded on the fly rather than held in memory."""
    return images.is_lazy(self.x)


@dataclasses.dataclass(frozen=True)
class DefenceRecipe:
  """How the robust defences (lad_tf.robust) train on a dataset by default: fine-tune the trained
  classifier for a few epochs at a constant rate, or (MNIST at eps 0.3, where fine-tuning trains no
  robust model: docs/ROBUST.md) train anew with a one-cycle rate and a halved first step."""
  init: str = "finetune"           # or "scratch"
  epochs: int = 5
  learning_rate: float = 1e-3      # Adam; the peak of a cyclic schedule
  lr_schedule: str = "constant"    # or "cyclic"
  step_scale: float = 1.0          # the single-step defences' step at the start (the guard shrinks it)
  atta_steps: int = 1              # atta's carried steps per batch (lad_tf.robust.RobustConfig.atta_steps)
  selection: str = "robust"        # the guard's epoch selection (lad_tf.robust.RobustConfig.selection)
  weight_averaging: float = 0.0    # momentum of the weights' moving average, 0: none
  tradeoff: float = 0.0            # atta's TRADES weight, 0: plain adversarial CE
  generated_weight: float = 0.0    # atta's weight on LAD's decoded examples, 0: none


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What lad_tf needs to know about a dataset."""
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Tuple[str, ...]
  classifier: str          # zoo name of the paper's classifier (lad_tf.models)
  generator: str           # zoo name of its decoder
  blackbox: str            # zoo name of the differently built "black CNN" attackers use
  authors_eps_grid: Tuple[float, ...]  # the authors' eps list, for the raw-normal convention
  recon_norm: str          # "l2" (MSE) or "l1", the paper's choice for Eq. 2
  attack_eps: float        # the field's usual L-inf eps for this dataset
  # eps in units of the mean latent norm (lad_tf.lad.generation's default "relative" convention)
  eps_grid: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
  classifier_epochs: int = 10
  classifier_batch_size: int = 128
  # The authors train G for up to 1000 epochs; on 60k images and 2 CPU cores 10 epochs reach a
  # reconstruction MSE of about 0.013 (30 epochs: 0.011) in a third of the time.
  generator_epochs: int = 10
  generator_batch_size: int = 256
  calibration_per_class: int = 50  # test examples per class for boundaries and generation
  # XLA for the boundary fit (lad_tf.lad.boundary.BoundaryConfig.jit_compile): measured on SVHN's 4096-d
  # latents, where it is about 10x faster with the same boundaries; off elsewhere (the pinned digits
  # metrics are those of the plain fit)
  boundary_jit_compile: bool = False
  latent_layer: str = "latent"
  defence: DefenceRecipe = DefenceRecipe()
  description: str = ""
  local_formats: str = ""  # what --data_dir must hold, for error messages
  has_local: Optional[Callable[[str], bool]] = None
  load_local: Optional[Callable[[str], dict]] = None
  load_tfds: Optional[Callable[[Optional[str]], dict]] = None
  tfds_name: Optional[str] = None  # the TFDS builder behind load_tfds
  system_dirs: Tuple[str, ...] = ()
  embedded: Optional[Callable[[], dict]] = None


_DIGIT_NAMES = tuple(str(i) for i in range(10))
_MNIST_EPS = (0.5, 2.0, 5.0, 10.0, 12.0, 15.0, 18.0, 20.0, 25.0)


def _celeba_tfds(data_dir):
  # the same face square as the local folder (celeba.crop_face), not a squash of the whole 178x218;
  # always streamed from the records (162,770 training faces are 32 GB as float32)
  return tfds_source.load("celeb_a", data_dir=data_dir, label_fn=lambda e: e["attributes"]["Smiling"],
                          image_fn=celeba.crop_face, in_memory_bytes=0)


REGISTRY = {
    spec.name: spec for spec in [
        DatasetSpec(
            name="digits", image_shape=(28, 28, 1), num_classes=10, class_names=_DIGIT_NAMES,
            classifier="lenet5", generator="lenet5_decoder", blackbox="black_cnn",
            authors_eps_grid=_MNIST_EPS, recon_norm="l2", attack_eps=0.1,
            classifier_epochs=15, classifier_batch_size=64, generator_epochs=60, generator_batch_size=64,
            calibration_per_class=15,
            description="scikit-learn's 1,797 real 8x8 digits, centred in 28x28 (embedded default)",
            embedded=digits.load),
        DatasetSpec(
            name="mnist", image_shape=(28, 28, 1), num_classes=10, class_names=_DIGIT_NAMES,
            classifier="lenet5", generator="lenet5_decoder", blackbox="black_cnn",
            authors_eps_grid=_MNIST_EPS, recon_norm="l2", attack_eps=0.3,
            local_formats="train-images-idx3-ubyte[.gz] and the three other IDX files",
            has_local=idx.has_files, load_local=idx.load,
            load_tfds=lambda d: tfds_source.load("mnist", data_dir=d), tfds_name="mnist",
            # benchmarks/robust_mnist.json (row carry1@0.5: madry_cnn, all training images)
            defence=DefenceRecipe(init="scratch", epochs=10, learning_rate=0.005, lr_schedule="cyclic",
                                  step_scale=0.5)),
        DatasetSpec(
            name="fashion_mnist", image_shape=(28, 28, 1), num_classes=10,
            class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"),
            classifier="lenet5", generator="lenet5_decoder", blackbox="black_cnn",
            authors_eps_grid=_MNIST_EPS, recon_norm="l2", attack_eps=0.1,
            local_formats="train-images-idx3-ubyte[.gz] and the three other IDX files",
            has_local=idx.has_files, load_local=idx.load,
            load_tfds=lambda d: tfds_source.load("fashion_mnist", data_dir=d), tfds_name="fashion_mnist",
            system_dirs=(DEBIAN_FASHION_MNIST,),
            # benchmarks/recipe_fashion_mnist.json: 10 epochs against 5 were cleaner and more robust (both
            # still rose at the fifth), at 1.5x the classifier stage's time
            defence=DefenceRecipe(epochs=10)),
        DatasetSpec(
            name="svhn", image_shape=(32, 32, 3), num_classes=10, class_names=_DIGIT_NAMES,
            classifier="svhnnet", generator="svhnnet_decoder", blackbox="black_cnn",
            authors_eps_grid=(0.4, 0.6, 0.8, 1.0, 1.5), recon_norm="l1", attack_eps=8 / 255,
            boundary_jit_compile=True,  # benchmarks/svhn_speed.json
            local_formats="train_32x32.mat and test_32x32.mat",
            has_local=svhn.has_files, load_local=svhn.load,
            load_tfds=lambda d: tfds_source.load("svhn_cropped", data_dir=d), tfds_name="svhn_cropped"),
        DatasetSpec(
            name="celeba_smile", image_shape=(128, 128, 3), num_classes=2,
            class_names=("not smiling", "smiling"),
            classifier="celebanet", generator="celebanet_decoder", blackbox="black_cnn",
            authors_eps_grid=(0.1, 0.3, 1.0, 10.0, 15.0, 17.0, 20.0), recon_norm="l1", attack_eps=8 / 255,
            local_formats="img_align_celeba/*.jpg and list_attr_celeba.txt",
            has_local=celeba.has_files, load_local=celeba.load, load_tfds=_celeba_tfds, tfds_name="celeb_a"),
    ]
}


def get_spec(name):
  """The spec of a registered dataset, or of your own images for a name "files:PATH" (registered on
  first use, so every command that reads a work directory's config finds it)."""
  if name not in REGISTRY and name.startswith(files.PREFIX):
    REGISTRY[name] = files_spec(name[len(files.PREFIX):])
  if name not in REGISTRY:
    raise KeyError(f"unknown dataset '{name}'; known: {', '.join(sorted(REGISTRY))}, or files:PATH (a folder "
                   f"of class sub-folders or an .npz with x and y)")
  return REGISTRY[name]


def files_spec(path):
  """A spec for the images at `path` (lad_tf.data.sources.files): shape and classes read from them,
  LeNet-5 and a convolutional decoder from the zoo, the usual eps (0.1 grey, 8/255 colour)."""
  path = os.path.abspath(os.path.expanduser(path))
  x, y, names = files.read(path)
  smallest = int(np.min(np.bincount(files.splits(path)["test"][1], minlength=len(names))))
  return DatasetSpec(
      name=files.PREFIX + path, image_shape=tuple(int(d) for d in x.shape[1:]), num_classes=len(names),
      class_names=names, classifier="lenet5", generator="conv_decoder", blackbox="black_cnn",
      authors_eps_grid=(), recon_norm="l2", attack_eps=0.1 if x.shape[-1] == 1 else 8 / 255,
      calibration_per_class=max(1, min(50, smallest // 2)), description=f"your images at {path}",
      embedded=lambda: files.splits(path))


@dataclasses.dataclass(frozen=True)
class Dataset:
  spec: DatasetSpec
  train: Split
  test: Split
  source: str


def _check(spec, splits, origin):
  for split_name in ("train", "test"):
    x, y = splits[split_name]
    if x.shape[1:] != spec.image_shape:
      raise DataFormatError(f"{origin}: {split_name} images have shape {x.shape[1:]}, "
                            f"expected {spec.image_shape} for {spec.name}")
    if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
      raise DataFormatError(f"{origin}: {split_name} labels outside 0..{spec.num_classes - 1}")


def _not_found(spec, data_dir, tfds_error):
  ways = []
  if spec.has_local:
    ways.append(f"pass --data_dir=DIR with {spec.local_formats}"
                + (f" (nothing usable in {data_dir})" if data_dir else ""))
  if spec.system_dirs:
    ways.append(f"install Debian's package 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist; "
                f"looked in {', '.join(spec.system_dirs)})")
  if spec.load_tfds:
    ways.append("let TensorFlow Datasets download it (needs internet; TFDS said: "
                f"{str(tfds_error).splitlines()[0] if tfds_error else 'not tried'})")
  return DatasetNotFoundError(f"dataset '{spec.name}' was not found. Ways to get it: " + "; or ".join(ways))


def load(name, data_dir=None, source="auto"):
  """Loads dataset `name`: labels as numpy, images as numpy for the small datasets and as LazyImages
  (decoded on the fly) for the large ones (CelebA, SVHN, TFDS splits over 256 MB as float32).

  Args:
    name: a key of REGISTRY, or its DatasetSpec (a run that resolved it already).
    data_dir: folder with the dataset's own files (see DatasetSpec.local_formats); also TFDS's data_dir.
    source: "auto" (local files, system package files, then TFDS), or one of "local", "system",
      "tfds", "embedded" to insist on one.
  Returns:
    Dataset with train and test Splits.
  Raises:
    DatasetNotFoundError naming the ways to get the data; DataFormatError naming a corrupt file.
  """
  spec = name if isinstance(name, DatasetSpec) else get_spec(name)
  name = spec.name
  attempts = []
  if spec.embedded:
    attempts.append(("embedded", lambda: spec.embedded()))
  if spec.has_local and data_dir:
    for directory in (data_dir, os.path.join(data_dir, name)):
      if spec.has_local(directory):
        attempts.append(("local", lambda d=directory: spec.load_local(d)))
        break
  for directory in spec.system_dirs:
    if spec.has_local(directory):
      attempts.append(("system", lambda d=directory: spec.load_local(d)))
  if spec.load_tfds:
    attempts.append(("tfds", lambda: spec.load_tfds(data_dir)))
  if source != "auto":
    attempts = [a for a in attempts if a[0] == source]
  tfds_error = None
  for origin, loader in attempts:
    try:
      splits = loader()
    except DataFormatError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if origin != "tfds":
        raise
      tfds_error = e
      continue
    _check(spec, splits, origin)
    return Dataset(spec, Split(*splits["train"]), Split(*splits["test"]), origin)
  raise _not_found(spec, data_dir, tfds_error)


def stratified_indices(y, n_per_class, seed=0):
  """Indices of up to n_per_class examples of each class, drawn with `seed`, sorted."""
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(y):
    members = np.flatnonzero(y == c)
    chosen.append(rng.choice(members, size=min(n_per_class, len(members)), replace=False))
  return np.sort(np.concatenate(chosen))


def calibration_split(test, n_per_class, seed=0):
  """Splits the test set into (calibration, evaluation).

  The calibration examples (n per class) fit the boundaries and seed the generation; every accuracy
  lad_tf reports is measured on the evaluation part, which never saw them. The calibration split is
  always in memory (it is small and its stages index it freely); the evaluation part stays streamed
  when the test set is.
  """
  chosen = stratified_indices(test.y, n_per_class, seed)
  rest = np.setdiff1d(np.arange(len(test)), chosen)
  if len(rest) < len(chosen) // 2:
    raise ValueError(f"{n_per_class} calibration examples per class leave {len(rest)} of {len(test)} test "
                     f"examples for evaluation: choose fewer per class")
  return test.take(chosen).in_memory(), test.take(rest)


def to_tf_dataset(split, batch_size, shuffle=False, seed=0, cache=True, drop_remainder=False):
  """A batched, prefetched tf.data pipeline of (x, y) over a Split. Lazy images are streamed
  (LazyImages.pairs: decoded on the fly, never cached), so memory does not grow with the split;
  arrays are sliced (and cached) as before."""
  import tensorflow as tf
  if split.streamed:
    ds = split.x.pairs(split.y, shuffle=shuffle, seed=seed)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
  ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
  if cache:
    ds = ds.cache()
  if shuffle:
    ds = ds.shuffle(min(len(split), 10000), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def naming_unreadable_files(*splits):
  """Turns TensorFlow's decode error from a stream (a corrupt image hit mid-pass: it names no file)
  into a DataFormatError naming the files and the way out. On such an error, the streamed splits are
  scanned for the unreadable items (LazyImages.unreadable); other errors pass unchanged."""
  import tensorflow as tf
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    if not any(word in e.message.lower() for word in ("image", "jpeg", "png", "decode")):
      raise  # not a decoding error: no scan
    for split in splits:
      bad = split.x.unreadable() if split.streamed else []
      if bad:
        raise DataFormatError(
            f"{len(bad)} image(s) cannot be decoded: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
            f"(TensorFlow: {e.message.strip().splitlines()[-1][:200]}). Way out: {split.x.way_out}") from e
    raise
