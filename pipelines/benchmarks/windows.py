"""Short timed windows of the defend stages, one settings variant per process (the pipeline suite's
`batches=N` mode; see pipelines/benchmarks/defend.py).

`python -m pipelines.benchmarks.windows '{"dataset": "svhn", "data_dir": DIR, "stages": [...], ...}'`
times `batches` batches of each piece the listed stages need (lad_tf.run.plan.measure, the same windows
`pipelines.defend` prints its plan from), extrapolates them to the full stages (lad_tf.run.plan.estimate)
and prints one JSON object. Threading is process-wide and must be set before TensorFlow runs an op,
so every variant gets a fresh process. Also here: the model FLOPs (a count of the layers'
multiply-adds) and the CPU's peak, so throughput can be read as a fraction of what the cores can do.
"""
import gc
import json
import math
import os
import shutil
import sys
import threading
import time

TRAINING_FLOPS_PER_MAC = 6  # 2 FLOPs per multiply-add; backward (input and weight gradients) ~2x forward


# -- the CPU's peak -------------------------------------------------------------------------------
def _cpuinfo():
  info, flags = {}, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "flags":
          flags = set(value.split())
        elif key and key not in info:
          info[key] = value
  except OSError:
    pass
  return info, flags


def _clock_ghz(info):
  """The highest clock the kernel states (cpufreq's max), else /proc/cpuinfo's current MHz."""
  try:
    with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
      return int(f.read()) / 1e6, "cpufreq cpuinfo_max_freq"
  except (OSError, ValueError):
    return float(info.get("cpu MHz", "0") or 0) / 1000.0, "/proc/cpuinfo cpu MHz (no cpufreq max exposed)"


