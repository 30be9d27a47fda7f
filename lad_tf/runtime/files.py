"""Atomic file writes, JSON, settings fingerprints and Keras model files: the storage every stage and
training loop uses, so readers never see half a file."""
import contextlib
import hashlib
import json
import os
import tempfile

from lad_tf.errors import ArtifactNotFoundError, ModelFileError


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path beside `path` (same suffix) to write; renames it to `path` on success,
  so readers never see half a file. The one atomic write of lad_tf (JSON, npz, Keras models)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.basename(path).split(".", 1)[1] if "." in os.path.basename(path) else ""
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="." + suffix if suffix else "")
  os.close(fd)
  os.remove(tmp)  # writers (np.savez, model.save) create the file themselves
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path, obj):
  """Writes JSON atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)


def read_json(path, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _jsonable(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fingerprint(settings):
  """A short stable hash of JSON-able settings (tuples and lists alike)."""
  text = json.dumps(settings, sort_keys=True, default=_jsonable)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_model(path, what="model"):
  """A Keras model saved at `path` (compile=False); `what` names it in the clear error raised when the
  file is missing or unreadable."""
  import keras
  if not os.path.exists(path):
    raise ArtifactNotFoundError(f"no {what} at {path}: run `python -m pipelines.defend` on this work "
                                f"directory first (or give the model's path)")
  from lad_tf.models import space_to_depth  # noqa: F401  registers lad_tf's own layers for loading
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises several types for unreadable files
    detail = str(e).splitlines()[0] if str(e) else "no detail"
    raise ModelFileError(f"cannot read the {what} {path} as a Keras model ({type(e).__name__}: {detail}); "
                         f"pass a file saved with model.save('NAME.keras')") from e


def save_model(model, path):
  with atomic_path(path) as tmp:
    model.save(tmp)
