"""The machine's own kernel rates against what the model achieves: `python -m pipelines.benchmark kernels
[--dataset=svhn] [--set=batch=128,precision=auto,seconds=2]`.

A peak computed from clock and vector width says little about a CPU whose kernels differ by op, shape
and precision. This suite measures, in one process and one run, for each Conv2D and Dense layer of the
dataset's classifier (the shapes training uses, at `batch` images):
- raw: the bare op (tf.nn.conv2d, tf.matmul) in the training precision's compute dtype, forward, and
  forward plus both gradients (input and weights), each one tf.function;
- layer: the Keras layer itself (bias, activation, the policy's casts) the same two ways;
- efficiency: the layer's rate over the raw op's, per layer and per layer type;
- the optimizer step alone (Adam over every weight), and one whole training step (images/s, GFLOP/s,
  and its efficiency: the time the raw ops would take over the time the step takes);
- kernels: the oneDNN implementation each raw op and layer ran on (ONEDNN_VERBOSE=1 in a child
  process, which runs each once).
Times are the median of repeated calls after two warm-up calls; a call returns when its outputs are
computed (eager CPU execution is synchronous).
"""
import os
import subprocess
import sys
import time

import numpy as np

from pipelines.benchmarks.windows import TRAINING_FLOPS_PER_MAC, layer_multiply_adds


def median_call_s(fn, seconds):
  """Median seconds of one call of `fn`, after two warm-up calls, over at least 3 calls or `seconds`."""
  fn(), fn()
  times, start = [], time.perf_counter()
  while len(times) < 3 or time.perf_counter() - start < seconds:
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def layer_shapes(model, batch):
  """[(name, type, input shape, forward multiply-adds)] of the model's Conv2D and Dense layers."""
  import keras
  out = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
      out.append((layer.name, "Conv2D", (batch, *layer.input.shape[1:]), batch * layer_multiply_adds(layer)))
    elif isinstance(layer, keras.layers.Dense):
      out.append((layer.name, "Dense", (batch, int(layer.input.shape[-1])), batch * layer_multiply_adds(layer)))
  return out


def _timed_pair(forward, inputs, variables=()):
  """(forward, forward + the gradients with respect to the `inputs` tensors and the layer's
  `variables`, which the tape watches by itself) as tf.functions."""
  import tensorflow as tf

  @tf.function
  def both():
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf.reduce_sum(tf.cast(forward(), tf.float32))
    return loss, tape.gradient(loss, inputs + list(variables))  # the loss too: else the forward op is pruned
  return tf.function(forward), both


def _raw_op(layer, shape, dtype):
  """(forward, forward + gradients) of the bare op behind `layer`, on fixed random inputs."""
  import tensorflow as tf
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal(shape).astype(np.float32), dtype)
  w = tf.constant(rng.standard_normal(layer.kernel.shape).astype(np.float32) * 0.05, dtype)
  if len(layer.kernel.shape) == 4:
    padding, strides = layer.padding.upper(), layer.strides
    op = lambda a, b: tf.nn.conv2d(a, b, strides=strides, padding=padding)
  else:
    op = tf.matmul
  return _timed_pair(lambda: op(x, w), [x, w])


def _keras_layer(layer, shape, policy):
  """(forward, forward + gradients) of a fresh copy of `layer` under `policy`, inputs in its compute dtype."""
  import tensorflow as tf
  config = layer.get_config()
  config["dtype"] = policy
  copy = layer.__class__.from_config(config)
  copy.build(shape)
  x = tf.constant(np.random.default_rng(0).standard_normal(shape).astype(np.float32), copy.compute_dtype)
  return _timed_pair(lambda: copy(x, training=True), [x], copy.trainable_variables)


def _rates(pair, macs, seconds):
  forward, both = pair
  f, b = median_call_s(forward, seconds), median_call_s(both, seconds)
  return {"forward_ms": 1e3 * f, "forward_gflops": 2 * macs / f / 1e9,
          "train_ms": 1e3 * b, "train_gflops": TRAINING_FLOPS_PER_MAC * macs / b / 1e9}


def _whole_step(model, batch, seconds, optimizer):
  """(train step seconds, optimizer step seconds): one GradientTape step with `optimizer`, and its update alone."""
  import keras
  import tensorflow as tf
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch, *model.input_shape[1:]), np.float32))
  y = tf.constant(rng.integers(0, model.output_shape[-1], batch))
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, tf.cast(model(x, training=True), tf.float32))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

  grads = [tf.constant(rng.standard_normal(v.shape).astype(np.float32) * 1e-3) for v in model.trainable_variables]
  update = tf.function(lambda: optimizer.apply_gradients(zip(grads, model.trainable_variables)))
  return median_call_s(step, seconds), median_call_s(update, seconds)


def _build(dataset, precision_name):
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import precision
  spec = datasets.get_spec(dataset)
  model = models.build_classifier(spec.classifier, spec.image_shape, spec.num_classes)
  policy = precision.resolve_precision(precision_name)
  return spec, precision.with_policy(model, policy), policy


def _summarise_types(layers):
  out = {}
  for kind in sorted({row["type"] for row in layers}):
    rows = [r for r in layers if r["type"] == kind]
    macs = sum(r["multiply_adds"] for r in rows)
    raw_s = sum(r["raw"]["train_ms"] for r in rows) / 1e3
    layer_s = sum(r["layer"]["train_ms"] for r in rows) / 1e3
    out[kind] = {"multiply_adds": macs, "raw_train_gflops": TRAINING_FLOPS_PER_MAC * macs / raw_s / 1e9,
                 "layer_train_gflops": TRAINING_FLOPS_PER_MAC * macs / layer_s / 1e9,
                 "efficiency": raw_s / layer_s}
  return out


