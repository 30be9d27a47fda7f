"""Precision benchmark: float32 against mixed_bfloat16 training, side by side in one run.

`python -m pipelines.benchmark precision [--dataset=fashion_mnist] [--n=20000] [--set=epochs=3]`

For each policy, in alternation (the machine is shared: rounds A B A B), the dataset spec's classifier
(LeNet-5 on Fashion-MNIST) is trained from the same starting weights on the same n training examples
for `epochs` epochs through lad_tf.runtime.execution.fit, then its decoder (Eq. 2) for `epochs` epochs on the
frozen float32 latents. Reported per policy: the best epoch time of each (the first epoch, which traces,
excluded) and the whole classifier and decoder trainings, the clean test accuracy and the decoder's
test reconstruction loss. `goal_met` is the rule lad_tf.runtime.precision.auto_precision follows:
mixed_bfloat16 only where the CPU has AVX512-BF16 or AMX, its accuracy is within 0.3 points of
float32's and the two trainings together are faster.
"""
import time

import numpy as np

POLICIES = ("float32", "mixed_bfloat16")
MAX_ACCURACY_DROP = 0.003


def _train_once(policy, data, spec, weights, n, epochs, seed):
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.lad import decoder as decoder_lib
  from lad_tf.runtime import execution, losses, training
  # the executor trains copies of the models under `policy` (ExecutionConfig.precision)
  run = execution.ExecutionConfig(seed=seed, verbose=0, precision=policy)
  model = models.build_classifier(spec.classifier, spec.image_shape, spec.num_classes)
  model.set_weights(weights)
  train = data.train.take(np.arange(min(n, len(data.train))))
  stamps = []
  stamp = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: stamps.append(time.perf_counter()))
  run.seed_everything()
  ds = datasets.to_tf_dataset(train, spec.classifier_batch_size, shuffle=True, seed=seed)
  start = time.perf_counter()
  execution.fit(model, losses.classification, ds, run, epochs, lambda: keras.optimizers.Adam(1e-3),
                callbacks=[stamp])
  epoch_s = np.diff([start] + stamps)
  accuracy = training.accuracy(model, data.test.x, data.test.y)
  phi, _ = models.split_at_latent(model)
  decoder = models.build_generator(spec.generator, int(phi.output_shape[-1]), spec.image_shape)
  stamps.clear()
  start = time.perf_counter()
  result = decoder_lib.train_decoder(phi, decoder, train, data.test, decoder_lib.DecoderConfig(
      epochs=epochs, batch_size=spec.generator_batch_size, recon_norm=spec.recon_norm, execution=run), None)
  # train_decoder times latents + fit + evaluation: the per-epoch figure is the fit's only
  decoder_s = time.perf_counter() - start
  return {"classifier_epoch_s": float(np.min(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)),
          "classifier_total_s": float(np.sum(epoch_s)), "test_accuracy": accuracy,
          "decoder_total_s": decoder_s, "decoder_test_loss": result["test_loss"]}


def run(dataset="fashion_mnist", n=0, seed=0, epochs=3, rounds=2):
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import precision
  n = n or 20000
  spec = datasets.get_spec(dataset)
  data = datasets.load(dataset)
  keras.utils.set_random_seed(seed)
  weights = models.build_classifier(spec.classifier, spec.image_shape, spec.num_classes).get_weights()
  flags = precision.cpu_flags()
  results = {p: [] for p in POLICIES}
  for r in range(rounds):
    for policy in POLICIES:
      figures = _train_once(policy, data, spec, weights, n, epochs, seed)
      print(f"[precision] round {r + 1} {policy}: {figures}", flush=True)
      results[policy].append(figures)
  return summarize(dataset, n, epochs, rounds, results, flags)


def summarize(dataset, n, epochs, rounds, results, flags):
  """The figures of alternating runs {policy: [figures per round]}: best times, mean accuracies."""
  summary = {}
  for policy, runs in results.items():
    summary[policy] = {
        "classifier_epoch_s": min(f["classifier_epoch_s"] for f in runs),
        "classifier_total_s": min(f["classifier_total_s"] for f in runs),
        "decoder_total_s": min(f["decoder_total_s"] for f in runs),
        "test_accuracy": float(np.mean([f["test_accuracy"] for f in runs])),
        "decoder_test_loss": float(np.mean([f["decoder_test_loss"] for f in runs])),
        "runs": runs}
  f32, bf16 = summary["float32"], summary["mixed_bfloat16"]
  drop = f32["test_accuracy"] - bf16["test_accuracy"]
  has_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
  total = lambda p: p["classifier_total_s"] + p["decoder_total_s"]
  return {
      "dataset": dataset, "n": n, "epochs": epochs, "rounds": rounds,
      "cpu_bf16_flags": sorted({"avx512_bf16", "amx_bf16", "amx_tile"} & set(flags)),
      "policies": summary,
      "speedup_classifier_epoch": f32["classifier_epoch_s"] / bf16["classifier_epoch_s"],
      "speedup_classifier_total": f32["classifier_total_s"] / bf16["classifier_total_s"],
      "speedup_decoder": f32["decoder_total_s"] / bf16["decoder_total_s"],
      "speedup_training_total": total(f32) / total(bf16),
      "accuracy_drop_points": 100 * drop,
      "max_accuracy_drop_points": 100 * MAX_ACCURACY_DROP,
      "goal_met": bool(has_bf16 and abs(drop) <= MAX_ACCURACY_DROP and total(f32) > total(bf16)),
      "timing": f"rounds alternate float32 / mixed_bfloat16 in one process ({rounds} each); best of the "
                "rounds for each time (classifier epoch: best epoch after the first)",
  }
