"""The work directory: its layout, one reader of it, and the life cycle of its stages.

A stage writes into `DIR/.<stage>.partial/` and is renamed to `DIR/<stage>/` when it finishes, with
`DIR/<stage>/stage.json` recording the fingerprint of the settings that decided its content (its own
settings and its inputs' fingerprints). A stage is done when its folder exists *and* its fingerprint
is the current one, so a changed setting reruns exactly the stages it affects, and those downstream
of them. A killed stage leaves only its `.partial` folder, which the next run reuses (training stages
keep their resumable backups there) or replaces. Every file lad_tf writes goes through `atomic_path`.

Layout (docs/ARCHITECTURE.md): config.json (the run's settings), classifier/model.keras,
generator/model.keras, boundaries/boundaries.npz, generation/generated.npz, defended/model.keras,
metrics.json, stages.json (seconds per stage), figures/, evaluation/.
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

from lad_tf.errors import ArtifactNotFoundError, ModelFileError

log = logging.getLogger("lad_tf")


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


class WorkDir:
  """Layout, reader and stage bookkeeping of a pipeline's work directory."""

  def __init__(self, root):
    self.root = os.path.abspath(root)

  def path(self, *parts):
    return os.path.join(self.root, *parts)

  # -- the layout, read the same way by the pipeline and the evaluation --------------------------
  def model(self, stage):
    """The Keras model of a stage ("classifier", "generator", "defended")."""
    return load_model(self.path(stage, "model.keras"))

  def run_config(self):
    """config.json: the settings of the run that made this directory (dataset, seed, ...)."""
    config = read_json(self.path("config.json"))
    if config is None:
      raise ArtifactNotFoundError(f"{self.path('config.json')} is missing: is {self.root} a defend work "
                                  f"directory? Run `python -m pipelines.defend --workdir={self.root}` first")
    return config

  def generated(self, calibration_size=None):
    from lad_tf.lad.generation import GeneratedSet
    return GeneratedSet.load(self.path("generation", "generated.npz"), calibration_size)

  def boundaries(self):
    from lad_tf.lad.boundary import Boundaries
    return Boundaries.load(self.path("boundaries", "boundaries.npz"))

  # -- stages --------------------------------------------------------------------------------------
  def stage_fingerprint(self, stage):
    """The fingerprint recorded by a finished stage (None if it is not there)."""
    return (read_json(self.path(stage, "stage.json")) or {}).get("fingerprint")

  def done(self, stage, settings=None):
    """Whether `stage` is finished (with these settings, when given)."""
    if not os.path.isdir(self.path(stage)):
      return False
    return settings is None or self.stage_fingerprint(stage) == fingerprint(settings)

  def run_stage(self, stage, settings, fn, force=False):
    """Runs fn(partial_dir) unless `stage` is done with `settings`; returns the stage folder.

    fn writes its artifacts into partial_dir (which may hold a killed run's resumable state).
    The wall time of each run is recorded in DIR/stages.json.
    """
    final = self.path(stage)
    if self.done(stage, settings) and not force:
      log.info("stage %s: done, skipped (%s)", stage, final)
      return final
    if os.path.isdir(final):
      log.info("stage %s: settings changed (or --force), running again", stage)
    partial = self.path(f".{stage}.partial")
    if read_json(os.path.join(partial, "stage.json"), {}).get("fingerprint") not in (None, fingerprint(settings)):
      shutil.rmtree(partial)  # a killed run with other settings: its backups do not apply
    os.makedirs(partial, exist_ok=True)
    write_json(os.path.join(partial, "stage.json"), {"fingerprint": fingerprint(settings), "settings": settings})
    log.info("stage %s: running", stage)
    start = time.time()
    fn(partial)
    seconds = time.time() - start
    if os.path.isdir(final):
      shutil.rmtree(final)
    os.replace(partial, final)
    timings = read_json(self.path("stages.json"), {})
    timings[stage] = round(seconds, 3)
    write_json(self.path("stages.json"), timings)
    log.info("stage %s: finished in %.1f s", stage, seconds)
    return final

  def cached_model(self, folder, name, settings, build):
    """A model kept in DIR/<folder>/<name>.keras keyed on the fingerprint of `settings`: loaded when
    the fingerprint matches, else built by build() and saved. Returns (model, reused)."""
    path = self.path(folder, f"{name}.keras")
    meta = self.path(folder, f"{name}.json")
    key = fingerprint(settings)
    if os.path.exists(path) and (read_json(meta) or {}).get("fingerprint") == key:
      return load_model(path), True
    model = build()
    save_model(model, path)
    write_json(meta, {"fingerprint": key, "settings": settings})
    return model, False
