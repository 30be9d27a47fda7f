"""The serving benchmark's traffic and what it measures of it: clients that send requests for a bounded
time (pipelines.benchmarks.serving's goals run them), the in-process floor, the hostile client that
posts huge bodies, and the server's resident memory."""
import socket
import threading
import time

import numpy as np

MAX_REQUESTS_PER_CLIENT = 200_000  # Bounds every loop even if the clock misbehaves.


def _latency_figures(latencies_s, errors, elapsed_s, batch_size):
  lat_ms = np.asarray(latencies_s) * 1e3
  done = len(lat_ms)
  return {
      "requests": done,
      "errors": int(errors),
      "requests_per_s": done / elapsed_s if elapsed_s > 0 else 0.0,
      "images_per_s": done * batch_size / elapsed_s if elapsed_s > 0 else 0.0,
      "p50_ms": float(np.percentile(lat_ms, 50)) if done else float("nan"),
      "p99_ms": float(np.percentile(lat_ms, 99)) if done else float("nan"),
  }


def in_process(version_dir, images, batch_size, seconds):
  """The SavedModel's serving_default called in this process: the floor for served latency."""
  import tensorflow as tf

  fn = tf.saved_model.load(version_dir).signatures["serving_default"]
  batches = [images[i:i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]
  for b in batches[:5]:
    fn(images=tf.constant(b))
  latencies = []
  start = time.perf_counter()
  deadline = start + seconds
  i = 0
  while time.perf_counter() < deadline and i < MAX_REQUESTS_PER_CLIENT:
    t = time.perf_counter()
    out = fn(images=tf.constant(batches[i % len(batches)]))
    out["probabilities"].numpy(), out["classes"].numpy()
    latencies.append(time.perf_counter() - t)
    i += 1
  return _latency_figures(latencies, 0, time.perf_counter() - start, batch_size)


def load(address, *, rest, images, batch_size, clients, seconds, model_name, stop=None,
         client_id_prefix=None):
  """`clients` threads, each with its own connection, sending requests for `seconds`.

  stop: an optional threading.Event that ends the run early (the deadline still bounds it).
  client_id_prefix: each thread names itself PREFIX-K (x-client-id), as behind a gateway.
  """
  from serving import client as client_lib

  latencies, errors, messages = [], [0], []
  lock = threading.Lock()
  barrier = threading.Barrier(clients + 1)
  go = threading.Event()
  deadline = [0.0]
  batches = [images[i:i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]

  def worker(index):
    local, local_errors = [], 0
    client_id = f"{client_id_prefix}-{index}" if client_id_prefix else None
    with client_lib.PredictClient(address, model_name=model_name, rest=rest, timeout=30.0,
                                  client_id=client_id) as client:
      for b in batches[:2]:  # Connect and warm the connection before the clock starts.
        try:
          client.predict(b)
        except client_lib.RequestError:
          pass
      barrier.wait()
      go.wait()
      i = index
      while (time.perf_counter() < deadline[0] and len(local) < MAX_REQUESTS_PER_CLIENT
             and not (stop is not None and stop.is_set())):
        t = time.perf_counter()
        try:
          client.predict(batches[i % len(batches)])
          local.append(time.perf_counter() - t)
        except Exception as e:  # pylint: disable=broad-except  Counted, never fatal here.
          local_errors += 1
          if len(messages) < 5:
            messages.append(str(e)[:200])
        i += clients
    with lock:
      latencies.extend(local)
      errors[0] += local_errors

  threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
  for t in threads:
    t.start()
  barrier.wait()
  start = time.perf_counter()
  deadline[0] = start + seconds
  go.set()
  for t in threads:
    t.join(seconds + 60)
  figures = _latency_figures(latencies, errors[0], time.perf_counter() - start, batch_size)
  if messages:
    figures["error_examples"] = messages
  return figures


class _MemorySampler:
  """Samples a process's RSS every `interval` s on a thread; `.peak_mb`, `.last_mb`."""

  def __init__(self, pid, interval=0.05):
    self._pid = pid
    self._interval = interval
    self._stop = threading.Event()
    self.peak_mb = self.last_mb = _rss_mb(pid)
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.wait(self._interval):
      self.last_mb = _rss_mb(self._pid)
      self.peak_mb = max(self.peak_mb, self.last_mb)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(5)


def _rss_mb(pid):
  from serving import launch
  return launch.process_rss_mb(pid)


def _numbers_body(size, row_values=784):
  """A JSON predict body of about `size` bytes: valid numbers, far more rows than any batch."""
  unit = "[" + ", ".join(["0.5"] * row_values) + "], "
  count = max(1, size // len(unit) - 1)
  return ('{"instances": [' + unit * count + unit[:-2] + "]}").encode()


def _hostile_process(address, body_bytes, seconds, stop, started, answers):
  """In its own process (so it does not share the measuring client's interpreter lock)."""
  body = _numbers_body(body_bytes)
  answers.put(_hostile_client(address, body, stop, seconds, started))


def _hostile_client(address, body, stop, seconds, started=None):
  """POST `body` in a loop over fresh connections; returns {status: count}, bytes sent."""
  host, port = address.rsplit(":", 1)
  head = (f"POST /v1/models/bench:predict HTTP/1.1\r\nHost: {host}\r\n"
          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
  statuses, sent = {}, 0
  deadline = time.monotonic() + seconds
  view = memoryview(body)
  for _ in range(10_000):
    if stop.is_set() or time.monotonic() > deadline:
      break
    try:
      with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        if started is not None:
          started.set()
        try:
          sock.sendall(view)
          sent += len(body)
        except OSError:
          pass  # The server refused early and closed: its answer is still readable.
        answer = sock.recv(4096)
      status = answer.split(b" ", 2)[1].decode() if answer else "closed"
    except OSError as e:
      status = type(e).__name__
    statuses[status] = statuses.get(status, 0) + 1
  return statuses, sent
