"""The evaluation's auxiliary models: the attackers' black-box model (with batch-norm
recalibration), the attack-based baselines (the original fine-tuned with the Eq. 4 trainer on
FGSM, PGD, JSMA or CW examples from the LAD fine-tuning sources) and the `clean` control (the
original fine-tuned exactly as the defence was, on x' = x: what fine-tuning alone buys). Each is cached in
DIR/evaluation/models keyed on the fingerprint of its settings (lad_tf.run.workdir.WorkDir.cached_model).
"""
import dataclasses
import logging
import tempfile
import time

import numpy as np

from lad_tf import attacks as attacks_lib
from lad_tf import models
from lad_tf.data import datasets
from lad_tf.lad import fine_tuning
from lad_tf.runtime import training
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.evaluation.protocol import attack_settings, craft, is_targeted
from lad_tf.runtime.training import accuracy

log = logging.getLogger("lad_tf")
CACHE = "evaluation/models"
CLEAN_CONTROL = "clean"  # the baseline name of the control


def fine_tune_config(config, run_config):
  """The Eq. 4 settings of the evaluation's fine-tunings: the defended model's schedule (config.json;
  learning rate, momentum, batch), with EvalConfig.fine_tune_epochs, else the defended model's epochs,
  else the schedule's."""
  full = run_config.get("full", {}) or {}
  epochs = config.fine_tune_epochs or full.get("fine_tune_epochs")
  return fine_tuning.schedule_config(full.get("fine_tune_schedule") or fine_tuning.DEFAULT_SCHEDULE, epochs,
                                 execution=ExecutionConfig(seed=config.seed, verbose=0))


def defence_fine_tune_config(tune, run_config):
  """The Eq. 4 settings the defence itself was fine-tuned with (config.json: its epochs, seed and
  training precision), for the clean control; `tune` fills what config.json does not hold."""
  full = run_config.get("full", {}) or {}
  run_execution = full.get("execution", {}) or {}
  epochs = full.get("fine_tune_epochs") or tune.epochs
  seed = run_config.get("seed", run_execution.get("seed", tune.execution.seed))
  execution = dataclasses.replace(tune.execution, seed=int(seed),
                                  precision=run_execution.get("precision", tune.execution.precision))
  return dataclasses.replace(tune, epochs=int(epochs), execution=execution)


def recalibrate_batch_norm(model, x, batch=2000):
  """Sets every BatchNormalization layer's moving statistics to those of `x` (one forward pass in
  training mode with momentum 0; "precise BN"). After short trainings the moving variance still
  carries its initial value 1 (momentum 0.99 needs ~1,000 steps to forget it), which ruins inference."""
  import keras

  def walk(layer):
    for sub in getattr(layer, "layers", []):
      yield sub
      yield from walk(sub)

  layers = [l for l in walk(model) if isinstance(l, keras.layers.BatchNormalization)]
  if not layers:
    return model
  saved = [l.momentum for l in layers]
  for layer in layers:
    layer.momentum = 0.0
  try:
    model(x[:batch], training=True)
  finally:
    for layer, momentum in zip(layers, saved):
      layer.momentum = momentum
  return model


def train_blackbox(spec, train, epochs, seed=0, examples=None, batch_size=None):
  """The attackers' model: DatasetSpec.blackbox built fresh and trained on the training split (a
  stratified subset of `examples` images when given), then its BatchNorm statistics re-estimated."""
  import keras
  if examples and examples < len(train):
    per_class = int(np.ceil(examples / spec.num_classes))
    train = train.take(datasets.stratified_indices(train.y, per_class, seed + 1))
  keras.utils.set_random_seed(seed + 1)
  model = models.build_classifier(spec.blackbox, spec.image_shape, spec.num_classes)
  with tempfile.TemporaryDirectory() as state:
    training.train_classifier(model, train, train.take(np.arange(min(len(train), 500))),
                              training.TrainConfig(epochs=epochs, batch_size=batch_size or spec.classifier_batch_size,
                                                   execution=ExecutionConfig(seed=seed + 1, verbose=0)),
                              state)
  rng = np.random.default_rng(seed + 1)
  recalibrate_batch_norm(model, train.x[rng.permutation(len(train))[:2000]])
  return model


