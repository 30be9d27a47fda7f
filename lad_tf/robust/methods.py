"""`train`: one entry point for every robust-training method.

  standard    clean training, CE(f(x), y), with the robust methods' optimizer and schedule (the
              cost reference: cost ratios divide by its wall time)
  clean       the paper's Eq. 4 fine-tuning with x' = x (LAD's control; lad_tf.lad.fine_tuning)
  lad         the paper's Eq. 4 fine-tuning on LAD's decoded examples (lad_tf.lad.fine_tuning)
  fgsm_rs     FGSM with a random start, step 1.25 eps (Wong et al. 2020)
  pgd_at      PGD-10 adversarial training (Madry et al. 2018)
  trades      TRADES, 10-step inner maximisation, beta 6 (Zhang et al. 2019)
  nfgsm       N-FGSM: one step of eps from noise of radius 2 eps (de Jorge et al. 2022), lad_robust
              with every LAD part off
  atta        one projected step of eps per batch (atta_steps=K: K steps of eps / K) from where each
              example's perturbation ended the epoch before (ATTA-K, Zheng et al. 2020), lad_robust's
              loss with LadRobustOptions.carried(K)
  lad_robust  ours: N-FGSM single step steered by LAD's boundaries (lad_tf.robust.losses.LadRobustLoss)

Every method trains through lad_tf.runtime.execution (one training path: the ExecutionConfig's strategy,
seeding, precision with float32 weights copied back, per-epoch backups in `state_dir`): the
adversarial methods as a per-example loss over `{"image": x, ...extras}` batches, `clean` and `lad`
as lad_tf.lad.fine_tuning's Eq. 4 fine-tuning. The decoder and boundaries are used only while training; the
result is the classifier alone.
"""
import dataclasses
import logging
import os
import shutil
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from lad_tf.lad import fine_tuning
from lad_tf.runtime import files
from lad_tf.runtime import distribute, execution
from lad_tf.defences import DESCRIPTIONS, EQ4_DEFENCES, LR_SCHEDULES
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.robust import boundary_start, guard as guard_lib, losses

METHODS = tuple(DESCRIPTIONS)
SINGLE_STEP = ("fgsm_rs", "nfgsm", "atta", "lad_robust")


@keras.saving.register_keras_serializable(package="lad_tf")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
  """Linear up from 0 to `peak` over the first `warmup` fraction of `total_steps`, then linear down to 0
  (Wong et al. 2020 train FGSM-RS this way: fewer epochs for the same robustness, and a short run
  ends at a small step instead of wherever a constant rate leaves it)."""

  def __init__(self, peak, total_steps, warmup=0.4):
    self.peak, self.total_steps, self.warmup = float(peak), int(total_steps), float(warmup)

  def __call__(self, step):
    t = keras.ops.cast(step, "float32") / max(self.total_steps, 1)
    up = t / self.warmup
    down = (1.0 - t) / (1.0 - self.warmup)
    return self.peak * keras.ops.clip(keras.ops.minimum(up, down), 0.0, 1.0)

  def get_config(self):
    return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}


def learning_rate(config, steps_per_epoch):
  """The Adam learning rate (a float or a schedule over optimizer steps) of config.lr_schedule."""
  if config.lr_schedule == "constant":
    return config.learning_rate
  return OneCycle(config.learning_rate, config.epochs * steps_per_epoch)


