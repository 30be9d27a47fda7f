"""Adversarial fine-tuning (Eq. 4): alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), y).

x' keeps the source label y even where it crossed the boundary: the defence teaches the classifier
that these boundary-guided variations are still the source class. The same loss and executor serve
the attack-based baselines (x' from FGSM, PGD, JSMA, CW) and the GA baseline.
"""
import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from lad_tf.choices import DEFAULT_SCHEDULE, FINE_TUNE_SCHEDULES
from lad_tf.runtime import execution, losses
from lad_tf.errors import ConfigError
from lad_tf.runtime.execution import ExecutionConfig

_DEFAULTS = FINE_TUNE_SCHEDULES[DEFAULT_SCHEDULE]


@dataclasses.dataclass
class FineTuneConfig:
  """The defaults are the "lad_tf" schedule (schedule_config): with 10 epochs on a few hundred seeds
  lr 0.001 forgets less of the clean task than the authors' lr 0.01 (Fashion-MNIST: -0.3 vs -1.0
  points); the "authors" schedule is their MNIST run's (100 epochs, SGD lr 0.01, momentum 0.5)."""
  epochs: int = _DEFAULTS["epochs"]
  batch_size: int = _DEFAULTS["batch_size"]
  learning_rate: float = _DEFAULTS["learning_rate"]
  momentum: float = _DEFAULTS["momentum"]
  alpha: float = 0.5
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)


# The named fine-tuning schedules (SGD), FINE_TUNE_SCHEDULES and DEFAULT_SCHEDULE, are plain data in
# lad_tf.choices (the command lines list them without TensorFlow): "lad_tf", this project's default and
# FineTuneConfig's defaults, and "authors", the authors' MNIST run, about 100x the optimisation of ours
# on the same set.


def schedule_config(name=DEFAULT_SCHEDULE, epochs=None, **overrides):
  """The FineTuneConfig of the named schedule (FINE_TUNE_SCHEDULES); epochs None keeps the schedule's,
  other keyword arguments (alpha, execution, ...) override its fields."""
  if name not in FINE_TUNE_SCHEDULES:
    raise ConfigError(f"unknown fine-tuning schedule '{name}'; known: {', '.join(FINE_TUNE_SCHEDULES)}")
  settings = {**FINE_TUNE_SCHEDULES[name], **overrides}
  if epochs is not None:
    settings["epochs"] = int(epochs)
  return FineTuneConfig(**settings)


def eq4_loss(alpha=0.5):
  """The per-example Eq. 4 loss on ((x, x_adv), y) batches, with the clean and adversarial accuracy."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")

  def loss(model, pair, y, training):
    x, x_adv = pair
    logits, logits_adv = model(x, training=training), model(x_adv, training=training)
    return {"loss": alpha * losses.cross_entropy(y, logits) + (1.0 - alpha) * losses.cross_entropy(y, logits_adv),
            "clean_accuracy": losses.correct(y, logits),
            "adversarial_accuracy": losses.correct(y, logits_adv)}
  return loss


def clone_classifier(classifier):
  """A trainable copy with the same weights (fine-tuning never alters the original)."""
  copy = keras.models.clone_model(classifier)
  copy.set_weights(classifier.get_weights())
  return copy


def paired_dataset(x, x_adv, y, batch_size, seed=0, shuffle=True):
  ds = tf.data.Dataset.from_tensor_slices(((x, x_adv), y)).cache()
  if shuffle:
    ds = ds.shuffle(min(len(y), 20000), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fine_tuning(classifier, config=FineTuneConfig()):
  """An execution.Training of Eq. 4 over a copy of `classifier` (SGD with config's learning rate and
  momentum): call .fit(pairs, epochs) as often as needed, then .finish() for the tuned copy."""
  return execution.Training(clone_classifier(classifier), eq4_loss(config.alpha), config.execution,
                            lambda: keras.optimizers.SGD(config.learning_rate, momentum=config.momentum),
                            name="fine-tuning")


def fine_tune(classifier, x, x_adv, y, config=FineTuneConfig(), state_dir=None):
  """Fine-tunes a copy of `classifier` on pairs (x[i], x_adv[i]) labelled y[i] with the Eq. 4 loss.

  Args:
    classifier: the trained classifier (logits); left unchanged.
    x, x_adv, y: clean examples, their adversarial counterparts (same shape) and the clean labels.
    config: FineTuneConfig (its batch_size is the global batch size).
    state_dir: folder for per-epoch backups, so a killed run resumes (None: no backups).
  Returns:
    The fine-tuned copy (a keras.Model returning logits).
  """
  x, x_adv, y = np.asarray(x, np.float32), np.asarray(x_adv, np.float32), np.asarray(y, np.int64)
  if x.shape != x_adv.shape or len(y) != len(x):
    raise ValueError(f"x {x.shape}, x_adv {x_adv.shape} and y ({len(y)}) must pair up row by row")
  config.execution.seed_everything()
  training = fine_tuning(classifier, config)
  ds = paired_dataset(x, x_adv, y, config.batch_size, config.execution.seed)
  training.fit(ds, config.epochs, None if state_dir is None else os.path.join(state_dir, "fine_tune"))
  return training.finish()


def fine_tuning_rows(generated, mode, fine_tune_eps):
  """The rows of a GeneratedSet the defence fine-tunes on: those at every fine_tune_eps ("mix") or
  at the first one ("eps"). Used by the pipeline and by the evaluation (its LAD sweep and baselines)."""
  eps = tuple(fine_tune_eps) if mode == "mix" else tuple(fine_tune_eps)[:1]
  rows = generated.rows_at(eps)
  if len(rows) == 0:
    raise ValueError(f"no generated examples at eps {list(eps)}; generated eps: {np.unique(generated.eps).tolist()}")
  return rows