def cpu_peak():
  """Peak FLOP/s of this machine's cores for float32 and bfloat16 math, with the formula and the
  assumptions (FMA units per core, datapath width) stated."""
  info, flags = _cpuinfo()
  cores = os.cpu_count() or 1
  ghz, clock_source = _clock_ghz(info)
  amd = info.get("vendor_id") == "AuthenticAMD"
  family = int(info.get("cpu family", "0") or 0)
  isa_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
  # AMD Zen 4 (family 25) runs 512-bit instructions on a 256-bit datapath (two halves); Zen 5 (26) has 512
  datapath = 256 if amd and family < 26 and isa_bits == 512 else isa_bits
  fma_units = 2  # two FMA pipes per core: Zen 3/4/5, Skylake-SP Gold/Platinum and later Xeons
  fp32 = fma_units * (datapath // 32) * 2
  if "amx_bf16" in flags:
    bf16, bf16_how = 2048, "AMX: 1024 bf16 multiply-adds per cycle per core (Intel's TMUL figure)"
  elif "avx512_bf16" in flags:
    bf16, bf16_how = 2 * fp32, "AVX512-BF16 dot products: two bf16 products per fp32 lane, so twice fp32"
  else:
    bf16, bf16_how = fp32, "no bf16 instructions: bf16 runs at fp32 rate at best"
  peak = lambda per_cycle: cores * ghz * 1e9 * per_cycle
  return {
      "formula": "peak FLOP/s = cores x clock x FLOPs per cycle per core; fp32 FLOPs per cycle per core = "
                 "FMA units x (datapath bits / 32) x 2 (multiply and add)",
      "cores": cores, "clock_ghz": ghz, "clock_source": clock_source, "model": info.get("model name"),
      "isa_vector_bits": isa_bits, "datapath_bits": datapath, "fma_units_per_core": fma_units,
      "fp32_flops_per_cycle_per_core": fp32, "bf16_flops_per_cycle_per_core": bf16, "bf16_rule": bf16_how,
      "fp32_peak_gflops": peak(fp32) / 1e9, "bf16_peak_gflops": peak(bf16) / 1e9,
  }


# -- model FLOPs ----------------------------------------------------------------------------------
def layer_multiply_adds(layer):
  """Forward multiply-adds per example of one Conv2D, Conv2DTranspose or Dense layer; 0 for any other
  (elementwise and pooling: a few percent of a VGG-style network)."""
  import keras
  if isinstance(layer, keras.layers.Conv2DTranspose):
    _, h, w, c = layer.input.shape
    kh, kw = layer.kernel_size
    return int(h * w * c * kh * kw * layer.filters)
  if isinstance(layer, keras.layers.Conv2D):
    _, h, w, _ = layer.output.shape
    kh, kw = layer.kernel_size
    return int(h * w * layer.filters * kh * kw * int(layer.input.shape[-1]) // layer.groups)
  if isinstance(layer, keras.layers.Dense):
    return int(math.prod(layer.input.shape[1:-1] or (1,)) * int(layer.input.shape[-1]) * layer.units)
  return 0


def multiply_adds(model):
  """Forward multiply-adds per example of the model's Conv2D, Conv2DTranspose and Dense layers."""
  return sum(layer_multiply_adds(layer) for layer in model.layers)


# -- memory ---------------------------------------------------------------------------------------
def rss_mb():
  from serving.launch import process_rss_mb
  return process_rss_mb(os.getpid())


class PeakMemory:
  """The largest resident set of this process while the `with` block runs (sampled every 20 ms)."""

  def __enter__(self):
    self.peak, self.start = rss_mb(), rss_mb()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def _sample(self):
    while not self._stop.wait(0.02):
      self.peak = max(self.peak, rss_mb())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_mb())


# -- the worker -----------------------------------------------------------------------------------
def _input_pipeline_s(split, batch_size, batches, seed):
  """Seconds per batch of the classifier's tf.data pipeline alone (after its first batch)."""
  from lad_tf.data import datasets
  ds = datasets.to_tf_dataset(split, batch_size, shuffle=True, seed=seed)
  ends = []
  for i, _ in enumerate(ds):
    ends.append(time.perf_counter())
    if i >= batches:
      break
  return (ends[-1] - ends[0]) / (len(ends) - 1)


def measure(options):
  """The worker: see the module docstring. options: dataset, data_dir, stages, batches, seed,
  precision, jit_compile, intra_op, inter_op, classifier_batch_size, generator_batch_size,
  generator (architecture), input_pipeline (bool)."""
  import tensorflow as tf
  if options.get("intra_op") is not None:
    tf.config.threading.set_intra_op_parallelism_threads(int(options["intra_op"]))
  if options.get("inter_op") is not None:
    tf.config.threading.set_inter_op_parallelism_threads(int(options["inter_op"]))
  import tempfile
  from lad_tf.run import defend
  from lad_tf.runtime.execution import ExecutionConfig
  execution = ExecutionConfig(seed=options.get("seed", 0), precision=options.get("precision", "auto"),
                              jit_compile=bool(options.get("jit_compile", False)), verbose=0)
  config = defend.DefendConfig(dataset=options["dataset"], data_dir=options.get("data_dir"),
                                 generator_architecture=options.get("generator"), execution=execution,
                                 **({"defence": options["defence"]} if options.get("defence") else {}))
  start = time.perf_counter()
  workdir = tempfile.mkdtemp(prefix="lad_tf-windows-")
  try:
    return _measure(defend.DefendRun(workdir, config, progress=lambda _: None), options, execution, start)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def _measure(run, options, execution, start):
  import dataclasses
  import tensorflow as tf
  from lad_tf import models
  from lad_tf.run import plan
  from lad_tf.runtime.execution import resolve_precision
  batches = int(options.get("batches", 5))
  load_s = time.perf_counter() - start
  changes = {k: options[f"{k}"] for k in ("classifier_batch_size", "generator_batch_size") if options.get(k)}
  run.spec = dataclasses.replace(run.spec, **changes)
  run.prepare()
  # the boundary fit's memory (SVHN: a 45 x 4096 x 4096 attention kernel) is not all given back, so it
  # goes last: each other stage's peak is then its own
  stages = sorted(options.get("stages") or run.config.needed_stages(), key=lambda s: s == "boundaries")
  out = {"options": options, "policy": resolve_precision(execution.precision), "data_load_s": load_s,
         "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                     "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
         "stages": {}}
  seconds, batch, cpu = {}, {}, {}
  out["load_average_start"] = os.getloadavg()
  for stage in stages:
    todo = [p for p in plan.stage_pieces(run.config, stage) if p not in seconds]
    gc.collect()
    with PeakMemory() as memory:
      t0 = time.perf_counter()
      timings = plan.measure(run, batches, todo) if todo else plan.Timings({}, {})
      window = time.perf_counter() - t0
    seconds.update(timings.seconds)
    batch.update(timings.batch)
    cpu.update(timings.cpu_seconds)
    out["stages"][stage] = {"window_s": window, "pieces": todo, "peak_rss_mb": memory.peak,
                            "rss_before_mb": memory.start}
  estimates = plan.estimate(run, plan.Timings(seconds, batch))
  for e in estimates:
    if e.name in out["stages"]:
      out["stages"][e.name].update(extrapolated_s=e.seconds, extrapolated_parts=e.parts,
                                   extrapolated_upper_s=e.upper)
  out["seconds_per_batch"], out["cpu_seconds_per_batch"], out["batch"] = seconds, cpu, batch
  out["load_average_end"] = os.getloadavg()
  classifier = run.planned_classifier()
  phi, _ = models.split_at_latent(classifier, run.config.latent_layer)
  macs = {"classifier": multiply_adds(classifier),
          "decoder": multiply_adds(run.planned_generator(int(phi.output_shape[-1])))}
  out["forward_multiply_adds"] = macs
  if options.get("input_pipeline") and "classifier_step" in seconds:
    pipe = _input_pipeline_s(run.data.train, batch["classifier_step"], batches, execution.seed)
    out["input_pipeline"] = {"seconds_per_batch": pipe,
                             "share_of_classifier_step": pipe / seconds["classifier_step"]}
  return out


if __name__ == "__main__":
  result = measure(json.loads(sys.argv[1]))
  print("WINDOWS_RESULT " + json.dumps(result), flush=True)
