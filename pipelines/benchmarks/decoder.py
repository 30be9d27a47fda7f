"""Decoder benchmark: training speed of the digits decoder (lenet5_decoder, Table XI) per formulation
and precision, side by side in one run, with the reconstruction error each reaches.

`python -m pipelines.benchmark decoder [--dataset=fashion_mnist] [--n=20000] [--set=epochs=4]`

The spec's classifier is trained `classifier_epochs` on the first n training images (float32), its
latents computed once, then each variant trains the decoder from the same initial weights on the same
(z, x) batches in the same order (its own dataset with the same seed), one epoch at a time in
alternation (A B C D A B C D ...: the machine is shared, so ratios are read between neighbours):

  conv_float32          lenet5_decoder (image layer as keras Conv2D), float32
  float32               lenet5_decoder_blocked (image layer as SpaceToDepthConv2D: the same outputs
                        to float tolerance), float32
  conv_mixed_bfloat16   lenet5_decoder, mixed_bfloat16 (what precision=auto runs on AVX512-BF16 CPUs)
  mixed_bfloat16        lenet5_decoder_blocked, mixed_bfloat16

`--set=variants=float32+mixed_bfloat16,epochs=10` runs a subset for longer.

Reported per variant (`summarize`): each epoch's wall and process CPU seconds and training loss,
images per second and per CPU second of the best epoch after the first (which traces), the achieved
FLOP rate against the cores' peak, and the train (the n images) and test reconstruction loss after
the last epoch; speedups by wall and by CPU time. conv_float32 vs float32 differ only by the order of
float32 sums, so their loss gap is the noise floor a precision's gap is read against. Also: the image
layer alone forward+backward (Conv2D vs SpaceToDepthConv2D), the input pipeline's seconds per batch,
and `xla_steps` train steps with jit_compile against as many without.
"""
import os
import time

import numpy as np

from pipelines.benchmarks.windows import TRAINING_FLOPS_PER_MAC

VARIANTS = {"conv_float32": (1, "float32"), "float32": (2, "float32"),
            "conv_mixed_bfloat16": (1, "mixed_bfloat16"), "mixed_bfloat16": (2, "mixed_bfloat16")}


def _latents(data, spec, n, epochs, seed):
  """Latents of the first n training images and of the test split under a briefly trained
  classifier (float32), as the decoder stage computes them."""
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.lad import decoder
  from lad_tf.runtime import execution, losses
  run = execution.ExecutionConfig(seed=seed, verbose=0, precision="float32")
  run.seed_everything()
  train = data.train.take(np.arange(min(n, len(data.train))))
  classifier = models.build_classifier(spec.classifier, spec.image_shape, spec.num_classes)
  ds = datasets.to_tf_dataset(train, spec.classifier_batch_size, shuffle=True, seed=seed)
  execution.fit(classifier, losses.classification, ds, run, epochs, lambda: keras.optimizers.Adam(1e-3))
  phi, _ = models.split_at_latent(classifier)
  return train, decoder.latents(phi, train.x), decoder.latents(phi, data.test.x)


def _layer_ms(policy, batch_size, repeats=5):
  """Forward+backward milliseconds of the image layer (32x32x16 -> 28x28x1, 5x5, sigmoid) as
  Conv2D and as SpaceToDepthConv2D with the same weights, alternately; best of `repeats`."""
  import keras
  import tensorflow as tf
  from lad_tf.models.space_to_depth import SpaceToDepthConv2D
  dtype = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float32
  x = tf.cast(tf.random.stateless_uniform((batch_size, 32, 32, 16), (0, 0)), dtype)
  pair = {"Conv2D": keras.layers.Conv2D(1, 5, activation="sigmoid", dtype=policy),
          "SpaceToDepthConv2D": SpaceToDepthConv2D(1, 5, block=2, activation="sigmoid", dtype=policy)}
  for layer in pair.values():
    layer.build(x.shape)
  pair["SpaceToDepthConv2D"].set_weights(pair["Conv2D"].get_weights())
  steps = {}
  for name, layer in pair.items():
    def step(x, layer=layer):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.square(tf.cast(layer(x), tf.float32)))
      return tape.gradient(loss, [x, *layer.trainable_variables])
    steps[name] = tf.function(step)
    steps[name](x)
  best = {name: float("inf") for name in pair}
  for _ in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      for _ in range(3):
        out = step(x)
      _ = [g.numpy() for g in out]
      best[name] = min(best[name], (time.perf_counter() - start) / 3 * 1000)
  return best


