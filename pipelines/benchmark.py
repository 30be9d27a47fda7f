"""Benchmarks: `python -m pipelines.benchmark SUITE [--output=FILE.json] [suite flags]`.

Each suite lives in `pipelines/benchmarks/<suite>.py` and exposes `run(**options) -> dict`; this
entry point prints the figures as a table and writes them as one JSON object.
"""
import importlib
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

from pipelines import common
from pipelines.benchmarks import suite_options

SUITES = ("attacks", "serving", "training", "generation", "pipeline", "precision", "data", "robust", "decoder",
          "service_attacks", "service_cost", "detection_sweep", "recipe", "kernels",
          "autoattack_cost")

flags.DEFINE_string("output", None, "Where to write the figures (JSON). Default: benchmarks/SUITE.json.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset the suite measures on.")
flags.DEFINE_string("data_dir", None, "Dataset folder, for suites that take one (e.g. robust on real MNIST).")
flags.DEFINE_integer("n", 0, "Number of examples (0: the suite's default).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_list("set", [], "Suite options as key=value (e.g. --set=seconds=10,clients=8), passed to "
                  "the suite's run() as keyword arguments.")
FLAGS = flags.FLAGS


def cpu_model():
  """The CPU's model name and the vector units that decide its speed (timings differ by kind)."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = f.read().splitlines()
  except OSError:
    return {}
  field = lambda key: next((l.split(":", 1)[1].strip() for l in lines if l.startswith(key)), "")
  flags_ = set(field("flags").split())
  return {"cpu": field("model name"),
          "cpu_flags": sorted(flags_ & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})}


def machine_info():
  """What the figures were measured on, saved beside them."""
  return {**cpu_model(),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpus": os.cpu_count(),
      "python": sys.version.split()[0],
  }


def print_table(figures, prefix=""):
  for key, value in figures.items():
    if isinstance(value, dict):
      print_table(value, prefix=f"{prefix}{key}.")
    elif isinstance(value, float):
      print(f"  {prefix}{key:<40s} {value:12.4f}")
    else:
      print(f"  {prefix}{key:<40s} {value!s:>12}")


def main(argv):
  if len(argv) != 2 or argv[1] not in SUITES:
    raise app.UsageError(f"usage: python -m pipelines.benchmark SUITE, SUITE one of {', '.join(SUITES)}")
  suite = argv[1]
  module = importlib.import_module(f"pipelines.benchmarks.{suite}")
  start = time.time()
  extra = {"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}
  figures = module.run(dataset=FLAGS.dataset, n=FLAGS.n, seed=FLAGS.seed, **extra, **suite_options(FLAGS.set))
  figures = {"suite": suite, **figures, "wall_s": time.time() - start, "machine": machine_info()}
  print(f"benchmark {suite}:")
  print_table(figures)
  output = FLAGS.output or os.path.join("benchmarks", f"{suite}.json")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(figures, f, indent=2, sort_keys=True)
  print(f"figures written to {output}")


if __name__ == "__main__":
  common.run(main, (("benchmark", ("output", "dataset", "data_dir", "n", "seed", "set")), ("execution", ("verbose",))),
             arguments="SUITE")
