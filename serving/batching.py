"""Server-side batching as TF Serving's BasicBatchScheduler: concurrent requests, one model call.

A request (a task) joins the queue of its signature; a batch thread takes the oldest task, waits
up to `batch_timeout_micros` for more until `max_batch_size` rows are queued, concatenates the
tasks that fit, calls the model once and hands each task its slice of the outputs. A task above
`max_batch_size` rows is refused with INVALID_ARGUMENT and a full queue (`max_enqueued_batches`
batches of `max_batch_size` rows) with UNAVAILABLE, with TF Serving's messages.
"""
import collections
import logging
import threading
import time

import grpc
import numpy as np

from serving import errors

log = logging.getLogger(__name__)


class _Task:
  __slots__ = ("arrays", "rows", "shapes", "enqueued", "done", "result", "error")

  def __init__(self, arrays):
    self.arrays = arrays
    self.rows = next((a.shape[0] for a in arrays.values() if a.ndim), 1)
    self.shapes = tuple(sorted((k, a.shape[1:], a.dtype.str) for k, a in arrays.items()))
    self.enqueued = time.monotonic()
    self.done = threading.Event()
    self.result = self.error = None


class BatchScheduler:
  """Merges concurrent `submit` calls into calls of `fn` ({input: array} -> {output: array})."""

  def __init__(self, fn, config, name="batch"):
    self._fn = fn
    self._name = name
    self._config = config
    self._max_rows = config.max_batch_size
    self._timeout = config.batch_timeout_micros / 1e6
    self._capacity = config.max_enqueued_batches * config.max_batch_size
    self._queue = collections.deque()
    self._queued_rows = 0
    self._cond = threading.Condition()
    self._stopped = False
    self.calls = 0  # Model calls made (each may serve several tasks).
    self.tasks = 0
    self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                     for i in range(config.num_batch_threads)]
    for t in self._threads:
      t.start()

  def submit(self, arrays):
    """Run `arrays` (one request) as part of a batch; blocks until its outputs are ready."""
    task = _Task(arrays)
    if task.rows > self._max_rows:
      raise errors.invalid(f"Task size {task.rows} is larger than maximum input batch size "
                           f"{self._max_rows}; split the request")
    with self._cond:
      stopped = self._stopped
      if not stopped and self._queued_rows + task.rows > self._capacity:
        raise errors.ServingError(
            grpc.StatusCode.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full; retry later "
            "or raise max_enqueued_batches")
      if not stopped:
        self._queue.append(task)
        self._queued_rows += task.rows
        self._cond.notify()
    if stopped:  # The version was unloaded after this request picked it: finish it alone.
      return self._fn(arrays)
    task.done.wait()
    if task.error is not None:
      raise task.error
    return task.result

  def stop(self):
    """Finish the queued tasks, then end the threads."""
    with self._cond:
      self._stopped = True
      self._cond.notify_all()
    for t in self._threads:
      if t is not threading.current_thread():
        t.join(timeout=10)
    if self.calls:
      log.info("%s: %d requests in %d model calls (%.1f per call)", self._name, self.tasks,
               self.calls, self.tasks / self.calls)

  def _take_batch(self):
    """Under the lock: wait for a full batch or the timeout; pop the tasks that fit."""
    while not self._queue:
      if self._stopped:
        return None
      self._cond.wait()
    deadline = self._queue[0].enqueued + self._timeout
    while self._queued_rows < self._max_rows and not self._stopped:
      left = deadline - time.monotonic()
      if left <= 0 or not self._queue:
        break
      self._cond.wait(left)
    if not self._queue:
      return []
    first = self._queue.popleft()
    batch, rows, kept = [first], first.rows, collections.deque()
    while self._queue and rows < self._max_rows:
      task = self._queue.popleft()
      if task.shapes == first.shapes and rows + task.rows <= self._max_rows:
        batch.append(task)
        rows += task.rows
      else:
        kept.append(task)
    kept.extend(self._queue)
    self._queue = kept
    self._queued_rows -= rows
    if self._queue:
      self._cond.notify()  # Another batch thread can start on what is left.
    return batch

  def _loop(self):
    while True:
      with self._cond:
        batch = self._take_batch()
      if batch is None:
        return
      if batch:
        self._run(batch)

  def _padded_rows(self, rows):
    for size in self._config.allowed_batch_sizes:
      if size >= rows:
        return size
    return rows

  def _run(self, batch):
    rows = sum(t.rows for t in batch)
    target = self._padded_rows(rows)
    try:
      if len(batch) == 1 and target == rows:
        merged = batch[0].arrays
      else:
        merged = {}
        for key in batch[0].arrays:
          parts = [t.arrays[key] for t in batch]
          if target > rows:  # Pad to an allowed batch size with copies of the first row.
            parts.append(np.repeat(parts[0][:1], target - rows, axis=0))
          merged[key] = np.concatenate(parts, axis=0)
      outputs = self._fn(merged)
      self.calls += 1
      self.tasks += len(batch)
      start = 0
      for task in batch:
        end = start + task.rows
        task.result = {k: (v[start:end] if v.ndim and v.shape[0] == target else v)
                       for k, v in outputs.items()}
        start = end
    except errors.ServingError as e:
      for task in batch:
        task.error = e
    except Exception as e:  # pylint: disable=broad-except  Reported to every task of the batch.
      log.exception("batched call failed")
      for task in batch:
        task.error = errors.ServingError(grpc.StatusCode.INTERNAL,
                                         f"internal error: {type(e).__name__}: {e}")
    for task in batch:
      task.done.set()