def run(dataset="svhn", n=0, seed=0, batch=128, precision="auto", seconds=2.0, kernels=True):
  del n, seed
  import keras
  from lad_tf.runtime.optimizers import FusedAdam
  batch, seconds = int(batch), float(seconds)
  spec, model, policy = _build(dataset, precision)
  compute = keras.mixed_precision.Policy(policy).compute_dtype
  layers = []
  for name, kind, shape, macs in layer_shapes(model, batch):
    layer = model.get_layer(name)
    row = {"name": name, "type": kind, "input_shape": list(shape), "multiply_adds": macs,
           "raw": _rates(_raw_op(layer, shape, compute), macs, seconds),
           "layer": _rates(_keras_layer(layer, shape, policy), macs, seconds)}
    row["efficiency"] = row["raw"]["train_ms"] / row["layer"]["train_ms"]
    print(f"[kernels] {name} ({kind}): raw {row['raw']['train_gflops']:.0f} GFLOP/s, layer "
          f"{row['layer']['train_gflops']:.0f} GFLOP/s (fwd+bwd, {compute})", flush=True)
    layers.append(row)
  step_s, update_s = _whole_step(model, batch, seconds, keras.optimizers.Adam(1e-4))
  fused_step_s, fused_update_s = _whole_step(model, batch, seconds, FusedAdam(1e-4))
  macs = sum(r["multiply_adds"] for r in layers)
  raw_s = sum(r["raw"]["train_ms"] for r in layers) / 1e3
  parameters = int(sum(np.prod(v.shape) for v in model.trainable_variables))
  out = {"dataset": dataset, "model": spec.classifier, "batch": batch, "policy": policy,
         "compute_dtype": compute, "layers": layers, "by_type": _summarise_types(layers),
         "train_step": {"ms": 1e3 * step_s, "images_per_s": batch / step_s,
                        "gflops": TRAINING_FLOPS_PER_MAC * macs / step_s / 1e9,
                        "raw_ops_ms": 1e3 * raw_s, "efficiency": raw_s / step_s,
                        "optimizer_ms": 1e3 * update_s, "optimizer_share": update_s / step_s},
         "optimizer": {"method": "Adam", "parameters": parameters, "ms": 1e3 * update_s,
                       # Adam reads weight, gradient and two moments and writes three: 28 bytes a float32 weight
                       "gb_per_s": 28 * parameters / update_s / 1e9},
         "fused_adam": {"optimizer_ms": 1e3 * fused_update_s, "step_ms": 1e3 * fused_step_s,
                        "images_per_s": batch / fused_step_s, "optimizer_speedup": update_s / fused_update_s,
                        "step_speedup": step_s / fused_step_s},
         "timing": "median of repeated calls after two warm-up calls, one process, one run; the Keras "
                   "Adam step, then the FusedAdam step, on the same model"}
  if kernels:
    out["onednn_kernels"] = onednn_kernels(dataset, precision, batch)
    out["kernel_of"] = main_kernels(out["onednn_kernels"])
  return out


# -- which oneDNN kernel each op ran on -------------------------------------------------------------
_MARK = "[kernels-op]"
_WARM_UP = "-"  # the unmarked first calls: traced, then run; left out


def parse_verbose(text):
  """{op: {"primitive/implementation/propagation": calls}} from ONEDNN_VERBOSE output, split by the
  child's `[kernels-op] NAME` lines."""
  found, current = {}, None
  for line in text.splitlines():
    if line.startswith(_MARK):
      current = line[len(_MARK):].strip()
      found.setdefault(current, {})
      continue
    fields = line.split(",")
    if current is None or not line.startswith("onednn_verbose") or "exec" not in fields:
      continue
    at = fields.index("exec")
    if len(fields) < at + 5 or fields[at + 1] != "cpu":
      continue
    key = "/".join(fields[at + 2:at + 5])
    found[current][key] = found[current].get(key, 0) + 1
  found.pop(_WARM_UP, None)
  return found


def main_kernels(found):
  """{layer: {"raw"|"layer": "impl (propagation), ..."}}: the compute primitives of each op (no reorders)."""
  out = {}
  for op, counts in found.items() if isinstance(found, dict) else ():
    if not isinstance(counts, dict) or " " not in op:
      continue
    name, tag = op.rsplit(" ", 1)
    parts = [key.split("/", 1)[1].replace("/", " (") + ")" for key in sorted(counts)
             if not key.startswith("reorder/")]
    out.setdefault(name, {})[tag] = ", ".join(parts) or "no oneDNN primitive (Eigen)"
  return out


def onednn_kernels(dataset, precision, batch):
  """Runs every raw op and layer once in a child with ONEDNN_VERBOSE=1 and reads what it printed."""
  code = (f"from pipelines.benchmarks import kernels; kernels._verbose_child({dataset!r}, {precision!r}, "
          f"{int(batch)})")
  env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
  if done.returncode != 0:
    return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
  found = parse_verbose(done.stdout)
  if not any(found.values()):
    return {"note": "oneDNN printed no exec lines (TF_ENABLE_ONEDNN_OPTS=0, or a build without oneDNN)"}
  return found


def _verbose_child(dataset, precision, batch):
  import keras
  _, model, policy = _build(dataset, precision)
  compute = keras.mixed_precision.Policy(policy).compute_dtype
  for name, _, shape, _ in layer_shapes(model, batch):
    layer = model.get_layer(name)
    for tag, pair in (("raw", _raw_op(layer, shape, compute)), ("layer", _keras_layer(layer, shape, policy))):
      print(f"{_MARK} {_WARM_UP}", flush=True)
      pair[1]()  # traced and run once before the marked call, so the marked one is the op alone
      print(f"{_MARK} {name} {tag}", flush=True)
      pair[1]()
      sys.stdout.flush()
