"""The work directory: one folder per pipeline stage, made visible only when complete.

A stage writes into `DIR/.<stage>.partial/` and is renamed to `DIR/<stage>/` when it finishes, so a
stage folder that exists is complete. A killed stage leaves only its `.partial` folder, which the next
run reuses (training stages keep their resumable backups there) or replaces.
"""
import json
import logging
import os
import shutil
import tempfile
import time

log = logging.getLogger("lad_tf")


def write_json(path, obj):
  """Writes JSON atomically (temporary file, then rename): readers never see half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
  os.replace(tmp, path)


def read_json(path, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _jsonable(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class WorkDir:
  """Layout and stage bookkeeping of a pipeline's work directory."""

  def __init__(self, root):
    self.root = os.path.abspath(root)
    os.makedirs(self.root, exist_ok=True)

  def path(self, *parts):
    return os.path.join(self.root, *parts)

  def done(self, stage):
    return os.path.isdir(self.path(stage))

  def run_stage(self, stage, fn, force=False):
    """Runs fn(partial_dir) unless `stage` is complete; returns the stage folder.

    fn writes its artifacts into partial_dir (which may hold a killed run's resumable state).
    The wall time of each run is recorded in DIR/stages.json.
    """
    final = self.path(stage)
    if self.done(stage) and not force:
      log.info("stage %s: done, skipped (%s)", stage, final)
      return final
    partial = self.path(f".{stage}.partial")
    os.makedirs(partial, exist_ok=True)
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
