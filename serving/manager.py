"""Versions on disk -> loaded servables, as TF Serving's AspiredVersionsManager does it.

The manager polls each model's base path for version folders (ASCII digits within int64, as TF
Serving), loads the versions its policy aspires to, retries a failed load (`max_num_load_retries`
times, `load_retry_interval_micros` apart, and again whenever the folder's files change), keeps
the served version until its replacement is available, and gives an unloaded version's memory
back (its graph is closed, collected and returned to the allocator).
"""
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import os
import threading
import time

import grpc

from serving import errors
from serving import layout
from serving import servable as servable_lib

log = logging.getLogger(__name__)

STATE_AVAILABLE, STATE_LOADING, STATE_END = "AVAILABLE", "LOADING", "END"


@dataclasses.dataclass
class _Failure:
  stamp: tuple  # The folder's files when the last attempt failed.
  attempts: int
  retry_at: float  # time.monotonic() of the next attempt.


class _Model:
  def __init__(self, config):
    self.config = config
    self.servables = {}  # version -> Servable (replaced, never mutated, so reads need no lock)
    self.states = {}  # version -> (state, grpc code, message)
    self.failed = {}  # version -> _Failure
    self.reported_empty = False


def _stamp(path):
  """Changes while a version folder is being written, so a half-copied version is retried."""
  parts = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      try:
        st = os.stat(os.path.join(root, name))
        parts.append((os.path.relpath(os.path.join(root, name), path), st.st_size,
                      st.st_mtime_ns))
      except OSError:
        parts.append((name, None))
  return tuple(parts)


def _release_freed_memory():
  """Collect what an unloaded version left and hand the allocator's free pages back to the OS."""
  gc.unfreeze()
  gc.collect()
  gc.freeze()
  name = ctypes.util.find_library("c")
  try:
    ctypes.CDLL(name).malloc_trim(0)
  except (OSError, AttributeError, TypeError):  # Not glibc: the memory is reused, not returned.
    pass


