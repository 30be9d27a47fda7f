"""The defend pipeline's plan: each stage's time estimated from a short timed warm-up.

Before a long run (SVHN: hours on two CPU cores) the user sees what will run and for about how long.
`measure` times a few batches of each costly piece with the run's own models, batch sizes and
execution settings (precision, XLA), on random inputs of the right shapes (time does not depend on
the values): a training step of the classifier, of the decoder, of the boundary fit, of the Eq. 4
fine-tuning and of the robust defence's loss, an attack's input gradient, and the inference of the
classifier and the decoder. The first batch of each is left out (it holds the tracing/compilation).
`estimate` multiplies them by the stage's counts (examples, epochs, batch sizes): the estimate is an
extrapolation of those windows, not a run. AutoAttack's time depends on how many images resist
(each attack runs only on the images the earlier ones left), so the robustness stage gets a range:
from every image broken by APGD-CE to every defended image resisting all four attacks.
pipelines.benchmark's pipeline suite uses the same windows to time SVHN's stages.
"""
import dataclasses
import math
import time
from typing import Dict, Optional

import keras
import numpy as np

from lad_tf.lad import boundary as boundary_lib
from lad_tf import models, robust
from lad_tf.lad import fine_tuning
from lad_tf.runtime import execution, losses, precision
from lad_tf.runtime.progress import StepTimer, duration
from lad_tf.robust import adversaries

INFERENCE_BATCH = 512  # the batch of the pipeline's predict/evaluate loops
ALL_PIECES = ("classifier_step", "classifier_validation", "classifier_inference", "decoder_step",
              "decoder_inference", "boundary_step", "boundary_none_step", "fine_tune_step", "robust_step",
              "attack_gradient")
# AutoAttack's budget per image (lad_tf.attacks.autoattack's standard settings)
AA_ITERATIONS, AA_QUERIES = 100, 5000


@dataclasses.dataclass
class Timings:
  """Wall seconds per batch of each piece (batch sizes in `batch`, this process's CPU seconds per
  batch in `cpu_seconds`); see `measure`."""
  seconds: Dict[str, float]
  batch: Dict[str, int]
  cpu_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StageEstimate:
  name: str
  seconds: float
  parts: Dict[str, float]  # what the estimate adds up, in seconds
  done: bool = False       # already in the work directory: it will be skipped
  upper: Optional[float] = None  # the stage's time at worst, where it depends on the results (AutoAttack)


def time_training(model, loss_fn, x, y, run, optimizer, batches, name="warm-up"):
  """A StepTimer of `batches` training steps of `loss_fn` on batches like (x, y) under the
  ExecutionConfig `run`, after a first (compiling) one. The weights of `model` are left as they were
  (the step trains a copy)."""
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensors((x, y)).repeat(batches + 1)
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  training = execution.Training(copy, loss_fn, run, optimizer, name)
  timer = StepTimer()
  training.fit(ds, 1, verbose=0, callbacks=[timer])
  return timer


def time_inference(model, x, batches):
  """A StepTimer of `batches` `predict` batches of len(x) inputs, after a first one."""
  timer = StepTimer()
  model.predict(np.concatenate([x] * (batches + 1)), batch_size=len(x), verbose=0, callbacks=[timer])
  return timer


def time_gradient(model, x, y, batches):
  """A StepTimer of `batches` input gradients of the cross-entropy (an attack's step) on batches like
  (x, y), after a first (tracing) one."""
  import tensorflow as tf
  x, y = tf.constant(x), tf.constant(y)
  step = tf.function(lambda x, y: adversaries.input_gradient(
      model, x, lambda logits: losses.cross_entropy(y, logits))[0])
  timer = StepTimer()
  for _ in range(batches + 1):
    step(x, y).numpy()
    timer.on_train_batch_end(None)
  return timer


def _random_images(rng, n, shape):
  return rng.random((n, *shape), dtype=np.float32)


