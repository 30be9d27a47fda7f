"""Serving under load and hostile traffic: `python -m pipelines.benchmark serving`.

A LeNet-like classifier (untrained: latency does not depend on the weights) is exported with
serving.export and served by `serving.server` in subprocesses on loopback. One run measures, side
by side on the same machine:

- overhead: batch-1 gRPC p50 of one client against the same SavedModel called in-process
  (goal: within 2 ms);
- batching: 16 concurrent batch-1 gRPC clients against a server without and one with
  `--enable_batching`, running side by side and measured in alternating rounds (goal: median
  throughput ratio at least 2x, median p99 no worse);
- hostile bodies: batch-1 gRPC latency of one client alone, then while another client sends
  64 MiB JSON bodies in a loop (goal: p99 within 50 ms of the unloaded p99, server memory under
  1.5x its idle size);
- idle connections: 64 idle REST connections open, then fresh REST requests (goal: each answered
  within 100 ms);
- version swaps: 50 versions pushed while clients send requests (goal: 0 failed requests, server
  memory growth under 20 MB).

Every client loop is bounded in count and in time; all traffic stays on 127.0.0.1.
"""
import gc
import logging
import os
import shutil
import socket
import tempfile
import threading
import time

import numpy as np

log = logging.getLogger("pipelines.benchmarks.serving")

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
OVERHEAD_GOAL_MS = 2.0
BATCHING_SPEEDUP_GOAL = 2.0
HOSTILE_P99_GOAL_MS = 50.0
HOSTILE_MEMORY_GOAL = 1.5
IDLE_CONNECTIONS = 64
IDLE_GOAL_MS = 100.0
SWAP_GROWTH_GOAL_MB = 20.0
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


def _images(dataset, n, seed):
  """Test images of `dataset` when the loader has them at 28x28x1, else uniform noise."""
  try:
    from lad_tf import datasets
    x = np.asarray(datasets.load(dataset).test.x[:n], dtype=np.float32)
    if x.shape[1:] == INPUT_SHAPE and len(x) >= 32:
      return x, f"{dataset} test split"
  except Exception as e:  # pylint: disable=broad-except  Latency needs no real data.
    log.info("benchmark uses random images (%s)", e)
  return np.random.default_rng(seed).random((n, *INPUT_SHAPE), dtype=np.float32), "uniform random"


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


def _start_server(base, workdir, tag, flags=()):
  from serving import launch

  server = launch.ServerProcess(base, model_name="bench", poll_seconds=0.2,
                                log_path=f"{workdir}/server-{tag}.log", extra_flags=list(flags))
  return server.start()


def batching_goal(base, workdir, images, seconds, clients=16, rounds=3):
  """16 batch-1 gRPC clients against a server without and one with --enable_batching.

  Both servers run side by side and are measured in alternation (`rounds` times each, the order
  swapped every round) so that the shared machine's load drifts over both alike; the goal is
  judged on the median of the rounds' throughput ratios and the median p99s.
  """
  params = f"{workdir}/batching.config"
  with open(params, "w") as f:
    f.write(f"max_batch_size {{ value: {clients} }}\n"
            "batch_timeout_micros { value: 1000 }\n"
            "num_batch_threads { value: 1 }\n"
            "max_enqueued_batches { value: 64 }\n")
  figures = {"clients": clients, "rounds": rounds,
             "batching_parameters": open(params).read().strip()}
  configs = {"unbatched": [],
             "batched": ["--enable_batching", f"--batching_parameters_file={params}"]}
  servers = {}
  runs = {tag: [] for tag in configs}
  try:
    for tag, flags in configs.items():
      servers[tag] = _start_server(base, workdir, tag, flags)
    for k in range(rounds):
      for tag in (list(configs) if k % 2 == 0 else list(configs)[::-1]):
        runs[tag].append(load(servers[tag].grpc_address, rest=False, images=images,
                              batch_size=1, clients=clients, seconds=seconds,
                              model_name="bench"))
        log.info("batching round %d %s: %s", k, tag, runs[tag][-1])
  finally:
    for server in servers.values():
      server.stop()
  for tag in configs:
    with open(f"{workdir}/server-{tag}.log") as f:
      merged = [line.split(": ", 2)[-1].strip() for line in f
                if "model calls" in line and "serving_default" in line]
    figures[tag] = {
        "requests_per_s_median": float(np.median([r["requests_per_s"] for r in runs[tag]])),
        "p99_ms_median": float(np.median([r["p99_ms"] for r in runs[tag]])),
        "errors": sum(r["errors"] for r in runs[tag]),
        "rounds": runs[tag]}
    if merged:
      figures[tag]["batches"] = merged[-1]
  ratios = [b["requests_per_s"] / max(u["requests_per_s"], 1e-9)
            for u, b in zip(runs["unbatched"], runs["batched"])]
  speedup = float(np.median(ratios))
  figures["speedup_by_round"] = ratios
  figures["speedup"] = speedup
  figures["goal"] = (f"throughput >= {BATCHING_SPEEDUP_GOAL}x without batching, at a p99 no "
                     "worse (medians over the rounds)")
  figures["goal_met"] = bool(
      speedup >= BATCHING_SPEEDUP_GOAL and figures["batched"]["errors"] == 0 and
      figures["batched"]["p99_ms_median"] <= figures["unbatched"]["p99_ms_median"])
  return figures


