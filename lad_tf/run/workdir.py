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
import logging
import os
import shutil
import time

from lad_tf.errors import ArtifactNotFoundError
from lad_tf.runtime.files import fingerprint, load_model, read_json, save_model, write_json

log = logging.getLogger("lad_tf")


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

  def run_stage(self, stage, settings, fn, force=False, outputs=()):
    """Runs fn(partial_dir) unless `stage` is done with `settings`; returns the stage folder.

    fn writes its artifacts into partial_dir (which may hold a killed run's resumable state); each of
    `outputs` (file names) must be among them, or the stage stays unfinished.
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
    missing = [name for name in outputs if not os.path.exists(os.path.join(partial, name))]
    if missing:
      raise RuntimeError(f"stage {stage} finished without writing {', '.join(missing)} (declared in its "
                         f"outputs); {partial} is kept for a look")
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