def baseline_examples(attack, original, calibration, generated, rows, config, eps):
  """FGSM / PGD / JSMA / CW examples crafted against `original` from the LAD fine-tuning sources.

  Each generated row's source (calibration.x[index]) gets one example; JSMA and CW aim at the row's
  LAD target. Identical (source, target) pairs are crafted once. Returns (x, x_adv, y).
  """
  index, target = generated.index[rows], generated.target[rows]
  pairs, inverse = np.unique(np.stack([index, target], axis=1), axis=0, return_inverse=True)
  inverse = np.reshape(inverse, -1)
  x, y = calibration.x[pairs[:, 0]], calibration.y[pairs[:, 0]]
  x_adv = craft(attack, original, x, y, config, eps=eps, target=pairs[:, 1] if is_targeted(attack) else None)
  return x[inverse], x_adv[inverse], y[inverse]




def clean_control_examples(contents):
  """The LAD fine-tuning set with x' = x: the same rows (sources, repeats and order) the defence was
  fine-tuned on, each paired with its clean source image. Returns (x, x_adv, y)."""
  index = contents.generated.index[contents.lad_rows]
  x, y = contents.calibration.x[index], contents.calibration.y[index]
  return x, x, y


def train_baselines(work, contents, config, tune, baseline_eps, say):
  """The baselines of config.baselines (attack-based, and the clean control); returns
  ({name: model}, {name: info}, timings)."""
  found, info, timings = {}, {}, {}
  for name in config.baselines:
    start = time.time()
    if name == CLEAN_CONTROL:
      control = defence_fine_tune_config(tune, contents.run_config)
      say(f"evaluate: clean control: fine-tuning the original on {len(contents.lad_rows)} clean images "
          f"(x' = x), {control.epochs} epochs, seed {control.execution.seed}, as the defence")
      settings = {"control": "clean", "rows": int(len(contents.lad_rows)), "fine_tune": dataclasses.asdict(control),
                  "original": work.stage_fingerprint("classifier"),
                  "generation": work.stage_fingerprint("generation"), "defended": work.stage_fingerprint("defended")}
      found["baseline_clean"], reused = work.cached_model(
          CACHE, "baseline_clean", settings,
          lambda control=control: fine_tuning.fine_tune(contents.original, *clean_control_examples(contents), control))
      info["baseline_clean"] = {"fine_tuned_on": int(len(contents.lad_rows)), "epsilon": None, "reused": reused,
                                "control": "x' = x, the defence's fine-tuning settings"}
      timings["baseline_clean"] = time.time() - start
      continue
    say(f"evaluate: baseline: fine-tuning the original on {len(contents.lad_rows)} {name} examples")

    def build(name=name):
      x, x_adv, y = baseline_examples(name, contents.original, contents.calibration,
                                      contents.generated, contents.lad_rows, config, baseline_eps)
      return fine_tuning.fine_tune(contents.original, x, x_adv, y, tune)

    bounded = attacks_lib.get(name).bounded
    settings = {"attack": name, "rows": int(len(contents.lad_rows)), "eps": baseline_eps if bounded else None,
                "fine_tune": dataclasses.asdict(tune), "config": attack_settings(config),
                "original": work.stage_fingerprint("classifier"), "generation": work.stage_fingerprint("generation")}
    found[f"baseline_{name}"], reused = work.cached_model(CACHE, f"baseline_{name}", settings, build)
    info[f"baseline_{name}"] = {"fine_tuned_on": int(len(contents.lad_rows)),
                                "epsilon": baseline_eps if bounded else None, "reused": reused}
    timings[f"baseline_{name}"] = time.time() - start
  return found, info, timings


def blackbox_model(work, contents, config, say):
  """The black-box model (cached); returns (model, info)."""
  spec = contents.spec
  say(f"evaluate: black-box model: training {spec.blackbox} for {config.blackbox_epochs} epochs")
  settings = {"architecture": spec.blackbox, "epochs": config.blackbox_epochs, "seed": config.seed,
              "examples": config.blackbox_train_examples, "batch_size": config.blackbox_batch_size,
              "dataset": spec.name, "data_dir": contents.run_config.get("data_dir")}
  model, reused = work.cached_model(CACHE, "blackbox", settings, lambda: train_blackbox(
      spec, contents.data.train, config.blackbox_epochs, config.seed, config.blackbox_train_examples,
      config.blackbox_batch_size))
  return model, {"architecture": spec.blackbox, "epochs": config.blackbox_epochs, "reused": reused,
                 "clean_accuracy": accuracy(model, contents.evaluation.x, contents.evaluation.y)}
