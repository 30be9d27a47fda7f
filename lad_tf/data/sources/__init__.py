"""Readers, one per file format, each returning numpy arrays (images float32 NHWC in [0, 1], labels int64).

A reader raises `DataFormatError` naming the file and what is wrong with it; the dataset registry
(`lad_tf.data.datasets`) decides which readers to try and in which order.
"""
from lad_tf.errors import LadError


class DataFormatError(LadError, ValueError):
  """A data file exists but is corrupt, truncated or not in the expected format."""


class DatasetNotFoundError(LadError, FileNotFoundError):
  """No source could provide the dataset; the message lists the ways to get it."""
