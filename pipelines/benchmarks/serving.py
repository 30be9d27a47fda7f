"""Serving load figures: `python -m pipelines.benchmark serving`.

A LeNet-like classifier (untrained: latency does not depend on the weights) is exported with
serving.export and served by `serving.server` in a subprocess on loopback. K client threads send
requests for T seconds per configuration (gRPC and REST, batch 1 and batch 32) and the suite
reports requests/s, p50/p99 latency and errors, next to the same SavedModel called in-process;
the overhead goal is batch-1 gRPC p50 within 2 ms of the in-process call (one client, no queue).
"""
import gc
import logging
import shutil
import tempfile
import threading
import time

import numpy as np

log = logging.getLogger("pipelines.benchmarks.serving")

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
OVERHEAD_GOAL_MS = 2.0
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


def load(address, *, rest, images, batch_size, clients, seconds, model_name):
  """`clients` threads, each with its own connection, sending requests for `seconds`."""
  from serving import client as client_lib

  latencies, errors = [], [0]
  lock = threading.Lock()
  barrier = threading.Barrier(clients + 1)
  go = threading.Event()
  deadline = [0.0]
  batches = [images[i:i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]

  def worker(index):
    local, local_errors = [], 0
    with client_lib.PredictClient(address, model_name=model_name, rest=rest,
                                  timeout=30.0) as client:
      for b in batches[:2]:  # Connect and warm the connection before the clock starts.
        try:
          client.predict(b)
        except client_lib.RequestError:
          pass
      barrier.wait()
      go.wait()
      i = index
      while time.perf_counter() < deadline[0] and len(local) < MAX_REQUESTS_PER_CLIENT:
        t = time.perf_counter()
        try:
          client.predict(batches[i % len(batches)])
          local.append(time.perf_counter() - t)
        except Exception:  # pylint: disable=broad-except  Counted, never fatal to the benchmark.
          local_errors += 1
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
  return _latency_figures(latencies, errors[0], time.perf_counter() - start, batch_size)


def run(dataset="fashion_mnist", n=0, seed=0, seconds=5.0, clients=4, batch_sizes=(1, 32)):
  """Figures for every (protocol, batch size), the in-process floor and the overhead verdict."""
  from serving import export
  from serving import launch
  from serving import testing

  n = n or 256
  images, source = _images(dataset, max(n, max(batch_sizes)), seed)
  model = testing.lenet_like(INPUT_SHAPE, NUM_CLASSES, seed=seed)
  workdir = tempfile.mkdtemp(prefix="lad-serving-bench-")
  figures = {"model": model.name, "images": source, "clients": clients,
             "seconds_per_configuration": seconds}
  try:
    base = f"{workdir}/model"
    version_dir = export.export_classifier(model, base, sample_images=images[:32],
                                           model_name="bench")
    gc.freeze()  # Keep full GC passes over TF's objects out of the client-side latencies.
    figures["in_process"] = {f"batch_{b}": in_process(version_dir, images, b, seconds / 2)
                             for b in batch_sizes}
    server = launch.ServerProcess(
        base, model_name="bench", poll_seconds=5.0, log_path=f"{workdir}/server.log",
        extra_flags=[f"--max_batch_size={max(batch_sizes)}"])
    with server:
      single = load(server.grpc_address, rest=False, images=images, batch_size=1, clients=1,
                    seconds=seconds, model_name="bench")
      figures["grpc_single_client"] = {"batch_1": single}
      for protocol, address in (("grpc", server.grpc_address), ("rest", server.rest_address)):
        figures[protocol] = {
            f"batch_{b}": load(address, rest=protocol == "rest", images=images, batch_size=b,
                               clients=clients, seconds=seconds, model_name="bench")
            for b in batch_sizes}
      figures["server_alive_after"] = server.alive()
    floor = figures["in_process"].get("batch_1", {}).get("p50_ms", float("nan"))
    overhead = single["p50_ms"] - floor
    figures["overhead"] = {"grpc_batch_1_p50_ms": overhead, "goal_ms": OVERHEAD_GOAL_MS,
                           "goal_met": bool(overhead <= OVERHEAD_GOAL_MS)}
    figures["errors_total"] = single["errors"] + sum(
        v["errors"] for p in ("grpc", "rest") for v in figures[p].values())
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return figures
