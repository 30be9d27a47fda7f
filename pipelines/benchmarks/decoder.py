"""Decoder benchmark: training speed of the digits decoder (lenet5_decoder, Table XI) per formulation
and precision, side by side in one run, with the reconstruction error each reaches.

`python -m pipelines.benchmark decoder [--dataset=fashion_mnist] [--n=20000] [--set=epochs=4]`

The spec's classifier is trained `classifier_epochs` on the first n training images (float32), its
latents computed once, then each variant trains the decoder from the same initial weights on the same
(z, x) batches in the same order (its own dataset with the same seed), one epoch at a time in
alternation (A B C D A B C D ...: the machine is shared, so ratios are read between neighbours):

  conv_float32          image layer as keras Conv2D, float32 (the decoder before this suite)
  float32               image layer as SpaceToDepthConv2D (the same outputs to float tolerance), float32
  conv_mixed_bfloat16   Conv2D, mixed_bfloat16 (what precision=auto ran on AVX512-BF16 CPUs before)
  mixed_bfloat16        SpaceToDepthConv2D, mixed_bfloat16 (precision=auto now)

Reported per variant: each epoch's wall and process CPU seconds, images/s of the best epoch after the
first (which traces), the achieved multiply-add rate against the cores' peak, and the train (the n
images) and test reconstruction loss after the last epoch. conv_float32 vs float32 differ only by the
order of float32 sums, so their loss gap is the noise floor a precision's gap is read against. Also:
the image layer alone forward+backward (Conv2D vs SpaceToDepthConv2D), the input pipeline's seconds
per batch, and `xla_steps` train steps with jit_compile against as many without.
"""
import os
import time

import numpy as np

VARIANTS = {"conv_float32": (1, "float32"), "float32": (2, "float32"),
            "conv_mixed_bfloat16": (1, "mixed_bfloat16"), "mixed_bfloat16": (2, "mixed_bfloat16")}


def _latents(data, spec, n, epochs, seed):
  """Latents of the first n training images and of the test split under a briefly trained
  classifier (float32), as the decoder stage computes them."""
  import keras
  from lad_tf import datasets, decoder, execution, losses, models
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
  from lad_tf import execution, losses, models
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
  from lad_tf import decoder
  ds = decoder._pairs(z, x, batch_size, seed)
  start, batches = time.perf_counter(), 0
  for _ in ds:
    batches += 1
  return (time.perf_counter() - start) / max(batches, 1)


def run(dataset="fashion_mnist", n=0, seed=0, epochs=4, classifier_epochs=1, batch_size=0,
        variants="conv_float32,float32,conv_mixed_bfloat16,mixed_bfloat16", xla_steps=10, data_dir=None):
  import keras
  from lad_tf import datasets, decoder, execution, losses, models
  from pipelines.benchmarks import windows
  n = n or 20000
  names = [v for v in str(variants).split(",") if v]
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
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for epoch in range(epochs):
    for name in names:
      start, start_cpu = time.perf_counter(), time.process_time()
      trainers[name].fit(feeds[name], 1, verbose=0)
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
      print(f"[decoder] epoch {epoch + 1} {name}: {wall[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU",
            flush=True)
  peak = windows.cpu_peak()
  macs = windows.multiply_adds(models.generators.lenet5_decoder(z_train.shape[1], spec.image_shape))
  splits = {"train": decoder._pairs(z_train, train.x, 512), "test": decoder._pairs(z_test, data.test.x, 512)}
  figures = {}
  for name in names:
    model = trainers[name].finish()
    timed = wall[name][1:] or wall[name]
    best = int(np.argmin(timed)) + (1 if len(wall[name]) > 1 else 0)
    images_s = len(train) / wall[name][best]
    gflops = images_s * macs * windows.TRAINING_FLOPS_PER_MAC / 1e9
    bf16 = VARIANTS[name][1] == "mixed_bfloat16"
    figures[name] = {
        "image_layer": "SpaceToDepthConv2D" if VARIANTS[name][0] > 1 else "Conv2D",
        "precision": VARIANTS[name][1],
        "epoch_wall_s": wall[name], "epoch_cpu_s": cpu[name],
        "best_epoch_s": wall[name][best], "images_per_s": images_s,
        "images_per_cpu_s": len(train) / cpu[name][best],
        "full_epoch_s_at_60000": 60000 / images_s,
        "achieved_gflops": gflops,
        "fraction_of_peak": gflops / (peak["bf16_peak_gflops"] if bf16 else peak["fp32_peak_gflops"]),
        **{f"{split}_loss": execution.evaluate(model, loss, ds)["loss"] for split, ds in splits.items()},
    }
  base = figures.get("conv_float32")
  speedup = {name: base["best_epoch_s"] / f["best_epoch_s"] for name, f in figures.items()} if base else {}
  layer = {policy: _layer_ms(policy, batch_size) for policy in ("float32", "mixed_bfloat16")}
  xla = _xla_probe(z_train, train.x, batch_size, int(xla_steps), seed) if xla_steps else None
  return {
      "dataset": dataset, "n": len(train), "epochs": epochs, "batch_size": batch_size,
      "classifier_epochs": classifier_epochs, "recon_norm": spec.recon_norm,
      "forward_multiply_adds_per_image": macs, "cpu_peak": peak,
      "variants": figures, "speedup_vs_conv_float32": speedup,
      "loss_noise_floor": (abs(figures["float32"]["test_loss"] - base["test_loss"])
                           if base and "float32" in figures else None),
      "image_layer_fwd_bwd_ms": layer,
      "input_pipeline_s_per_batch": _input_pipeline_s(z_train, train.x, batch_size, seed),
      "xla": xla,
      "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
      "timing": "epochs alternate between the variants in one process; best epoch after the first; wall "
                "and process CPU seconds (the machine is shared: read ratios, not absolute times)",
  }
