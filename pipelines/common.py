"""Flags and logging shared by the command lines."""
import logging

from absl import flags
from absl import logging as absl_logging


def define_data_flags(default_dataset="digits"):
  from lad_tf import datasets
  flags.DEFINE_enum("dataset", default_dataset, sorted(datasets.REGISTRY), "Dataset by name.")
  flags.DEFINE_string("data_dir", None, "Folder with the dataset's own files (also TFDS's data_dir).")
  flags.DEFINE_string("workdir", None, "Work directory (default: runs/DATASET).")
  flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same numbers.")


def setup_logging():
  """lad_tf's progress lines (logger "lad_tf") on stderr through absl."""
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger("lad_tf").setLevel(logging.INFO)


def workdir(flag_values):
  return flag_values.workdir or f"runs/{flag_values.dataset}"
