"""Small LeNet-5 classifiers on the real `digits` images for the attack tests: a plainly trained one
and one adversarially fine-tuned with FGSM + random start (Wong et al. 2020), so attacks are checked
on a model that is not trivially broken too. Each is trained once per test run (tests/trained.py)."""
import numpy as np
import tensorflow as tf

import trained
from lad_tf import attacks, models
from lad_tf.data import datasets
from lad_tf.runtime import training
from lad_tf.runtime.execution import ExecutionConfig

EPS = 0.1  # digits' attack eps


def _train_plain_lenet(epochs, seed):
  import keras
  data = datasets.load("digits")
  keras.utils.set_random_seed(seed)
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  training.train_classifier(model, data.train, data.test,
                            training.TrainConfig(epochs=epochs, batch_size=64,
                                                execution=ExecutionConfig(seed=seed, verbose=0)),
                            None)
  return model


def plain_lenet(epochs=15, seed=0):
  """(model, data): a LeNet-5 trained on digits; test accuracy well above 0.9."""
  return trained.keras_model("plain_lenet", _train_plain_lenet, epochs=epochs, seed=seed), datasets.load("digits")


def _train_fgsm_rs_lenet(eps):
  model, data = plain_lenet()
  return fgsm_rs_finetune(model, data.train, eps)


def fgsm_rs_lenet(eps=EPS):
  """The plain LeNet-5 fine-tuned by `fgsm_rs_finetune` (this file's own loop, not lad_tf.robust)."""
  return trained.keras_model("fgsm_rs_lenet", _train_fgsm_rs_lenet, eps=eps)


def _train_atta_lenet(eps, epochs, seed):
  from lad_tf import robust
  model, data = plain_lenet()
  config = robust.RobustConfig(method="atta", eps=eps, epochs=epochs, batch_size=32, learning_rate=2e-3,
                               guard_examples=200, execution=ExecutionConfig(seed=seed, verbose=0))
  return robust.train(model, data.train.x, data.train.y, config)[0]


def atta_lenet(eps=EPS, epochs=4, seed=0):
  """The plain LeNet-5 fine-tuned by the project's own defence (lad_tf.robust, method "atta"), so the
  attacks are checked on a model the library itself made robust (about 20 s on 2 cores)."""
  return trained.keras_model("atta_lenet", _train_atta_lenet, eps=eps, epochs=epochs, seed=seed)


def fgsm_rs_finetune(model, train, eps, epochs=6, batch_size=64, learning_rate=1e-3, seed=0):
  """A copy of `model` fine-tuned on FGSM-with-random-start examples (step 1.25 eps) only."""
  import keras
  robust = keras.models.clone_model(model)
  robust.set_weights(model.get_weights())
  optimizer = keras.optimizers.Adam(learning_rate)
  loss_fn = lambda yb, logits: tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))

  @tf.function
  def step(xb, yb, noise):
    x0 = tf.clip_by_value(xb + noise, 0.0, 1.0)
    with tf.GradientTape() as tape:
      tape.watch(x0)
      loss = loss_fn(yb, robust(x0))
    x_adv = x0 + 1.25 * eps * tf.sign(tape.gradient(loss, x0))
    x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, xb - eps, xb + eps), 0.0, 1.0)
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, robust(x_adv, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, robust.trainable_variables),
                                  robust.trainable_variables))
    return loss

  rng = np.random.default_rng(seed)
  x, y = train.x, train.y.astype(np.int32)
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      rows = order[start:start + batch_size]
      step(tf.constant(x[rows]), tf.constant(y[rows]),
           tf.constant(rng.uniform(-eps, eps, x[rows].shape).astype(np.float32)))
  return robust


def sample_images(data, per_class, seed=0):
  idx = datasets.stratified_indices(data.test.y, per_class, seed=seed)
  return data.test.x[idx], data.test.y[idx]


def accuracy(model_fn, x, y):
  """Top-1 accuracy of any logits callable (a Keras model or a wrapper around one)."""
  return float(np.mean(attacks.predict(model_fn, x) == y))


LAD_PARTS = ("classifier", "generator", "boundaries")


def tiny_lad_config(**overrides):
  """The smallest LAD run the pipeline tests use: 4 classifier and 4 decoder epochs (its loss recorded
  at 1, 2 and 4), 5 calibration images per class, plain SVMs, eps 0.1 and 0.3. test_fine_tune_schedule
  and test_reproduce (through its command line) run it, so seed_defend_stages trains its parts once."""
  from lad_tf.run import defend
  settings = dict(dataset="digits", defence="lad", classifier_epochs=4, generator_epochs=4, decoder_loss_epochs=(1, 2, 4),
                  calibration_per_class=5, attention="none", eps_grid=(0.1, 0.3), fine_tune_eps=(0.1, 0.3),
                  execution=ExecutionConfig(verbose=0))
  return defend.DefendConfig(**{**settings, **overrides})


def _run_defend_stages(folder, config):
  import dataclasses
  from lad_tf.run import defend
  # defence lad needs every stage; these stages' fingerprints do not depend on the defence
  defend.DefendRun(folder, dataclasses.replace(config, defence="lad")).run(stop_after=LAD_PARTS[-1])


def seed_defend_stages(workdir, config, stages=LAD_PARTS):
  """Puts the finished `stages` (some of LAD_PARTS) of a digits defend run with `config`'s settings into
  `workdir`, from a run made once per test run, so defend there skips them (their fingerprints match)
  and trains the rest. Other settings make another artifact: nothing stale is reused."""
  import os
  import shutil
  from lad_tf.run import defend_stages
  from lad_tf.run.stage import fingerprint_settings
  from lad_tf.runtime.files import fingerprint
  spec = datasets.get_spec(config.dataset)
  settings = fingerprint_settings(defend_stages.STAGES, config.resolved(spec), spec)
  folder = trained.artifact("defend_stages", lambda d: _run_defend_stages(d, config),
                            **{stage: fingerprint(settings[stage]) for stage in LAD_PARTS})
  for stage in stages:
    shutil.copytree(os.path.join(folder, stage), os.path.join(workdir, stage))
  if "generator" in stages:  # the figure its stage draws beside its folder, as the run would have left it
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    shutil.copy(os.path.join(folder, "figures", "reconstructions.png"), os.path.join(workdir, "figures"))
  return workdir
