"""Pipeline benchmark: `python -m pipelines.defend` end to end with its defaults; wall time and memory.

`python -m pipelines.benchmark pipeline [--dataset=fashion_mnist] [--seed=0] [--set=batches=N]`

Two modes. `batches=0` (the default except for SVHN) runs the whole pipeline (below). `batches=N`
(SVHN's default: 5) times N batches of each piece of each stage after a first compiling one
(pipelines/benchmarks/windows.py: the same windows `pipelines.defend` prints its plan from) and
extrapolates them to the full stages: the JSON marks those seconds as extrapolations. It runs in
minutes where the full SVHN run takes hours, and measures settings side by side, one process each
(see `windows_run`). Each piece's CPU seconds are recorded beside its wall seconds: on a shared
machine the wall time follows the other processes' load, the CPU time much less, so `cpu_bound`
gives each stage's time with the CPU seconds spread over the cores; throughput is reported against
the cores' peak (windows.cpu_peak, formula in the JSON). `--set=configs=after+light_decoder` picks
full-stage configurations from CONFIGS, `variants=False` skips the one-setting-at-a-time VARIANTS.

`decoder_comparison=True` instead trains the paper's SVHN decoder and the lighter option side by side
on real images (`compare_decoders`): their reconstruction errors.

SVHN runs on full-size files in its own format (train_32x32.mat: 73,257 images; test_32x32.mat:
26,032): the real ones from --data_dir when there, else written from a seeded generator into a cache
folder (lad_tf.data.sources.svhn.write_synthetic); the JSON says which. Synthetic files give times only:
no accuracy figure of such a run means anything.

Runs `python -m pipelines.defend --dataset=DATASET --workdir=<fresh temporary folder>` as a
subprocess (defaults otherwise), then reads the work directory's stages.json (seconds per stage).
total_s is the subprocess's wall time (start-up, data loading, metrics, figures and export included);
peak_rss_mb is the largest resident set of this process and its children (resource.getrusage
ru_maxrss, RUSAGE_SELF and RUSAGE_CHILDREN). Goal on 2 cores, Fashion-MNIST: under 15 minutes.
`--n` is not used (the pipeline runs on the full dataset). `--set=workdir=DIR` runs in DIR and keeps it
(defend.log, stages.json): an hours-long run that is killed keeps each finished stage's time, and the
same command resumes it. `--set=extra_args=['--defence=lad']` passes flags on to `pipelines.defend`.

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


def svhn_files(data_dir, seed=0):
  """(folder, description) of SVHN's two .mat files: --data_dir's real ones, else synthetic ones of the
  real sizes written once into a cache folder."""
  from lad_tf.data.sources import svhn
  if data_dir and svhn.has_files(data_dir):
    return data_dir, f"the real SVHN files in {data_dir}"
  folder = os.path.join(tempfile.gettempdir(), f"lad_tf-svhn-synthetic-seed{seed}")
  marker = os.path.join(folder, "complete.json")
  if not os.path.isfile(marker):
    print(f"[pipeline] writing full-size synthetic SVHN files into {folder}", flush=True)
    svhn.write_synthetic(folder, seed=seed)
    with open(marker, "w") as f:
      json.dump(svhn.SIZES, f)
  return folder, (f"synthetic files of SVHN's real format and sizes ({svhn.SIZES['train']:,} train, "
                  f"{svhn.SIZES['test']:,} test), uniform random pixels from seed {seed}: times only, "
                  "no accuracy claims")


def run(dataset="fashion_mnist", n=0, seed=0, extra_args=(), compare_with=None, batches=None, data_dir=None,
        variants=True, configs=None, decoder_comparison=False, workdir=None):
  del n
  if decoder_comparison:
    return {"decoder_comparison": compare_decoders(seed)}
  here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  data_note = None
  if dataset == "svhn":
    data_dir, data_note = svhn_files(data_dir, seed)
  if batches is None:
    batches = 5 if dataset == "svhn" else 0
  if batches:
    return {"data": data_note, **windows_run(here, dataset, data_dir, seed, int(batches), variants, configs)}
  if data_dir:
    extra_args = (f"--data_dir={data_dir}", *extra_args)
  if isinstance(extra_args, str):
    extra_args = (extra_args,)
  if not compare_with:
    return _run_tree(here, dataset, seed, extra_args, workdir)
  if not os.path.isfile(os.path.join(compare_with, "pipelines", "defend.py")):
    raise ValueError(f"compare_with={compare_with} is not a lad_tf source tree (no pipelines/defend.py)")
  other = _run_tree(os.path.abspath(compare_with), dataset, seed, ())
  this = _run_tree(here, dataset, seed, extra_args)
  return {**this, "other": other, "other_tree": os.path.abspath(compare_with),
          "speedup": other["total_s"] / this["total_s"],
          "clean_accuracy_diff_points": {
              k: 100 * (this[k] - other[k]) for k in ("original_clean_accuracy", "defended_clean_accuracy")},
          "timing": "the other tree first, then this one, in one invocation on the same machine"}


def _run_tree(root, dataset, seed, extra_args, workdir=None):
  keep = workdir is not None
  if keep:
    os.makedirs(workdir, exist_ok=True)
  else:
    workdir = tempfile.mkdtemp(prefix=f"lad_tf-bench-{dataset}-")
  command = [sys.executable, "-m", "pipelines.defend", f"--dataset={dataset}", f"--workdir={workdir}",
             f"--seed={seed}", *extra_args]
  print(f"[pipeline] {root}: {' '.join(command)}", flush=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  try:
    start = time.perf_counter()
    with open(os.path.join(workdir, "defend.log"), "a" if keep else "w") as log:
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
    if not keep:
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


# -- short timed windows (batches=N) ----------------------------------------------------------------
# What `defend --dataset=svhn` ran with before issue 16: precision auto (bfloat16 here), no XLA,
# TensorFlow's default threading, the spec's batches 128 (classifier) and 256 (decoder), the paper's
# decoder, the paper's method. "after" is the paper's method with what the spec and the command line
# default to now.
BEFORE = {"precision": "auto", "jit_compile": False, "classifier_batch_size": 128, "generator_batch_size": 256,
          "generator": "svhnnet_decoder", "defence": "lad"}
# One setting changed at a time from BEFORE, timed on the classifier and decoder pieces only.
VARIANTS = {
    "float32": {"precision": "float32"},
    "xla": {"jit_compile": True},
    "threads_intra2_inter1": {"intra_op": 2, "inter_op": 1},
    "threads_intra4_inter2": {"intra_op": 4, "inter_op": 2},
    "batch_half": {"classifier_batch_size": 64, "generator_batch_size": 128},
    "batch_double": {"classifier_batch_size": 256, "generator_batch_size": 512},
    "light_decoder": {"generator": "svhnnet_decoder_light"},
}


def _worker(root, options):
  """Runs pipelines/benchmarks/windows.py in a fresh process (threads are process-wide); its result."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  command = [sys.executable, "-m", "pipelines.benchmarks.windows", json.dumps(options)]
  print(f"[pipeline] windows {json.dumps(options)}", flush=True)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
  lines = [l for l in done.stdout.splitlines() if l.startswith("WINDOWS_RESULT ")]
  if done.returncode != 0 or not lines:
    raise RuntimeError(f"windows worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
  result = json.loads(lines[-1][len("WINDOWS_RESULT "):])
  result["process_s"] = time.perf_counter() - start
  result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
  return result


def throughput(result, peak):
  """Images/s of the classifier's and the decoder's training steps, the FLOP/s they amount to (model
  multiply-adds x 6 per image) and the fraction of the cores' peak for the policy they ran under."""
  from pipelines.benchmarks.windows import TRAINING_FLOPS_PER_MAC
  bf16 = result["policy"] == "mixed_bfloat16"
  peak_gflops = peak["bf16_peak_gflops"] if bf16 else peak["fp32_peak_gflops"]
  out = {}
  for model, piece in (("classifier", "classifier_step"), ("decoder", "decoder_step")):
    if piece not in result["seconds_per_batch"]:
      continue
    images_s = result["batch"][piece] / result["seconds_per_batch"][piece]
    flops_per_image = TRAINING_FLOPS_PER_MAC * result["forward_multiply_adds"][model]
    gflops = images_s * flops_per_image / 1e9
    cpu_s = result["cpu_seconds_per_batch"][piece]
    # per CPU-second this process got: the efficiency of the cycles it ran on, whatever the load
    gflops_per_cpu_s = result["batch"][piece] / cpu_s * flops_per_image / 1e9
    core_peak = peak_gflops / peak["cores"]
    out[model] = {"batch_size": result["batch"][piece], "seconds_per_batch": result["seconds_per_batch"][piece],
                  "cpu_seconds_per_batch": cpu_s, "images_per_s": images_s,
                  "images_per_s_if_cpu_bound_on_all_cores": result["batch"][piece] / cpu_s * peak["cores"],
                  "gflops": gflops, "peak_gflops": peak_gflops, "fraction_of_peak": gflops / peak_gflops,
                  "gflops_per_cpu_second": gflops_per_cpu_s,
                  "fraction_of_one_core_peak_per_cpu_second": gflops_per_cpu_s / core_peak,
                  "peak_used": "bf16" if bf16 else "fp32"}
  return out


def _summary(result, peak):
  stages = {name: {"extrapolated_s": s["extrapolated_s"], "window_s": s["window_s"],
                   "peak_rss_mb": s["peak_rss_mb"], "extrapolated_parts_s": s["extrapolated_parts"],
                   **({"extrapolated_upper_s": s["extrapolated_upper_s"]} if s.get("extrapolated_upper_s") else {})}
            for name, s in result["stages"].items()}
  return {"options": result["options"], "policy": result["policy"], "threads": result["threads"],
          "stages": stages, "extrapolated_total_s": sum(s["extrapolated_s"] for s in stages.values()),
          "throughput": throughput(result, peak), "seconds_per_batch": result["seconds_per_batch"],
          "cpu_seconds_per_batch": result["cpu_seconds_per_batch"],
          "load_average": [result["load_average_start"], result["load_average_end"]],
          "input_pipeline": result.get("input_pipeline"), "process_s": result["process_s"],
          "forward_multiply_adds": result["forward_multiply_adds"]}


# "after": the paper's method (--defence=lad) with the spec's and command line's defaults now (run 1,
# benchmarks/svhn_speed_variants.json: no setting measured faster without changing what is computed,
# so they equal BEFORE); "light_decoder": the same with the lighter decoder option; "robust_default":
# every default, i.e. the default robust defence and the AutoAttack stage (lad_tf.defences).
CONFIGS = {"before": BEFORE, "after": {"defence": "lad"},
           "light_decoder": {"generator": "svhnnet_decoder_light", "defence": "lad"}, "robust_default": {}}


PART_PIECES = {  # which measured pieces each part of lad_tf.run.plan.estimate multiplies
    "training": {"classifier": "classifier_step", "generator": "decoder_step", "defended": "robust_step"},
    "validation (each epoch)": "classifier_validation", "test accuracy": "classifier_inference",
    "latents (train and test)": "classifier_inference", "latents": "classifier_inference",
    "train and test loss": "decoder_inference", "fine-tuning": "fine_tune_step",
    "decode and classify": ("decoder_inference", "classifier_inference"),
    "LAD's guide (once)": ("classifier_inference", "decoder_inference"),
    "guard (each epoch)": ("attack_gradient", "classifier_inference"),
    "clean predictions": "classifier_inference", "APGD-CE, both models": "attack_gradient",
}


def cpu_bound(summary, cores):
  """Each stage's extrapolation with every piece's CPU seconds per batch spread over `cores` instead
  of its wall time: the stage's time on an otherwise idle machine if the work used every core fully
  (a lower bound there; on a shared machine the wall time is what the load leaves)."""
  wall, cpu = summary["seconds_per_batch"], summary["cpu_seconds_per_batch"]
  out, upper = {}, {}
  for stage, figures in summary["stages"].items():
    total = 0.0
    for part, seconds in figures["extrapolated_parts_s"].items():
      pieces = PART_PIECES.get(part) or ("boundary_none_step" if part == "fit (none)" else "boundary_step")
      pieces = pieces[stage] if isinstance(pieces, dict) else pieces
      pieces = (pieces,) if isinstance(pieces, str) else pieces
      if "classifier_validation" in pieces and "classifier_validation" not in wall:
        pieces = ("classifier_inference",)  # the estimate used it in its place
      measured = sum(wall[p] for p in pieces)
      total += seconds * sum(cpu[p] for p in pieces) / cores / measured if measured else 0.0
    out[stage] = total
    if figures.get("extrapolated_upper_s"):  # AutoAttack's range: the same pieces, the same CPU share
      upper[stage] = figures["extrapolated_upper_s"] * total / figures["extrapolated_s"]
  result = {"stages_s": out, "total_s": sum(out.values())}
  if upper:
    result.update(upper_stages_s=upper, upper_total_s=sum({**out, **upper}.values()))
  return result


def windows_run(root, dataset, data_dir, seed, batches, variants=True, configs=None):
  """Full stage windows for each of `configs` (names of CONFIGS joined by '+'; default: before+after
  for SVHN), then (variants) the classifier and decoder pieces under each of VARIANTS; one process
  each, one after the other in this one invocation."""
  from pipelines.benchmarks.windows import cpu_peak
  peak = cpu_peak()
  base = {"dataset": dataset, "data_dir": data_dir, "seed": seed, "batches": batches}
  names = configs.split("+") if configs else (["before", "after"] if dataset == "svhn" else ["after"])
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    raise ValueError(f"configs: unknown {unknown}; known: {'+'.join(CONFIGS)}")
  configs = {n: CONFIGS[n] for n in names}
  out = {"mode": f"windows: {batches} timed batches per piece after one compiling batch, extrapolated "
                 "to the full stages (extrapolated_s); window_s is the measured wall time of the "
                 "window (compilation and model building included)",
         "cpu_peak": peak, "configs": {}, "variants": {},
         "flops_rule": "training FLOPs per image = 6 x the forward multiply-adds of the Conv2D, "
                       "Conv2DTranspose and Dense layers (2 per multiply-add, backward about twice "
                       "forward); elementwise, batch-norm and pooling work not counted"}
  for name, options in configs.items():
    out["configs"][name] = _summary(_worker(root, {**base, **options, "input_pipeline": True}), peak)
    out["configs"][name]["cpu_bound_estimate"] = cpu_bound(out["configs"][name], peak["cores"])
  if variants:
    reference = dict(configs.get("before", {}))
    for name, change in VARIANTS.items():
      stages = ["generator"] if "generator" in change and len(change) <= 2 and "precision" not in change else [
          "classifier", "generator"]
      out["variants"][name] = _summary(_worker(root, {**base, **reference, **change, "stages": stages}), peak)
  return out


# -- the lighter decoder's reconstruction error (decoder_comparison=True) ----------------------------
def compare_decoders(seed=0, classifier_epochs=10, decoder_epochs=30):
  """The paper's SVHN decoder and the lighter one trained side by side on the same frozen svhnNet
  latents of real images: scikit-learn's digits (1,438 train, 359 test) centred in 32x32 and
  repeated over 3 channels (SVHN itself is not on this machine). Test L1 error per pixel (the SVHN
  spec's norm) and training time; an indication of what the lighter decoder costs in fidelity."""
  import keras
  import numpy as np
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.lad import decoder as decoder_lib
  from lad_tf.runtime import training
  from lad_tf.runtime.execution import ExecutionConfig
  data = datasets.load("digits")
  rgb = lambda x: np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
  train, test = datasets.Split(rgb(data.train.x), data.train.y), datasets.Split(rgb(data.test.x), data.test.y)
  run = ExecutionConfig(seed=seed, precision="auto", verbose=0)
  keras.utils.set_random_seed(seed)
  classifier = models.build_classifier("svhnnet", (32, 32, 3), 10)
  _, accuracy = training.train_classifier(classifier, train, test, training.TrainConfig(
      epochs=classifier_epochs, batch_size=128, execution=run), None)
  phi, _ = models.split_at_latent(classifier, "latent")
  out = {"data": "digits centred in 32x32x3 (real images, not SVHN)", "classifier_test_accuracy": accuracy,
         "decoder_epochs": decoder_epochs, "decoders": {}}
  for name in ("svhnnet_decoder", "svhnnet_decoder_light"):
    keras.utils.set_random_seed(seed)
    generator = models.build_generator(name, 4096, (32, 32, 3))
    start = time.perf_counter()
    result = decoder_lib.train_decoder(phi, generator, train, test, decoder_lib.DecoderConfig(
        epochs=decoder_epochs, batch_size=256, recon_norm="l1", execution=run), None)
    out["decoders"][name] = {"test_l1": result["test_loss"], "train_l1": result["train_loss"],
                             "train_s": time.perf_counter() - start, "parameters": generator.count_params()}
  paper, light = (out["decoders"][n] for n in ("svhnnet_decoder", "svhnnet_decoder_light"))
  out["light_over_paper_test_l1"] = light["test_l1"] / paper["test_l1"]
  return out