@dataclasses.dataclass
class RobustConfig:
  """What `train` needs. Adam at `learning_rate` for the adversarial methods and `standard` (constant,
  or a one-cycle schedule peaking there with lr_schedule="cyclic"); `lad` and `clean` keep
  lad_tf.lad.fine_tuning's Eq. 4 settings (SGD 0.001, momentum 0.5, batch 64)."""
  method: str = "lad_robust"
  eps: float = 0.1
  epochs: int = 5
  batch_size: int = 128
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"    # or "cyclic": 0 -> learning_rate -> 0 (Wong et al.'s fast training)
  pgd_steps: int = 10
  trades_beta: float = 6.0
  fgsm_alpha: float = 1.25
  step_scale: float = 1.0          # the single-step methods' step multiplier at the start (the guard shrinks it)
  atta_steps: int = 1              # atta's projected steps per batch, of eps / atta_steps each (ATTA-K)
  options: losses.LadRobustOptions = dataclasses.field(
      default_factory=lambda: losses.LadRobustOptions(guided_fraction=0.5))
  guide_strength: float = 0.5      # how far along the boundary normal the guide looks (latent units)
  guide_threshold: float = 0.0     # decode changes at most this leave the pixel's sign random
  guard: Optional[bool] = None     # None: on for the single-step methods
  guard_examples: int = 1000       # held-out training images for the guard (0: no hold-out)
  guard_max_drop: float = 0.2
  guard_max_gap: float = 0.3
  selection: str = "robust"        # the guard's epoch selection (guard.SELECTIONS): "robust" or "balanced"
  weight_averaging: float = 0.0    # > 0: train on, and hand back, a moving average of the weights with this
                                   # momentum per step (Keras' use_ema); 0: the weights as trained
  tradeoff: float = 0.0            # atta: > 0 trains on CE(f(x), y) + tradeoff * KL(f(x) || f(x')) (TRADES'
                                   # beta on the carried perturbation, the step ascending the KL); 0: CE(f(x'), y)
  generated_weight: float = 0.0    # atta: > 0 adds generated_weight * CE(f(G(z')), y) on LAD's decoded boundary
                                   # examples, one per training image (LAD's generator as a data source)
  latent_layer: str = "latent"
  # seed, strategy, precision, verbosity of the training (lad_tf.runtime.execution)
  execution: ExecutionConfig = dataclasses.field(default_factory=lambda: ExecutionConfig(verbose=0))

  @property
  def seed(self):
    return self.execution.seed

  def needs_lad(self):
    """Whether this method uses LAD's generator and boundaries."""
    o = self.options
    return self.method == "lad" or (self.method == "atta" and self.generated_weight > 0) or (
        self.method == "lad_robust" and (o.guided_fraction > 0 or o.targeted or o.manifold_weight > 0))

  def uses_guard(self):
    """Whether the catastrophic-overfitting guard watches the training (default: single-step methods)."""
    return self.method in SINGLE_STEP if self.guard is None else self.guard

  def identity(self):
    """The settings that decide the trained model (not how it is computed): a stage fingerprint's
    input."""
    out = dataclasses.asdict(self)
    out.pop("execution")
    out["seed"] = self.seed
    # work directories from before these options keep their fingerprint: at their default they are left out
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for name in ("lr_schedule", "step_scale", "atta_steps", "selection", "weight_averaging", "tradeoff",
                 "generated_weight"):
      if out[name] == defaults[name]:
        out.pop(name)
    return out


def make_loss(config):
  """The per-example loss of a method (lad_tf.robust.losses); `clean` and `lad` have none here."""
  if not config.step_scale > 0:
    raise ValueError(f"step_scale must be > 0, got {config.step_scale}")
  if config.atta_steps < 1:
    raise ValueError(f"atta_steps must be at least 1, got {config.atta_steps}")
  if config.tradeoff < 0 or (config.tradeoff and config.method != "atta"):
    raise ValueError(f"tradeoff is atta's TRADES weight, >= 0 (trades has trades_beta), got {config.tradeoff} "
                     f"for {config.method}")
  if config.generated_weight < 0 or (config.generated_weight and config.method != "atta"):
    raise ValueError(f"generated_weight is atta's weight on LAD's decoded examples, >= 0 (lad_robust has "
                     f"options.manifold_weight), got {config.generated_weight} for {config.method}")
  loss = _loss_of(config)
  loss.step_scale.assign(config.step_scale)
  return loss


def _loss_of(config):
  m = config.method
  if m == "standard":
    return losses.StandardLoss()
  if m == "fgsm_rs":
    return losses.FgsmRsLoss(config.eps, config.fgsm_alpha)
  if m == "pgd_at":
    return losses.PgdLoss(config.eps, config.pgd_steps)
  if m == "trades":
    return losses.TradesLoss(config.eps, config.trades_beta, config.pgd_steps)
  if m == "nfgsm":
    return losses.LadRobustLoss(config.eps, losses.LadRobustOptions())  # every LAD part off
  if m == "atta":
    return losses.LadRobustLoss(config.eps, losses.LadRobustOptions.carried(config.atta_steps,
                                                                           trades_beta=config.tradeoff,
                                                                           manifold_weight=config.generated_weight))
  if m == "lad_robust":
    return losses.LadRobustLoss(config.eps, config.options)
  raise ValueError(f"method '{m}' has no per-example loss here; one of {METHODS}")


def extras_needed(loss_fn):
  """The per-example extras a method's loss reads besides the image: LAD's "guide", "target",
  "decoded" (lad_tf.robust.boundary_start) and "index" (the row, for carried perturbations)."""
  return loss_fn.needs() if isinstance(loss_fn, losses.LadRobustLoss) else ()