def _xla_probe(z, x, batch_size, steps, seed):
  """Seconds per train step of the float32 decoder with and without jit_compile, alternately."""
  import keras
  import tensorflow as tf
  from lad_tf import models
  from lad_tf.runtime import execution, losses
  ds = tf.data.Dataset.from_tensor_slices((z[:batch_size * steps], x[:batch_size * steps])).batch(batch_size).cache()
  trainers = {}
  for jit in (False, True):
    keras.utils.set_random_seed(seed)
    run = execution.ExecutionConfig(seed=seed, verbose=0, precision="float32", jit_compile=jit)
    trainers[jit] = execution.Training(models.generators.lenet5_decoder(z.shape[1]), losses.reconstruction("l2"),
                                       run, lambda: keras.optimizers.Adam(1e-3), name="xla probe")
    trainers[jit].fit(ds.take(1), 1, verbose=0)  # traces (and compiles)
  best = {False: float("inf"), True: float("inf")}
  for _ in range(2):
    for jit, trainer in trainers.items():
      start = time.perf_counter()
      trainer.fit(ds, 1, verbose=0)
      best[jit] = min(best[jit], (time.perf_counter() - start) / steps)
  return {"steps": steps, "step_s": best[False], "jit_step_s": best[True], "jit_slowdown": best[True] / best[False]}


def _input_pipeline_s(z, x, batch_size, seed):
  """Seconds per batch of the decoder stage's shuffled (z, x) pipeline alone, over one epoch."""
  from lad_tf.lad import decoder
  ds = decoder._pairs(z, x, batch_size, seed)
  start, batches = time.perf_counter(), 0
  for _ in ds:
    batches += 1
  return (time.perf_counter() - start) / max(batches, 1)


def run(dataset="fashion_mnist", n=0, seed=0, epochs=4, classifier_epochs=1, batch_size=0,
        variants="conv_float32+float32+conv_mixed_bfloat16+mixed_bfloat16", xla_steps=10, data_dir=None):
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.lad import decoder
  from lad_tf.runtime import execution, losses
  from pipelines.benchmarks import windows
  n = n or 20000
  names = [v for v in str(variants).replace(",", "+").split("+") if v]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise ValueError(f"unknown decoder variants {unknown}; known: {', '.join(VARIANTS)}")
  spec = datasets.get_spec(dataset)
  if spec.generator != "lenet5_decoder":
    raise ValueError(f"the decoder suite measures lenet5_decoder; {dataset}'s decoder is {spec.generator}")
  batch_size = batch_size or spec.generator_batch_size
  data = datasets.load(dataset, data_dir=data_dir)
  load_before = os.getloadavg()
  train, z_train, z_test = _latents(data, spec, n, classifier_epochs, seed)
  loss = losses.reconstruction(spec.recon_norm)
  keras.utils.set_random_seed(seed)
  initial = models.generators.lenet5_decoder(z_train.shape[1], spec.image_shape, image_block=1).get_weights()
  trainers, feeds = {}, {}
  for name in names:
    block, policy = VARIANTS[name]
    model = models.generators.lenet5_decoder(z_train.shape[1], spec.image_shape, image_block=block)
    model.set_weights(initial)
    run_config = execution.ExecutionConfig(seed=seed, verbose=0, precision=policy)
    trainers[name] = execution.Training(model, loss, run_config, lambda: keras.optimizers.Adam(1e-3), name=name)
    feeds[name] = decoder._pairs(z_train, train.x, batch_size, seed)  # the same order for every variant
  raw = {name: {"image_layer": "SpaceToDepthConv2D" if VARIANTS[name][0] > 1 else "Conv2D",
                "precision": VARIANTS[name][1], "epoch_wall_s": [], "epoch_cpu_s": [], "epoch_loss": []}
         for name in names}
  for epoch in range(epochs):
    for name in names:
      start, start_cpu = time.perf_counter(), time.process_time()
      history = trainers[name].fit(feeds[name], 1, verbose=0)
      raw[name]["epoch_wall_s"].append(time.perf_counter() - start)
      raw[name]["epoch_cpu_s"].append(time.process_time() - start_cpu)
      raw[name]["epoch_loss"].append(float(history["loss"][-1]))
      print(f"[decoder] epoch {epoch + 1} {name}: {raw[name]['epoch_wall_s'][-1]:.1f} s wall, "
            f"{raw[name]['epoch_cpu_s'][-1]:.1f} s CPU, loss {raw[name]['epoch_loss'][-1]:.5f}", flush=True)
  splits = {"train": decoder._pairs(z_train, train.x, 512), "test": decoder._pairs(z_test, data.test.x, 512)}
  for name in names:
    model = trainers[name].finish()
    raw[name].update({f"{split}_loss": execution.evaluate(model, loss, ds)["loss"] for split, ds in splits.items()})
  macs = windows.multiply_adds(models.generators.lenet5_decoder(z_train.shape[1], spec.image_shape))
  summary = summarize(raw, len(train), macs, windows.cpu_peak())
  layer = {policy: _layer_ms(policy, batch_size) for policy in ("float32", "mixed_bfloat16")}
  xla = _xla_probe(z_train, train.x, batch_size, int(xla_steps), seed) if xla_steps else None
  return {
      "dataset": dataset, "n": len(train), "epochs": epochs, "batch_size": batch_size,
      "classifier_epochs": classifier_epochs, "recon_norm": spec.recon_norm, **summary,
      "image_layer_fwd_bwd_ms": layer,
      "input_pipeline_s_per_batch": _input_pipeline_s(z_train, train.x, batch_size, seed),
      "xla": xla,
      "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
      "timing": "epochs alternate between the variants in one process; best epoch after the first; wall "
                "and process CPU seconds (the machine is shared: read ratios, not absolute times)",
  }


