"""What the query detector costs the server: `python -m pipelines.benchmark service_cost
[--set=rounds=16,seconds=3,clients=16]`.

The cost part of service_attacks on its own, so that a change to the detector is measured in minutes.
One LeNet-5 (untrained: what a request costs does not depend on the weights) is exported and served
twice on loopback, detection off and on (`action: "log_and_reject"`, default parameters). `clients`
named clients send batch-1 gRPC requests of distinct test images for `seconds` to one server, then the
other, in alternating order, `rounds` times; clients and servers share the machine's cores. Per round:
requests per second, p50 / p99 latency, and the server's CPU time per request (its process and its
children). The goals are judged on the median of the per-pair figures (on against off of adjacent
rounds, seconds apart, so that slow drifts of a shared machine cancel) and on the ratio of the two
sides' medians: both must meet them.
"""
import os
import shutil
import tempfile

import numpy as np

from pipelines.benchmarks import service_traffic as traffic

THROUGHPUT_GOAL = 0.90  # requests per second with detection on, against off
P99_GOAL_MS = 2.0  # p99 latency added by detection


def measure(servers, x, seconds, rounds, clients=16, model_name="original"):
  """Alternating load rounds against servers {"off": ServerProcess, "on": ServerProcess}."""
  from serving import launch

  load_before = os.getloadavg()
  runs = {"off": [], "on": []}
  for k in range(rounds):
    for tag in (("off", "on") if k % 2 == 0 else ("on", "off")):
      pid = servers[tag].process.pid
      cpu = launch.process_cpu_seconds(pid)
      run = traffic.named_load(servers[tag].grpc_address, model_name, x, clients, seconds, f"load{k}-{tag}")
      run["server_cpu_us_per_request"] = (launch.process_cpu_seconds(pid) - cpu) / max(1, run["requests"]) * 1e6
      runs[tag].append(run)
  return {"clients": clients, "rounds": runs, **summary(runs),
          "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]}}


def summary(runs):
  """The medians of each side, the medians of the per-pair figures (round k on against round k off),
  and whether both meet the goals."""
  med = lambda tag, key: float(np.median([r[key] for r in runs[tag]]))
  pairs = list(zip(runs["on"], runs["off"]))
  paired_ratio = float(np.median([on["requests_per_s"] / off["requests_per_s"] for on, off in pairs]))
  paired_p99 = float(np.median([on["p99_ms"] - off["p99_ms"] for on, off in pairs]))
  out = {"throughput_ratio": med("on", "requests_per_s") / med("off", "requests_per_s"),
         "p50_ms": {t: med(t, "p50_ms") for t in runs}, "p99_ms": {t: med(t, "p99_ms") for t in runs},
         "p99_extra_ms": med("on", "p99_ms") - med("off", "p99_ms"),
         "paired": {"throughput_ratio": paired_ratio, "p99_extra_ms": paired_p99}}
  if all("server_cpu_us_per_request" in r for tag in runs for r in runs[tag]):
    out["server_cpu_us_per_request"] = {t: med(t, "server_cpu_us_per_request") for t in runs}
  out["goals_met"] = {
      "throughput_ratio": min(out["throughput_ratio"], paired_ratio) >= THROUGHPUT_GOAL,
      "p99_extra_ms": max(out["p99_extra_ms"], paired_p99) <= P99_GOAL_MS}
  return out


def run(dataset="fashion_mnist", n=0, seed=0, rounds=16, seconds=3.0, clients=16):
  import keras
  from lad_tf import models
  from lad_tf.data import datasets

  data = datasets.load(dataset)
  x = data.test.x[:n or len(data.test.x)].astype(np.float32)
  keras.utils.set_random_seed(seed)
  model = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  workdir = tempfile.mkdtemp(prefix="lad-service-cost-")
  try:
    servers, _ = traffic.serve_off_and_on({"original": model}, x, workdir)
    try:
      cost = measure(servers, x, float(seconds), int(rounds), int(clients))
      cost["detector_queries"] = traffic.detection_metrics(servers["on"])["queries"]
    finally:
      for server in servers.values():
        server.stop()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return {"dataset": dataset, "model": "LeNet-5 (untrained)", "rounds_per_side": int(rounds),
          "seconds_per_round": float(seconds),
          "goals": {"throughput_ratio": THROUGHPUT_GOAL, "p99_extra_ms": P99_GOAL_MS}, **cost}