def hostile_goal(server, images, seconds, body_bytes=64 << 20):
  """Batch-1 gRPC latency alone, then while a client sends `body_bytes` JSON bodies in a loop."""
  pid = server.process.pid
  gc.collect()
  idle_mb = _rss_mb(pid)
  alone = load(server.grpc_address, rest=False, images=images, batch_size=1, clients=1,
               seconds=seconds, model_name="bench")
  import multiprocessing

  context = multiprocessing.get_context("spawn")
  stop, started, answers = context.Event(), context.Event(), context.Queue()
  # Valid numbers, within --max_request_bytes, far more rows than the batch limit.
  attacker = context.Process(target=_hostile_process, args=(
      server.rest_address, body_bytes - 4096, seconds + 60, stop, started, answers),
      daemon=True)
  result = {}
  with _MemorySampler(pid) as memory:
    attacker.start()
    started.wait(120)  # Until the attacker's first body is on the wire.
    loaded = load(server.grpc_address, rest=False, images=images, batch_size=1, clients=1,
                  seconds=seconds, model_name="bench")
    stop.set()
    try:
      result = dict(zip(("statuses", "bytes_sent"), answers.get(timeout=60)))
    except Exception:  # pylint: disable=broad-except  Reported as missing, never fatal.
      pass
    attacker.join(30)
  extra = loaded["p99_ms"] - alone["p99_ms"]
  ratio = memory.peak_mb / idle_mb
  return {
      "body_mb": body_bytes / 2**20, "hostile_answers": result.get("statuses", {}),
      "hostile_mb_sent": result.get("bytes_sent", 0) / 2**20,
      "alone": alone, "under_hostile_bodies": loaded, "p99_extra_ms": extra,
      "server_idle_mb": idle_mb, "server_peak_mb": memory.peak_mb, "memory_ratio": ratio,
      "goal": f"p99 within {HOSTILE_P99_GOAL_MS:g} ms of unloaded, memory < "
              f"{HOSTILE_MEMORY_GOAL}x idle",
      "goal_met": bool(extra < HOSTILE_P99_GOAL_MS and ratio < HOSTILE_MEMORY_GOAL
                       and loaded["errors"] == 0),
  }


def idle_goal(server, images, requests=20):
  """Fresh REST requests (new connection each) while IDLE_CONNECTIONS connections sit idle."""
  from serving import client as client_lib

  host, port = server.rest_address.rsplit(":", 1)
  idle = [socket.create_connection((host, int(port)), timeout=10)
          for _ in range(IDLE_CONNECTIONS)]
  latencies, errors = [], 0
  try:
    time.sleep(0.5)
    for i in range(requests):
      with client_lib.PredictClient(server.rest_address, model_name="bench", rest=True,
                                    timeout=10) as fresh:
        t = time.perf_counter()
        try:
          fresh.predict(images[i:i + 1])
          latencies.append(time.perf_counter() - t)
        except Exception:  # pylint: disable=broad-except  Counted.
          errors += 1
  finally:
    for sock in idle:
      sock.close()
  lat_ms = np.asarray(latencies) * 1e3
  worst = float(lat_ms.max()) if len(lat_ms) else float("nan")
  return {"idle_connections": IDLE_CONNECTIONS, "requests": requests, "errors": errors,
          "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else float("nan"),
          "max_ms": worst, "goal": f"every new request answered within {IDLE_GOAL_MS:g} ms",
          "goal_met": bool(errors == 0 and worst < IDLE_GOAL_MS)}