def _best(values):
  """The smallest of a per-epoch list, the first epoch (which traces) left out when there are more."""
  return min(values[1:] or values)


def summarize(raw, n, macs, peak):
  """Throughput and ratios from the per-epoch figures {variant: {epoch_wall_s, epoch_cpu_s, train_loss,
  test_loss, precision, ...}} of one run. Wall-clock ratios swing with the load of a shared machine
  (an epoch can take twice its CPU time when one of TensorFlow's two threads waits for a core); the
  process CPU seconds per epoch are the steadier measure of the work each variant needs."""
  variants = {}
  for name, f in raw.items():
    images_s, images_cpu_s = n / _best(f["epoch_wall_s"]), n / _best(f["epoch_cpu_s"])
    gflops = images_s * macs * TRAINING_FLOPS_PER_MAC / 1e9
    bf16 = f["precision"] == "mixed_bfloat16"
    variants[name] = {
        **f, "best_epoch_wall_s": _best(f["epoch_wall_s"]), "best_epoch_cpu_s": _best(f["epoch_cpu_s"]),
        "images_per_s": images_s, "images_per_cpu_s": images_cpu_s,
        "full_epoch_cpu_s_at_60000": 60000 / images_cpu_s,
        "achieved_gflops": gflops,
        "fraction_of_peak": gflops / (peak["bf16_peak_gflops"] if bf16 else peak["fp32_peak_gflops"])}
  out = {"forward_multiply_adds_per_image": macs, "cpu_peak": peak, "variants": variants}
  base = variants.get("conv_float32") or variants.get("float32")
  if base:
    out["baseline"] = "conv_float32" if "conv_float32" in variants else "float32"
    out["speedup_wall"] = {k: base["best_epoch_wall_s"] / v["best_epoch_wall_s"] for k, v in variants.items()}
    out["speedup_cpu"] = {k: base["best_epoch_cpu_s"] / v["best_epoch_cpu_s"] for k, v in variants.items()}
  for plain, blocked in (("conv_float32", "float32"), ("conv_mixed_bfloat16", "mixed_bfloat16")):
    if plain in variants and blocked in variants:
      out[f"{blocked}_speedup_cpu_over_{plain}"] = variants[plain]["best_epoch_cpu_s"] / variants[blocked]["best_epoch_cpu_s"]
  if "conv_float32" in variants and "float32" in variants:
    # the two differ only by the order of float32 sums: their gap is what rounding alone does
    out["test_loss_noise_floor"] = abs(variants["float32"]["test_loss"] - variants["conv_float32"]["test_loss"])
  if "float32" in variants and "mixed_bfloat16" in variants:
    out["mixed_bfloat16_test_loss_minus_float32"] = variants["mixed_bfloat16"]["test_loss"] - variants["float32"]["test_loss"]
  return out
