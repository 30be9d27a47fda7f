"""What AutoAttack's time is made of, against the model's own speed: `python -m pipelines.benchmark
autoattack_cost --set=run_dir=DIR [--n=1000] [--set=batch=512,version=standard]`.

DIR is a `pipelines.defend` work directory; the suite attacks its defended model on the robustness
stage's images (the same pick and seed), as that stage does, and counts every image the attacks pass
through the model and every image whose input gradient they take (a counting wrapper: a variable
incremented in the forward pass, and in the backward pass through an identity with a custom
gradient). In the same process it times the model alone at `batch` images: a forward pass, and a
forward pass with the input gradient. Per attack: seconds, passes, and its efficiency, the time those
passes take at the model's own rates over the time the attack took. An efficiency near 1 says the
attack's own work (projections, sorting, bookkeeping) costs little and only a faster model (another
precision, other kernels) would shorten the evaluation.
"""
import os
import time

import numpy as np


class CountingModel:
  """model_fn that counts the images it sees and the images whose input gradient is taken."""

  def __init__(self, model):
    import tensorflow as tf
    self.model = model
    self.images = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.gradients = tf.Variable(0, dtype=tf.int64, trainable=False)

    @tf.custom_gradient
    def watched(x):
      def backward(upstream):
        with tf.control_dependencies([self.gradients.assign_add(tf.cast(tf.shape(upstream)[0], tf.int64))]):
          return tf.identity(upstream)
      return tf.identity(x), backward

    self._watched = watched

  def __call__(self, x):
    import tensorflow as tf
    with tf.control_dependencies([self.images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))]):
      return self.model(self._watched(x))

  def counts(self):
    return int(self.images.numpy()), int(self.gradients.numpy())


class _PerAttack(list):
  """autoattack's `record`: each attack's entry gets the model passes counted since the one before
  (the first also counts the clean prediction, n + 1 images, that precedes it)."""

  def __init__(self, counting):
    super().__init__()
    self.counting, self.last = counting, (0, 0)

  def append(self, entry):
    now = self.counting.counts()
    super().append({**entry, "model_images": now[0] - self.last[0], "gradient_images": now[1] - self.last[1]})
    self.last = now


def model_rates(model, x, batch, seconds):
  """(forward images/s, forward + input-gradient images/s) of the model alone at `batch` images (median
  call, as the kernels suite times)."""
  import tensorflow as tf
  from pipelines.benchmarks.kernels import median_call_s
  images = tf.constant(np.resize(x, (batch, *x.shape[1:])))
  forward = tf.function(lambda z: model(z))

  @tf.function
  def gradient(z):
    with tf.GradientTape() as tape:
      tape.watch(z)
      total = tf.reduce_sum(tf.reduce_logsumexp(model(z), axis=1))
    return tape.gradient(total, z)

  return tuple(batch / median_call_s(lambda: fn(images), seconds) for fn in (forward, gradient))


def _images(run_dir, n):
  from lad_tf.data import datasets
  from lad_tf.run.defend_stages import robustness_images
  from lad_tf.runtime.files import read_json
  config = read_json(os.path.join(run_dir, "config.json"))
  x, y = robustness_images(config["dataset"], config.get("data_dir"), config["calibration_per_class"],
                           config["seed"], n)
  return datasets.get_spec(config["dataset"]), config["seed"], x, y


def run(run_dir=None, n=0, batch=512, version="standard", seconds=3.0, dataset=None, seed=None):
  """See the module docstring. The dataset, the images and the attacks' seed are the work directory's
  (`dataset` and `seed` are ignored)."""
  if not run_dir or not os.path.exists(os.path.join(run_dir, "defended", "model.keras")):
    raise ValueError(f"autoattack_cost needs --set=run_dir=DIR, a defend work directory with a defended "
                     f"model (got {run_dir!r})")
  from lad_tf.attacks.autoattack import autoattack, figures
  from lad_tf.runtime.files import load_model
  spec, run_seed, x, y = _images(run_dir, int(n) or 1000)
  model = load_model(os.path.join(run_dir, "defended", "model.keras"), "defended classifier")
  forward_rate, gradient_rate = model_rates(model, x, int(batch), float(seconds))
  counting = CountingModel(model)
  record = _PerAttack(counting)
  start = time.perf_counter()
  _, broken_by = autoattack(counting, x, y, spec.attack_eps, version=version, seed=run_seed,
                            batch_size=int(batch), log=print, record=record)
  total_s = time.perf_counter() - start
  attacks = {}
  for entry in record:
    ideal = (entry["gradient_images"] / gradient_rate
             + (entry["model_images"] - entry["gradient_images"]) / forward_rate)
    attacks[entry["attack"]] = {**entry, "model_time_s": ideal, "efficiency": ideal / entry["seconds"]}
  ideal_total = sum(a["model_time_s"] for a in attacks.values())
  return {"run_dir": run_dir, "dataset": spec.name, "eps": spec.attack_eps, "examples": len(y), "version": version,
          "batch": int(batch), "model_rates": {"forward_images_s": forward_rate, "gradient_images_s": gradient_rate},
          "attacks": attacks, "total_s": total_s, "model_time_s": ideal_total, "efficiency": ideal_total / total_s,
          **figures(broken_by)}
