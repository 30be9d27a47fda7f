"""Pipeline benchmark: `python -m pipelines.defend` end to end with its defaults; wall time and memory.

`python -m pipelines.benchmark pipeline [--dataset=fashion_mnist] [--seed=0]`

Runs `python -m pipelines.defend --dataset=DATASET --workdir=<fresh temporary folder>` as a
subprocess (defaults otherwise), then reads the work directory's stages.json (seconds per stage).
total_s is the subprocess's wall time (start-up, data loading, metrics, figures and export included);
peak_rss_mb is the largest resident set of this process and its children (resource.getrusage
ru_maxrss, RUSAGE_SELF and RUSAGE_CHILDREN). Goal on 2 cores, Fashion-MNIST: under 15 minutes.
`--n` is not used (the pipeline runs on the full dataset).

Side by side: `--set=compare_with=DIR` (a source tree of other code, e.g. `git archive 6d6628d | tar -x
-C DIR`) runs that tree's `pipelines.defend` first, in the same invocation, with the same dataset and
seed, then this tree's; `speedup` is the other tree's wall time over this tree's and
`clean_accuracy_diff_points` the accuracy differences (this tree minus the other), in points.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

GOAL_S = 15 * 60


def _peak_rss_mb():
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return self_kb / 1024.0, children_kb / 1024.0  # Linux reports kilobytes


def run(dataset="fashion_mnist", n=0, seed=0, extra_args=(), compare_with=None):
  del n
  here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not compare_with:
    return _run_tree(here, dataset, seed, extra_args)
  if not os.path.isfile(os.path.join(compare_with, "pipelines", "defend.py")):
    raise ValueError(f"compare_with={compare_with} is not a lad_tf source tree (no pipelines/defend.py)")
  other = _run_tree(os.path.abspath(compare_with), dataset, seed, ())
  this = _run_tree(here, dataset, seed, extra_args)
  return {**this, "other": other, "other_tree": os.path.abspath(compare_with),
          "speedup": other["total_s"] / this["total_s"],
          "clean_accuracy_diff_points": {
              k: 100 * (this[k] - other[k]) for k in ("original_clean_accuracy", "defended_clean_accuracy")},
          "timing": "the other tree first, then this one, in one invocation on the same machine"}


def _run_tree(root, dataset, seed, extra_args):
  workdir = tempfile.mkdtemp(prefix=f"lad_tf-bench-{dataset}-")
  command = [sys.executable, "-m", "pipelines.defend", f"--dataset={dataset}", f"--workdir={workdir}",
             f"--seed={seed}", *extra_args]
  print(f"[pipeline] {root}: {' '.join(command)}", flush=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  try:
    start = time.perf_counter()
    with open(os.path.join(workdir, "defend.log"), "w") as log:
      code = subprocess.call(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    total = time.perf_counter() - start
    if code != 0:
      with open(os.path.join(workdir, "defend.log")) as log:
        tail = log.read()[-3000:]
      raise RuntimeError(f"pipelines.defend exited with {code}:\n{tail}")
    with open(os.path.join(workdir, "stages.json")) as f:
      stages = json.load(f)
    with open(os.path.join(workdir, "metrics.json")) as f:
      metrics = json.load(f)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  self_mb, children_mb = _peak_rss_mb()
  return {
      "dataset": dataset, "command": " ".join(command[1:]), "tree": root,
      "total_s": total, "stages": stages, "stages_total_s": float(sum(stages.values())),
      "peak_rss_mb": max(self_mb, children_mb), "peak_rss_self_mb": self_mb,
      "peak_rss_children_mb": children_mb,
      "goal_s": GOAL_S, "goal_met": bool(total < GOAL_S),
      "original_clean_accuracy": metrics.get("original", {}).get("clean_accuracy"),
      "defended_clean_accuracy": metrics.get("defended", {}).get("clean_accuracy"),
  }