def swap_goal(server, base, sources, images, swaps=50, clients=2, timeout_per_swap=120.0):
  """Push `swaps` versions (copies of `sources`, alternating) while clients send requests."""
  from serving import client as client_lib

  pid = server.process.pid
  stop = threading.Event()
  results = {}

  def run_load(tag, rest, address):
    results[tag] = load(address, rest=rest, images=images, batch_size=1, clients=clients,
                        seconds=swaps * timeout_per_swap, model_name="bench", stop=stop)

  loaders = [threading.Thread(target=run_load, args=("grpc", False, server.grpc_address),
                              daemon=True),
             threading.Thread(target=run_load, args=("rest", True, server.rest_address),
                              daemon=True)]
  status = client_lib.PredictClient(server.grpc_address, model_name="bench", timeout=10)
  states = lambda: {s["version"]: s["state"] for s in status.status()}
  current = max(states())
  for t in loaders:
    t.start()
  time.sleep(3.0)  # Connections, threads and buffers of the load are in place.
  before_mb = _rss_mb(pid)
  rss_by_swap = []
  start = time.monotonic()
  done = 0
  try:
    for k in range(swaps):
      new = current + 1
      tmp = os.path.join(base, f".tmp-{new}")
      shutil.copytree(sources[k % len(sources)], tmp)
      os.rename(tmp, os.path.join(base, str(new)))
      deadline = time.monotonic() + timeout_per_swap
      while time.monotonic() < deadline:
        s = states()
        if s.get(new) == "AVAILABLE" and s.get(current) == "END":
          break
        time.sleep(0.1)
      else:
        raise TimeoutError(f"version {new} did not replace {current} in {timeout_per_swap}s")
      shutil.rmtree(os.path.join(base, str(current)))
      current = new
      done += 1
      rss_by_swap.append(round(_rss_mb(pid), 1))
  finally:
    stop.set()
    for t in loaders:
      t.join(60)
    status.close()
  elapsed = time.monotonic() - start
  after_mb = _rss_mb(pid)
  failed = sum(r.get("errors", 0) for r in results.values())
  growth = after_mb - before_mb
  return {"swaps": done, "seconds": elapsed, "requests": {k: v for k, v in results.items()},
          "failed_requests": failed, "server_mb_before": before_mb, "server_mb_after": after_mb,
          "growth_mb": growth, "server_mb_after_each_swap": rss_by_swap,
          "goal": f"0 failed requests, memory growth < {SWAP_GROWTH_GOAL_MB:g} MB",
          "goal_met": bool(done == swaps and failed == 0 and growth < SWAP_GROWTH_GOAL_MB)}


def run(dataset="fashion_mnist", n=0, seed=0, seconds=8.0, swaps=50, rounds=3,
        goals="overhead+batching+hostile+idle+swaps"):
  """Figures for every goal; each section holds its own figures, its goal and `goal_met`.

  goals: the sections to run, '+'-separated (e.g. --set=goals=batching+idle); all by default.
  rounds: alternating measurements of each batching configuration.
  """
  goals = goals.split("+") if isinstance(goals, str) else list(goals)
  unknown = set(goals) - {"overhead", "batching", "hostile", "idle", "swaps"}
  if unknown:
    raise ValueError(f"unknown goals {sorted(unknown)}; choose among overhead, batching, "
                     "hostile, idle, swaps")
  from serving import export
  from serving import testing

  n = n or 256
  images, source = _images(dataset, max(n, 32), seed)
  workdir = tempfile.mkdtemp(prefix="lad-serving-bench-")
  figures = {"images": source, "seconds_per_measure": seconds}
  try:
    exports = f"{workdir}/exports"
    models = [testing.lenet_like(INPUT_SHAPE, NUM_CLASSES, seed=seed + k) for k in range(2)]
    figures["model"] = models[0].name
    dirs = [export.export_classifier(m, exports, sample_images=images[:32], model_name="bench")
            for m in models]
    base = f"{workdir}/served"
    os.makedirs(base)
    shutil.copytree(dirs[0], f"{base}/1")
    gc.freeze()  # Keep full GC passes over TF's objects out of the client-side latencies.
    if "overhead" in goals:
      floor = in_process(dirs[0], images, 1, seconds / 2)
    if "batching" in goals:
      figures["batching"] = batching_goal(base, workdir, images, seconds, rounds=int(rounds))
      log.info("batching: %s", figures["batching"])
    server = _start_server(base, workdir, "main")
    try:
      if "overhead" in goals:
        single = load(server.grpc_address, rest=False, images=images, batch_size=1, clients=1,
                      seconds=seconds / 2, model_name="bench")
        overhead = single["p50_ms"] - floor["p50_ms"]
        figures["overhead"] = {"in_process_batch_1": floor, "grpc_1_client_batch_1": single,
                               "grpc_batch_1_p50_overhead_ms": overhead,
                               "goal": f"p50 overhead <= {OVERHEAD_GOAL_MS:g} ms",
                               "goal_met": bool(overhead <= OVERHEAD_GOAL_MS)}
      if "hostile" in goals:
        figures["hostile_bodies"] = hostile_goal(server, images, seconds)
        log.info("hostile: %s", figures["hostile_bodies"])
      if "idle" in goals:
        figures["idle_connections"] = idle_goal(server, images)
      if "swaps" in goals:
        figures["version_swaps"] = swap_goal(server, base, dirs, images, swaps=swaps)
      figures["server_alive_after"] = server.alive()
    finally:
      server.stop()
    figures["all_goals_met"] = all(v.get("goal_met", True) for v in figures.values()
                                   if isinstance(v, dict))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return figures
