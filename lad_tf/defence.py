"""Adversarial fine-tuning (Eq. 4): alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), y).

x' keeps the source label y even where it crossed the boundary: the defence teaches the classifier
that these boundary-guided variations are still the source class. The same trainer serves the
attack-based baselines (x' from FGSM, PGD, JSMA, CW).
"""
import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from lad_tf.training import fit_resumable


@dataclasses.dataclass
class FineTuneConfig:
  """Defaults follow the authors' MNIST run (SGD lr 0.01, momentum 0.5, batch 64), fewer epochs."""
  epochs: int = 10
  batch_size: int = 64
  learning_rate: float = 0.01
  momentum: float = 0.5
  alpha: float = 0.5
  seed: int = 0
  verbose: int = 2


class AdversarialFineTuning(keras.Model):
  """Wraps a classifier; `fit` on ((x, x_adv), y) minimises the Eq. 4 loss.

  Metrics: loss, clean_accuracy (on x), adversarial_accuracy (on x_adv).
  """

  def __init__(self, classifier, alpha=0.5, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    self.classifier, self.alpha = classifier, alpha
    self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")
    self.adversarial_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adversarial_accuracy")

  def call(self, x, training=False):
    return self.classifier(x, training=training)

  @property
  def metrics(self):
    return [self.loss_tracker, self.clean_accuracy, self.adversarial_accuracy]

  def eq4_loss(self, x, x_adv, y, training=False):
    logits, logits_adv = self.classifier(x, training=training), self.classifier(x_adv, training=training)
    loss = (self.alpha * self.cross_entropy(y, logits)
            + (1.0 - self.alpha) * self.cross_entropy(y, logits_adv))
    return loss, logits, logits_adv

  def train_step(self, data):
    (x, x_adv), y, _ = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
      loss, logits, logits_adv = self.eq4_loss(x, x_adv, y, training=True)
    variables = self.classifier.trainable_variables
    self.optimizer.apply(tape.gradient(loss, variables), variables)
    return self._update_metrics(loss, y, logits, logits_adv)

  def test_step(self, data):
    (x, x_adv), y, _ = keras.utils.unpack_x_y_sample_weight(data)
    loss, logits, logits_adv = self.eq4_loss(x, x_adv, y)
    return self._update_metrics(loss, y, logits, logits_adv)

  def _update_metrics(self, loss, y, logits, logits_adv):
    self.loss_tracker.update_state(loss)
    self.clean_accuracy.update_state(y, logits)
    self.adversarial_accuracy.update_state(y, logits_adv)
    return {m.name: m.result() for m in self.metrics}


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


def fine_tune(classifier, x, x_adv, y, config=FineTuneConfig(), state_dir=None):
  """Fine-tunes a copy of `classifier` on pairs (x[i], x_adv[i]) labelled y[i] with the Eq. 4 loss.

  Args:
    classifier: the trained classifier (logits); left unchanged.
    x, x_adv, y: clean examples, their adversarial counterparts (same shape) and the clean labels.
    config: FineTuneConfig.
    state_dir: folder for per-epoch backups, so a killed run resumes (None: no backups).
  Returns:
    The fine-tuned copy (a keras.Model returning logits).
  """
  x, x_adv, y = np.asarray(x, np.float32), np.asarray(x_adv, np.float32), np.asarray(y, np.int64)
  if x.shape != x_adv.shape or len(y) != len(x):
    raise ValueError(f"x {x.shape}, x_adv {x_adv.shape} and y ({len(y)}) must pair up row by row")
  keras.utils.set_random_seed(config.seed)
  trainer = AdversarialFineTuning(clone_classifier(classifier), alpha=config.alpha)
  trainer.compile(optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum))
  trainer(x[:1])  # built before fit, as BackupAndRestore requires
  ds = paired_dataset(x, x_adv, y, config.batch_size, config.seed)
  if state_dir is None:
    trainer.fit(ds, epochs=config.epochs, verbose=config.verbose)
  else:
    fit_resumable(trainer, ds, config.epochs, os.path.join(state_dir, "fine_tune"), verbose=config.verbose)
  return trainer.classifier