class ModelManager:
  """Loads the aspired versions of each model from its base path and hands them to requests."""

  def __init__(self, models, *, max_batch_size=256, enable_warmup=True, warmup_iterations=1,
               max_num_load_retries=5, load_retry_interval_s=60.0, tags=("serve",),
               batching=None, detector=None):
    if not models:
      raise ValueError("no model to serve: give --model_base_path or --model_config_file")
    self._models = {m.name: _Model(m) for m in models}
    self._max_batch_size = max_batch_size
    if batching is not None:  # The stricter of the two limits applies to every request.
      self._max_batch_size = min(filter(None, (max_batch_size, batching.max_batch_size)))
    self._enable_warmup = enable_warmup
    self._warmup_iterations = warmup_iterations
    self._max_retries = max(0, max_num_load_retries)
    self._retry_interval = max(0.0, load_retry_interval_s)
    self._tags = tuple(tags)
    self._batching = batching
    self.detector = detector  # A detection.QueryDetector every version's requests go through.
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None

  @property
  def model_names(self):
    return sorted(self._models)

  def start_polling(self, interval):
    """Poll every `interval` s (TF Serving's --file_system_poll_wait_seconds; 0 once, <0 never)."""
    if interval < 0:
      return
    first_pass = threading.Event()

    def loop():
      # Every load runs on this one thread, the first one too: its allocator arena is reused
      # by each new version instead of a second arena growing beside the startup one.
      try:
        self.poll()
      finally:
        first_pass.set()
      while interval > 0 and not self._stop.wait(interval):
        try:
          self.poll()
        except Exception:  # Keep polling; one bad pass must not stop version updates.
          log.exception("version poll failed")

    self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
    self._thread.start()
    first_pass.wait()  # Like tensorflow_model_server: what is on disk loads before serving.

  def stop(self):
    """Stop polling and close every loaded version (their batch threads end)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    for model in self._models.values():
      for servable in model.servables.values():
        servable.close()

  def poll(self):
    for model in self._models.values():
      try:
        self._poll_model(model)
      except Exception:  # One model's trouble must not stop the others' updates.
        log.exception("model %s: version poll failed", model.config.name)

  def _aspired(self, model, candidates):
    config = model.config
    if config.policy == "all":
      return set(candidates)
    if config.policy == "specific":
      return set(candidates) & set(config.versions)
    return set(sorted(candidates)[-config.num_versions:])

  def _retryable(self, path, failure, now):
    """A failed version is tried again when its files changed or a retry is due."""
    if _stamp(path) != failure.stamp:
      return True
    return failure.attempts <= self._max_retries and now >= failure.retry_at

  def _poll_model(self, model):
    base = model.config.base_path
    on_disk = {v: os.path.join(base, str(v)) for v in layout.list_versions(base)}
    if not on_disk and not model.reported_empty:
      log.warning("model %s: no version directory under %s yet", model.config.name, base)
    model.reported_empty = not on_disk
    now = time.monotonic()
    for version in [v for v in model.failed if v not in on_disk]:
      del model.failed[version]
    due = {v for v, f in model.failed.items() if self._retryable(on_disk[v], f, now)}
    usable = [v for v in on_disk if v not in model.failed or v in due]
    for version in sorted(self._aspired(model, usable) - set(model.servables), reverse=True):
      self._load(model, version, on_disk[version])
    aspired = self._aspired(model, [v for v in on_disk if v not in model.failed])
    stale = [v for v in model.servables if v not in aspired]
    if stale and not (aspired & set(model.servables)) and any(v in on_disk for v in stale):
      stale = []  # Availability first: keep what serves until something replaces it.
    if stale:
      self._unload(model, stale)

  def _unload(self, model, versions):
    with self._lock:
      gone = [model.servables[v] for v in versions]
      model.servables = {v: s for v, s in model.servables.items() if v not in versions}
      for v in versions:
        model.states[v] = (STATE_END, grpc.StatusCode.OK, "")
    for servable in gone:
      servable.close()
    del gone
    _release_freed_memory()
    log.info("model %s: unloaded version(s) %s", model.config.name, sorted(versions))

  def _load(self, model, version, path):
    name = model.config.name
    previous = model.failed.get(version)
    stamp = _stamp(path)
    attempts = 1 if previous is None or previous.stamp != stamp else previous.attempts + 1
    with self._lock:
      model.states[version] = (STATE_LOADING, grpc.StatusCode.OK, "")
    start = time.time()
    servable = None
    try:
      servable = servable_lib.Servable(name, version, path, self._max_batch_size,
                                       tags=self._tags, batching=self._batching,
                                       detector=self.detector)
      replayed = (servable.warmup(self._warmup_iterations) if self._enable_warmup else 0)
    except Exception as e:  # A broken version is reported; it must not take the server down.
      if servable is not None:
        servable.close()
      code = e.code if isinstance(e, errors.ServingError) else servable_lib.status_code_of(e)
      if code == grpc.StatusCode.INTERNAL and not isinstance(e, errors.ServingError):
        code = grpc.StatusCode.UNKNOWN
      left = self._max_retries - attempts + 1
      retry = (f"; retry {attempts} of {self._max_retries} in {self._retry_interval:g}s"
               if left > 0 else "; no retry left (it is retried when its files change)")
      message = f"failed to load {path}: {type(e).__name__}: {e}"
      with self._lock:
        model.failed[version] = _Failure(stamp, attempts, time.monotonic() + self._retry_interval)
        model.states[version] = (STATE_END, code, message)
      log.error("model %s version %d: %s%s", name, version, message, retry)
      return
    with self._lock:
      model.failed.pop(version, None)
      servables = dict(model.servables)
      servables[version] = servable
      model.servables = servables
      model.states[version] = (STATE_AVAILABLE, grpc.StatusCode.OK, "")
    # TF and the loaded graph are hundreds of thousands of long-lived objects; left in the
    # collected generations, every full GC pass (triggered by the lists a JSON request builds)
    # rescans them and stalls a request for ~200 ms. Freezing moves them out of the GC's way;
    # `_release_freed_memory` unfreezes for the one collection that reclaims an unloaded version.
    gc.freeze()
    log.info("model %s: version %d available (%.1fs, %d warmup request(s))", name, version,
             time.time() - start, replayed)

  # -- lookups for requests --------------------------------------------------------------------

  def _model(self, name):
    if not name:
      raise errors.invalid(f"model_spec.name is empty; served models: {self.model_names}")
    model = self._models.get(name)
    if model is None:
      raise errors.not_found(f"model `{name}` is not served here; served models: "
                             f"{self.model_names}")
    return model

  def resolve(self, name, version=None, label=None):
    """The servable for a ModelSpec: a version, a label, or (default) the highest loaded one."""
    model = self._model(name)
    servables = model.servables
    if label:
      if label not in model.config.version_labels:
        raise errors.invalid(f"unknown version label `{label}` for model `{name}`; labels: "
                             f"{sorted(model.config.version_labels)}")
      version = model.config.version_labels[label]
    if version is not None:
      if version not in servables:
        raise errors.not_found(f"version {version} of model `{name}` is not available; "
                               f"available versions: {sorted(servables)}")
      return servables[version]
    if not servables:
      detail = "; ".join(msg for _, (state, code, msg) in sorted(model.states.items())
                         if code != grpc.StatusCode.OK)
      raise errors.not_found(
          f"model `{name}` has no available version under {model.config.base_path}"
          + (f" ({detail})" if detail else ""))
    return servables[max(servables)]

  def status(self, name, version=None):
    """[(version, state, code, message)] as for GetModelStatus, newest first."""
    model = self._model(name)
    with self._lock:
      states = dict(model.states)
    if version is not None:
      if version not in states:
        raise errors.not_found(f"could not find version {version} of model `{name}`")
      return [(version, *states[version])]
    if not states:
      raise errors.not_found(f"could not find any version of model `{name}` under "
                             f"{model.config.base_path}")
    return [(v, *states[v]) for v in sorted(states, reverse=True)]
