"""Progress lines with an estimate of the time left, for the long loops (training, prediction).

A full-size SVHN run trains for hours on two CPU cores; one line per epoch (Keras' verbose=2) says
nothing for 15 to 40 minutes. `Progress` is a Keras callback that logs, every `every_s` seconds and
at the end, where a loop is (epoch, batch, share of the whole stage done), its speed (batches/s, and
images/s when the batch size is known) and the time left. The rate leaves out the first batch, which
holds the tracing/compilation. `execution.Training` adds one to every training stage; `predict`
loops take one through `callbacks=`.
"""
import logging
import math
import time

import keras

log = logging.getLogger("lad_tf")


def duration(seconds):
  """'1h02m', '3m05s', '12s': a short human reading of a duration."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Progress(keras.callbacks.Callback):
  """Logs `name: epoch e/E, batch b/B (p% of the stage), r batch/s [, i images/s], t elapsed, about
  T left` every `every_s` seconds, for training (`fit`) and prediction (`predict`) loops.

  Args:
    name: what the lines call the loop (the stage).
    every_s: seconds between two lines (0: every batch).
    batch_size: images per batch, to also report images/s (None: batches/s only).
    steps: batches per epoch when Keras does not know them (a dataset of unknown cardinality);
      Keras' own count (params["steps"]) wins when it has one.
    say: callable(str) receiving each line (default: the "lad_tf" logger at INFO). A loop that ends
      before its first line says nothing; one that printed lines ends with a "done" line.
    clock: callable() -> seconds (tests pass a fake clock).
  """

  def __init__(self, name, every_s=10.0, batch_size=None, steps=None, say=None, clock=time.monotonic):
    super().__init__()
    self.name, self.every_s, self.batch_size, self.steps = name, every_s, batch_size, steps
    self.say = say or log.info
    self.clock = clock
    self.lines = 0

  # -- Keras hooks ----------------------------------------------------------------------------
  def on_train_begin(self, logs=None):
    self._begin(self.params.get("epochs", 1))

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch
    if self.first_epoch is None:
      self.first_epoch = epoch  # a resumed run starts past 0

  def on_train_batch_end(self, batch, logs=None):
    self._batch_done(batch)

  def on_epoch_end(self, epoch, logs=None):
    if self.steps_known is None:
      self.steps_known = self.last_batch + 1  # learnt from the first epoch

  def on_train_end(self, logs=None):
    self._report(final=True)

  def on_predict_begin(self, logs=None):
    self._begin(1)
    self.epoch = self.first_epoch = 0

  def on_predict_batch_end(self, batch, logs=None):
    self._batch_done(batch)

  def on_predict_end(self, logs=None):
    self._report(final=True)

  # -- the counting -----------------------------------------------------------------------------
  def _begin(self, epochs):
    self.epochs = int(epochs or 1)
    params = getattr(self, "params", None) or {}
    self.steps_known = params.get("steps") or self.steps
    self.first_epoch, self.epoch, self.last_batch = None, 0, -1
    self.start = self.clock()
    self.after_first = None  # (time, batches done) once the first batch is over
    self.done = 0
    self.last_line = self.start

  def _batch_done(self, batch):
    now = self.clock()
    self.last_batch = batch
    self.done += 1
    if self.after_first is None:
      self.after_first = (now, self.done)
    if now - self.last_line >= self.every_s:
      self.last_line = now
      self._report(now=now)

  def rate(self, now):
    """Batches per second since the end of the first batch (None before a second one)."""
    if self.after_first is None or self.done <= self.after_first[1] or now <= self.after_first[0]:
      return None
    return (self.done - self.after_first[1]) / (now - self.after_first[0])

  def remaining_batches(self):
    """Batches left in the whole loop (None while the batches per epoch are unknown)."""
    if not self.steps_known:
      return None
    epochs_after = self.epochs - self.epoch - 1
    return max(self.steps_known - self.last_batch - 1, 0) + epochs_after * self.steps_known

  def _report(self, now=None, final=False):
    if self.done == 0 or (final and not self.lines):
      return  # a loop shorter than every_s stays silent
    now = self.clock() if now is None else now
    elapsed = now - self.start
    rate = self.rate(now)
    parts = []
    if self.epochs > 1:
      parts.append(f"epoch {self.epoch + 1}/{self.epochs}")
    steps = f"/{self.steps_known}" if self.steps_known else ""
    parts.append(f"batch {self.last_batch + 1}{steps}")
    left = self.remaining_batches()
    if left is not None and not final:
      first = self.first_epoch or 0
      total = (self.epochs - first) * self.steps_known
      parts[-1] += f" ({100.0 * (total - left) / max(total, 1):.0f}% of {self.name})"
    if rate:
      speed = f"{rate:.2f} batch/s"
      if self.batch_size:
        speed += f", {rate * self.batch_size:.0f} images/s"
      parts.append(speed)
    parts.append(f"{duration(elapsed)} elapsed")
    if final:
      parts.append("done")
    elif left is not None and rate:
      parts.append(f"about {duration(left / rate)} left")
    self.lines += 1
    self.say(f"{self.name}: " + ", ".join(parts))


class StepTimer(keras.callbacks.Callback):
  """Records the wall clock and this process's CPU time (all threads) at the end of every training or
  prediction batch: `seconds_per_batch()` and `cpu_seconds_per_batch()` are means over the batches
  after the first (which holds the tracing/compilation). On a shared machine the CPU time varies less
  with the other processes' load than the wall time."""

  def __init__(self, clock=time.perf_counter, cpu_clock=time.process_time):
    super().__init__()
    self.clock, self.cpu_clock, self.ends, self.cpu_ends = clock, cpu_clock, [], []

  def on_train_batch_end(self, batch, logs=None):
    self.ends.append(self.clock())
    self.cpu_ends.append(self.cpu_clock())

  on_predict_batch_end = on_train_batch_end
  on_test_batch_end = on_train_batch_end

  @staticmethod
  def _per_batch(ends):
    if len(ends) < 2:
      raise ValueError(f"timing needs at least 2 batches (the first holds the compilation), got {len(ends)}")
    return (ends[-1] - ends[0]) / (len(ends) - 1)

  def seconds_per_batch(self):
    return self._per_batch(self.ends)

  def cpu_seconds_per_batch(self):
    return self._per_batch(self.cpu_ends)