def _check(config, generator, boundaries):
  if config.method not in METHODS:
    raise ValueError(f"unknown method '{config.method}'; one of {', '.join(METHODS)}")
  if not config.eps > 0:
    raise ValueError(f"eps must be > 0, got {config.eps}")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"unknown lr_schedule '{config.lr_schedule}'; one of {', '.join(LR_SCHEDULES)}")
  if config.selection not in guard_lib.SELECTIONS:
    raise ValueError(f"unknown selection '{config.selection}'; one of {', '.join(guard_lib.SELECTIONS)}")
  if not 0 <= config.weight_averaging < 1:
    raise ValueError(f"weight_averaging is a momentum per step in [0, 1), got {config.weight_averaging}")
  if config.needs_lad() and (generator is None or boundaries is None):
    raise ValueError(f"method '{config.method}' with these options needs LAD's generator and boundaries "
                     f"(run `python -m pipelines.defend` once, or pass generator= and boundaries=)")


def holdout_split(n, holdout, seed):
  """(train rows, held-out rows): `holdout` random training rows kept for the guard."""
  order = np.random.default_rng(seed + 1000).permutation(n)
  holdout = min(holdout, n // 5)
  return np.sort(order[holdout:]), np.sort(order[:holdout])


RESUME_DIR = "robust_state"  # in train()'s state_dir: the guard's state and the time trained so far


class _TrainingClock(keras.callbacks.Callback):
  """Training time that survives a kill: after every epoch it writes (if `save`: the chief) the
  seconds since `start` plus what earlier, killed runs had written (their unfinished last epoch is
  lost with them)."""

  def __init__(self, state_dir, start, save=True):
    super().__init__()
    self.start, self.save = start, save
    self.path = None if state_dir is None else os.path.join(state_dir, RESUME_DIR, "clock.json")
    earlier = (self.path and files.read_json(self.path)) or {}
    self.earlier_s, self.resumed_epochs = earlier.get("seconds", 0.0), earlier.get("epochs", 0)

  def total(self):
    return self.earlier_s + time.perf_counter() - self.start

  def on_epoch_end(self, epoch, logs=None):
    if self.path and self.save:
      files.write_json(self.path, {"seconds": self.total(), "epochs": epoch + 1})


def train(classifier, x, y, config=RobustConfig(), generator=None, boundaries=None, log=None,
          lad_classifier=None, state_dir=None):
  """Trains a copy of `classifier` with config.method on training images x, labels y.

  Args:
    classifier: the starting classifier (logits; a trained one to fine-tune, a fresh one to train
      from scratch); left unchanged.
    x, y: training images (float32 NHWC in [0, 1]) and int labels. config.guard_examples of them are
      held out for the guard (the same rows for every method of a seed), the rest train.
    config: RobustConfig (config.execution: strategy, seed, precision, verbosity).
    generator, boundaries: LAD's decoder and the classifier's fitted boundaries (for `lad`, and for
      `lad_robust` with a guided start, a targeted step or the on-manifold term).
    log: optional callable(str) for progress lines.
    lad_classifier: the classifier the generator and boundaries belong to (default: `classifier`;
      pass the trained one when `classifier` is a fresh model trained from scratch).
    state_dir: folder for per-epoch backups so a killed run resumes there (None: no backups); the
      guard's state and the time trained so far resume with it.
  Returns:
    (model, info): the trained classifier (keras.Model, logits, float32 weights) and a dict with
    train_s (wall time, including the boundary-guided precomputation and the guard; a resumed run adds
    the earlier runs' time up to their last finished epoch), prepare_s, guard history, epochs run
    (resumed_epochs: how many of them an earlier, killed run had finished).
  """
  _check(config, generator, boundaries)
  say = log or (lambda _: None)
  frozen = [layer.name for layer in classifier.layers if layer.weights and not layer.trainable]
  if frozen:  # e.g. a sub-model (phi.trainable = False) froze the layers it shares with the classifier
    logging.getLogger("lad_tf").warning("robust.train: layers %s of the classifier are frozen and will not "
                                        "train (set layer.trainable = True to train them)", frozen)
  lad_classifier = classifier if lad_classifier is None else lad_classifier
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
  rows, held = holdout_split(len(y), config.guard_examples, config.seed)
  config.execution.seed_everything()
  start = time.perf_counter()
  info = {"method": config.method, "epochs": config.epochs, "train_examples": int(len(rows))}
  if config.method in EQ4_DEFENCES:
    return _train_eq4(classifier, x[rows], y[rows], config, generator, boundaries, lad_classifier,
                      state_dir, start, info)
  loss_fn = make_loss(config)
  ds = _training_set(loss_fn, x[rows], y[rows], config, generator, boundaries, lad_classifier)
  info["prepare_s"] = time.perf_counter() - start
  rate = learning_rate(config, -(-len(rows) // config.batch_size))
  training = execution.Training(fine_tuning.clone_classifier(classifier), loss_fn, config.execution,
                                lambda: _adam(rate, config.weight_averaging), name=config.method)
  use_guard = config.uses_guard()
  chief = distribute.is_chief(training.strategy)  # every worker resumes from the chief's state files
  callbacks = []
  if use_guard:
    if len(held) == 0:
      raise ValueError("the guard needs held-out training images: set guard_examples > 0")
    guard = guard_lib.OverfittingGuard(
        x[held], y[held], config.eps, loss_fn.step_scale, max_drop=config.guard_max_drop,
        max_gap=config.guard_max_gap, log=say, save_state=chief, selection=config.selection,
        state_path=None if state_dir is None else os.path.join(state_dir, RESUME_DIR, "guard.npz"))
    guard.watch(training.model, training.optimizer)
    callbacks.append(guard)
  clock = _TrainingClock(state_dir, start, save=chief)
  history = training.fit(ds, config.epochs, state_dir, callbacks=[*callbacks, clock])
  model = training.finish()
  info["train_s"] = clock.total()
  if clock.resumed_epochs:
    info["resumed_epochs"] = clock.resumed_epochs
  if state_dir is not None and chief:
    shutil.rmtree(os.path.join(state_dir, RESUME_DIR), ignore_errors=True)
  info["loss"] = [float(v) for v in history.get("loss", [])]
  if use_guard:
    info["guard"] = {"history": guard.history, "rollbacks": guard.rollbacks,
                     "selected_epoch": guard.selected_epoch, "selection": guard.selection_reason,
                     "final_step_scale": float(loss_fn.step_scale.numpy()), "seconds": guard.seconds}
  return model, info


def _adam(rate, weight_averaging):
  if weight_averaging:
    return keras.optimizers.Adam(rate, use_ema=True, ema_momentum=weight_averaging)
  return keras.optimizers.Adam(rate)


def _train_eq4(classifier, x, y, config, generator, boundaries, lad_classifier, state_dir, start, info):
  """`lad` and `clean` through robust.train: the paper's Eq. 4 fine-tuning on decoded boundary-guided
  examples (lad) or on x' = x (clean)."""
  x_adv = x
  if config.method == "lad":
    x_adv = boundary_start.features(lad_classifier, generator, boundaries, x, y, latent_layer=config.latent_layer,
                                    seed=config.seed, need=("decoded",))["decoded"]
  info["prepare_s"] = time.perf_counter() - start
  model = fine_tuning.fine_tune(classifier, x, x_adv, y,
                                fine_tuning.FineTuneConfig(epochs=config.epochs, execution=config.execution),
                                state_dir=state_dir)
  info["train_s"] = time.perf_counter() - start
  return model, info


def _training_set(loss_fn, x, y, config, generator, boundaries, lad_classifier):
  """The shuffled tf.data set of (inputs, y): the images plus whatever the loss reads beside them
  (LAD's boundary-guided features; each example's row of the carried perturbations)."""
  inputs = {"image": x}
  needs = extras_needed(loss_fn)
  lad_needs = tuple(k for k in needs if k != "index")
  if lad_needs:
    extras = boundary_start.features(lad_classifier, generator, boundaries, x, y,
                                     strength=config.guide_strength, threshold=config.guide_threshold,
                                     latent_layer=config.latent_layer, seed=config.seed, need=lad_needs)
    inputs.update({k: extras[k] for k in lad_needs})
  if "index" in needs:  # carried perturbations: each example's row in a buffer the loss keeps
    if config.execution.get_strategy().num_replicas_in_sync > 1:
      raise ValueError(f"{config.method} carries each example's perturbation over epochs and trains on one "
                       f"replica only (its buffer is not distributed); drop the multi-device strategy, or "
                       f"choose a method without carried perturbations (e.g. nfgsm)")
    inputs["index"] = np.arange(len(y), dtype=np.int64)
    loss_fn.allocate(len(y), x.shape[1:])
  return tf.data.Dataset.from_tensor_slices((inputs, y)).shuffle(
      min(len(y), 20000), seed=config.seed, reshuffle_each_iteration=True).batch(
          config.batch_size).prefetch(tf.data.AUTOTUNE)