def measure(run, batches=3, pieces=None):
  """Timings of the pieces of DefendRun `run` (its spec, config and execution settings).

  pieces: the names to measure (default ALL_PIECES): classifier_step, classifier_validation (inference
  under the training policy), classifier_inference, decoder_step,
  decoder_inference, boundary_step (the config's attention) and boundary_none_step, fine_tune_step,
  robust_step (a training step of the config's robust defence, random stand-ins for the LAD extras it
  reads) and attack_gradient (an input gradient of the float32 classifier, as the attacks take it).
  """
  c, spec = run.config, run.spec
  rng = np.random.default_rng(c.seed)
  wanted = set(ALL_PIECES if pieces is None else pieces)
  exec_ = dataclasses.replace(c.execution, verbose=0)
  classifier = run.planned_classifier()
  latent_dim = None
  if wanted & {"decoder_step", "decoder_inference", "boundary_step", "boundary_none_step"}:  # LAD's parts
    latent_dim = int(models.split_at_latent(classifier, c.latent_layer)[0].output_shape[-1])
  seconds, batch, cpu = {}, {}, {}

  def images(n):
    return _random_images(rng, n, spec.image_shape)

  def labels(n):
    return rng.integers(0, spec.num_classes, n).astype(np.int64)

  def timed(piece, size, fn):
    if piece in wanted:
      timer = fn(size)
      seconds[piece], cpu[piece], batch[piece] = timer.seconds_per_batch(), timer.cpu_seconds_per_batch(), size

  bs = spec.classifier_batch_size
  timed("classifier_step", bs, lambda n: time_training(
      classifier, losses.classification, images(n), labels(n), exec_,
      lambda: keras.optimizers.Adam(1e-3), batches, "classifier"))
  timed("classifier_inference", INFERENCE_BATCH, lambda n: time_inference(classifier, images(n), batches))
  # validation during training runs on the trained copy, under the training policy (bf16 or not)
  timed("classifier_validation", INFERENCE_BATCH, lambda n: time_inference(
      precision.with_policy(classifier, precision.resolve_precision(exec_.precision)), images(n), batches))
  if {"decoder_step", "decoder_inference"} & wanted:
    generator = run.planned_generator(latent_dim)
    z = rng.standard_normal((max(spec.generator_batch_size, INFERENCE_BATCH), latent_dim)).astype(np.float32)
    timed("decoder_step", spec.generator_batch_size, lambda n: time_training(
        generator, losses.reconstruction(c.recon_norm), z[:n], images(n), exec_,
        lambda: keras.optimizers.Adam(1e-3), batches, "generator"))
    timed("decoder_inference", INFERENCE_BATCH, lambda n: time_inference(generator, z[:n], batches))
  pairs = spec.num_classes * (spec.num_classes - 1) // 2
  for piece, mode in (("boundary_step", c.attention), ("boundary_none_step", "none")):
    config = run.boundary_config(mode)

    def fit_window(n, config=config):
      fitter = boundary_lib.compiled_fitter(pairs, config)
      z = rng.standard_normal((n * (batches + 1), pairs, latent_dim)).astype(np.float32)
      y = np.sign(rng.standard_normal((n * (batches + 1), pairs))).astype(np.float32)
      timer = StepTimer()
      fitter.fit(z, y, batch_size=n, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
      return timer
    timed(piece, config.batch_size, fit_window)
  tune = fine_tuning.FineTuneConfig()
  timed("fine_tune_step", tune.batch_size, lambda n: time_training(
      classifier, fine_tuning.eq4_loss(tune.alpha), (images(n), images(n)), labels(n), exec_,
      lambda: keras.optimizers.SGD(tune.learning_rate, momentum=tune.momentum), batches, "fine-tuning"))
  if "robust_step" in wanted and c.robust_training:
    rc = c.robust_config()
    loss_fn = robust.methods.make_loss(rc)
    needs = robust.methods.extras_needed(loss_fn)
    extras = {"guide": lambda n: np.sign(rng.standard_normal((n, *spec.image_shape))).astype(np.int8),
              "target": labels, "decoded": images, "index": lambda n: np.arange(n, dtype=np.int64)}
    if "index" in needs:  # carried perturbations: a buffer of one batch's rows is enough to time a step
      loss_fn.allocate(rc.batch_size, spec.image_shape)
    timed("robust_step", rc.batch_size, lambda n: time_training(
        classifier, loss_fn, {"image": images(n), **{k: extras[k](n) for k in needs if k in extras}}, labels(n), exec_,
        lambda: keras.optimizers.Adam(rc.learning_rate), batches, rc.method))
  timed("attack_gradient", INFERENCE_BATCH, lambda n: time_gradient(classifier, images(n), labels(n), batches))
  keras.utils.set_random_seed(c.seed)  # the stages start from the same seed with or without a plan
  return Timings(seconds, batch, cpu)


def _batches(n, batch_size):
  return math.ceil(n / batch_size)


def estimate(run, timings):
  """StageEstimates of every stage of DefendRun `run` from `timings` (see `measure`)."""
  c, spec = run.config, run.spec
  s, b = timings.seconds, timings.batch
  n_train, n_eval, n_cal = len(run.data.train), len(run.evaluation), len(run.calibration)
  infer = lambda piece, n: _batches(n, b[piece]) * s[piece] if piece in s else 0.0
  steps = lambda piece, n, epochs: epochs * _batches(n, b[piece]) * s[piece] if piece in s else 0.0
  per_image = lambda piece: s[piece] / b[piece] if piece in s else 0.0
  parts = {
      "classifier": {
          "training": steps("classifier_step", n_train, c.classifier_epochs),
          "validation (each epoch)": c.classifier_epochs * infer(
              "classifier_validation" if "classifier_validation" in s else "classifier_inference", n_eval),
          "test accuracy": infer("classifier_inference", n_eval)},
      "generator": {
          "latents (train and test)": infer("classifier_inference", n_train + n_eval),
          "training": steps("decoder_step", n_train, c.generator_epochs),
          "train and test loss": infer("decoder_inference", n_train + n_eval)},
      "boundaries": {
          "latents": infer("classifier_inference", n_cal + n_eval),
          # fit_boundaries: per pair n_cal / k examples of each of its two classes, config epochs
          f"fit ({c.attention})": steps("boundary_step", 2 * n_cal // spec.num_classes,
                                        boundary_lib.BoundaryConfig().epochs),
          **({"fit (none)": steps("boundary_none_step", 2 * n_cal // spec.num_classes,
                                  boundary_lib.BoundaryConfig().epochs)} if c.attention != "none" else {})},
      "generation": {
          # latents, reconstructions, then per eps: decode and classify the calibration seeds
          "decode and classify": (1 + len(set(c.eps_grid) | set(c.fine_tune_eps))) * (
              infer("decoder_inference", n_cal) + infer("classifier_inference", n_cal))},
      "defended": {
          "fine-tuning": steps("fine_tune_step", _fine_tune_rows(c, n_cal), c.fine_tune_epochs),
          "test accuracy": infer("classifier_inference", n_eval)},
  }
  if c.robust_training:
    parts["defended"] = {**_robust_training_parts(c, run, per_image, steps),
                         "test accuracy": infer("classifier_inference", n_eval)}
  # the report's gradient-masking checks (restarts 2, more steps 50) on both models: per image, the eps
  # sweep's 4 PGD-20, FGSM, the unbounded and the longer PGD-50, 2 PGD-20 restarts and the zero gradient
  n_report = min(c.report_images, n_eval)
  parts["report"] = {"gradient-masking checks, both models": 2 * n_report * (4 * 20 + 1 + 50 + 50 + 2 * 20 + 1) *
                     per_image("attack_gradient")}
  upper = {}
  if "attack_gradient" in s and "classifier_inference" in s:
    parts["robustness"], upper["robustness"] = _autoattack_parts(
        c, spec, min(c.robust_eval_examples, n_eval), per_image)
  done = lambda name: run.work.done(name, run.settings[name]) and name not in c.force
  out = []
  for name in c.needed_stages():
    seconds = float(sum(parts.get(name, {}).values()))
    out.append(StageEstimate(name, seconds, parts.get(name, {}), done(name),
                             seconds + upper[name] if name in upper else None))
  return out


def _robust_training_parts(c, run, per_image, steps):
  """The robust defence's training (lad_tf.robust.train): its steps over the training rows, LAD's
  guide or decodes when the method reads them, and the guard's checks (PGD-10 and FGSM on the held-out
  rows before and after every epoch)."""
  rc = c.robust_config()
  n = len(run.robust_train_split())
  held = len(robust.methods.holdout_split(n, rc.guard_examples, rc.seed)[1])
  parts = {"training": steps("robust_step", n - held, rc.epochs)}
  needs = set(robust.methods.extras_needed(robust.methods.make_loss(rc))) - {"index"}
  if needs:  # latents, then per need one or two decodes of every training row (boundary_start.features)
    decodes = 2 * ("guide" in needs) + ("decoded" in needs)
    parts["LAD's guide (once)"] = n * (per_image("classifier_inference") + decodes * per_image("decoder_inference"))
  if rc.uses_guard():
    gradients = rc.pgd_steps + 1  # PGD-10 and FGSM, then the clean, FGSM and PGD predictions
    parts["guard (each epoch)"] = (rc.epochs + 1) * held * (
        gradients * per_image("attack_gradient") + 3 * per_image("classifier_inference"))
  return parts


def _autoattack_parts(c, spec, n, per_image):
  """(parts, extra): AutoAttack on the original and the defended classifier, n images each, if
  APGD-CE (100 input gradients per image) breaks every image; `extra`, what the rest of the standard
  version adds when every defended image resists all four attacks: APGD-T and FAB-T, 100 iterations
  against each of 9 classes (a gradient, and for FAB a forward pass, each), and Square's 5,000 queries."""
  g, f = per_image("attack_gradient"), per_image("classifier_inference")
  targets = min(9, spec.num_classes - 1)
  parts = {"clean predictions": 2 * n * f, "APGD-CE, both models": 2 * n * AA_ITERATIONS * g}
  rest = n * targets * AA_ITERATIONS * g  # APGD-T
  if c.robust_eval == "standard":
    rest += n * (targets * AA_ITERATIONS * (g + f) + AA_QUERIES * f)  # FAB-T, Square
  return parts, rest


def _fine_tune_rows(config, n_cal):
  if config.fine_tune_mode == "on_the_fly":
    return config.on_the_fly_per_epoch
  if config.fine_tune_mode == "eps":
    return n_cal
  return n_cal * len(config.fine_tune_eps)


def describe(estimates, timings, measured_s=None):
  """The plan as printable lines: each stage, its estimate and its biggest parts, and the total."""
  lines = ["plan (estimates extrapolated from a short timed warm-up of each piece"
           + (f", {measured_s:.0f} s" if measured_s is not None else "") + "):"]
  total = upper = 0.0
  for e in estimates:
    if e.done:
      lines.append(f"  {e.name:<11s} done, skipped")
      continue
    if not e.parts:  # a stage whose pieces were not measured (e.g. a caller's own subset)
      lines.append(f"  {e.name:<11s} not estimated (its pieces were not timed)")
      continue
    total += e.seconds
    upper += e.upper if e.upper is not None else e.seconds
    biggest = sorted(e.parts.items(), key=lambda kv: -kv[1])
    detail = ", ".join(f"{k} {duration(v)}" for k, v in biggest if v >= 0.5) or "under a second"
    if e.upper is not None:
      lines.append(f"  {e.name:<11s} about {duration(e.seconds):>6s} to {duration(e.upper)}  ({detail}; "
                   "more the more images resist: the upper figure if every defended image resists every attack)")
    else:
      lines.append(f"  {e.name:<11s} about {duration(e.seconds):>6s}  ({detail})")
  span = f" to {duration(upper)}" if upper > total + 0.5 else ""
  lines.append(f"  {'total':<11s} about {duration(total):>6s}{span} "
               "(compilation, saving, figures, export and the stages not estimated not included)")
  rates = ", ".join(f"{k} {v * 1000:.0f} ms/batch of {timings.batch[k]}" for k, v in timings.seconds.items())
  lines.append(f"  measured: {rates}")
  return lines


PIECES = {  # what each stage's estimate needs
    "classifier": ("classifier_step", "classifier_validation", "classifier_inference"),
    "generator": ("classifier_inference", "decoder_step", "decoder_inference"),
    "boundaries": ("classifier_inference", "boundary_step", "boundary_none_step"),
    "generation": ("classifier_inference", "decoder_inference"),
    "defended": ("classifier_inference", "fine_tune_step", "robust_step", "attack_gradient",
                 "decoder_inference"),
    "robustness": ("classifier_inference", "attack_gradient"),
    "report": ("attack_gradient",),
}


def stage_pieces(config, stage):
  """The pieces `stage`'s estimate needs under DefendConfig `config` (a resolved one)."""
  if stage != "defended":
    return PIECES.get(stage, ())  # a stage with no timed pieces is listed without an estimate
  if not config.robust_training:
    return ("classifier_inference", "fine_tune_step")
  rc = config.robust_config()
  return ("classifier_inference", "robust_step", "attack_gradient") + (
      ("decoder_inference",) if rc.needs_lad() else ())


def plan(run, batches=3):
  """Measures the pieces the stages still to run need, estimates every stage and returns
  (estimates, printable lines) for DefendRun `run`."""
  start = time.perf_counter()
  c = run.config
  todo = [s for s in c.needed_stages() if s in c.force or not run.work.done(s, run.settings[s])]
  pieces = {p for s in todo for p in stage_pieces(c, s)}
  if c.classifier_path:
    pieces -= {"classifier_step", "classifier_validation"}
  timings = measure(run, batches, sorted(pieces)) if pieces else Timings({}, {})
  estimates = estimate(run, timings)
  return estimates, describe(estimates, timings, time.perf_counter() - start)
