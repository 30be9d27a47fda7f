"""Expected failures: errors whose message already says what is wrong and the way out.

The command lines (`pipelines/`) print a `LadError` as one line on stderr and exit non-zero, without a
traceback (`--verbose` shows it); anything else is a bug and keeps its traceback.
"""


class LadError(Exception):
  """Base of the errors a user can fix from the message alone (bad data, flags, files)."""


class ConfigError(LadError, ValueError):
  """Settings that cannot work together, or a value outside what a setting accepts."""


class ArtifactNotFoundError(LadError, FileNotFoundError):
  """A file that an earlier stage or command should have written is missing."""


class ModelFileError(LadError, ValueError):
  """A model file exists but cannot be read as a Keras model."""
