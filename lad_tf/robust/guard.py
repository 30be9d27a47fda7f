"""A guard against catastrophic overfitting, as a Keras callback.

Single-step adversarial training can collapse within an epoch: the model learns to defeat its one-step
adversary (FGSM accuracy stays high) while multi-step PGD accuracy falls to near zero. The guard
measures, at the start and after every epoch, PGD-10 and FGSM accuracy on held-out *training* images
(never the test set). An epoch is a collapse when PGD accuracy falls more than `max_drop` below the
last good epoch's, or FGSM accuracy exceeds PGD accuracy by more than `max_gap` while PGD accuracy
did not rise. (Early in training from a non-robust model, FGSM accuracy climbs faster than PGD's:
on MNIST at eps 0.3, 0.62 against 0.10 after the first epoch, up from 0.09 and 0.00. That is
learning, not a collapse; counted as one, it stopped every run at its start.) On a collapse the
weights and optimizer state go back to the last good epoch and the step shrinks by `shrink` (the
loss's `step_scale`); below `min_step_scale` training stops there. A rollback leaves the optimizer's
step counter where it is, so a learning-rate schedule goes on instead of rewinding. At the end one
epoch is restored (model selection on held-out training images): `selection="robust"` takes the best
held-out PGD accuracy; `"balanced"` the best PGD accuracy among the epochs whose clean accuracy is
within `clean_tolerance` of the best clean one (robustness that costs clean accuracy is bought only
up to that point). Only the epochs no other epoch beats on both figures are kept for it. When the
optimizer averages the weights (Keras' `use_ema`), the checks and the selection see the averaged
weights: they are what training hands back.

With a `state_path` the guard's own state (its history, rollbacks, step scale, the last good and the
best epoch's weights) is saved after every epoch, so a killed run resumes with all of it: the
executor's per-epoch backup is written before the guard decides, and would otherwise bring back a
collapsed epoch's weights, the first step scale, and a history and selection that start at the resume.
"""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from lad_tf.defences import SELECTIONS
from lad_tf.runtime import files
from lad_tf.robust import adversaries as adv


def _dominates(a, b):
  """Whether epoch row `a` is at least as good as `b` on held-out clean and PGD-10 accuracy."""
  return a["clean"] >= b["clean"] and a["pgd10"] >= b["pgd10"]


class OverfittingGuard(keras.callbacks.Callback):
  """Watches one training of lad_tf.runtime.execution (`watch(model, optimizer)`) and a loss's step scale.

  Args:
    x, y: held-out training images and labels (about 1,000).
    eps: L-inf radius of the PGD-10 and FGSM checks.
    step_scale: the loss's step-scale variable (lad_tf.robust.losses), shrunk after a collapse.
    max_drop: a PGD-accuracy fall (fraction) beyond this from the last good epoch is a collapse.
    max_gap: FGSM minus PGD accuracy beyond this is a collapse when PGD accuracy did not rise.
    shrink: factor applied to the step after a collapse.
    min_step_scale: stop training when the step scale would fall below this.
    select_best: restore the selected epoch when training ends (False: the last good one).
    selection: "robust" or "balanced" (SELECTIONS), the rule that selects the epoch.
    clean_tolerance: how far below the best held-out clean accuracy "balanced" may select.
    batch_size: images per PGD batch.
    log: optional callable(str).
    state_path: None, or a .npz file the guard's state is saved to after every epoch and resumed
      from when it exists as training starts (lad_tf.robust.train puts it in its state_dir).
    save_state: False on the workers that only read state_path (every worker resumes from the
      chief's file; only the chief writes it).
  After training, `history` lists one dict per check (the first: before the first epoch; a resumed
  run's goes on from its state_path, else it starts at the resume); `seconds` is the time the checks took. The model
  watched may compute in bfloat16 (its variables stay float32, which the guard saves and restores).
  """

  def __init__(self, x, y, eps, step_scale, max_drop=0.2, max_gap=0.3, shrink=0.5, min_step_scale=0.2,
               select_best=True, batch_size=500, log=None, state_path=None, save_state=True,
               selection="robust", clean_tolerance=0.01):
    super().__init__()
    if selection not in SELECTIONS:
      raise ValueError(f"unknown selection '{selection}'; one of {', '.join(SELECTIONS)}")
    self.selection, self.clean_tolerance = selection, float(clean_tolerance)
    self.x, self.y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    self.eps, self.step_scale, self.max_drop, self.max_gap = float(eps), step_scale, max_drop, max_gap
    self.shrink, self.min_step_scale, self.select_best = shrink, min_step_scale, select_best
    self.batch_size, self.log = batch_size, log or (lambda _: None)
    self.history, self.rollbacks, self.seconds = [], 0, 0.0
    self.classifier = self.optimizer = None
    self.stop_training, self.selected_epoch, self.selection_reason = False, None, None
    self._front = {}  # epoch -> (row, state): the good epochs no other good epoch beats on both figures
    self._check = None
    self._started = False
    self.state_path, self.save_state = state_path, save_state

  def watch(self, classifier, optimizer):
    """The model being trained (logits) and its optimizer (lad_tf.runtime.execution.Training's)."""
    self.classifier, self.optimizer = classifier, optimizer

  def _averages(self):
    """The optimizer's moving averages of the trainable weights (Keras' use_ema), once it has built them."""
    return getattr(self.optimizer, "_model_variables_moving_average", None) if getattr(
        self.optimizer, "use_ema", False) else None

  def _accuracies(self):
    """Held-out clean, FGSM and PGD-10 accuracy of the weights training would hand back now (the
    averaged ones when the optimizer averages)."""
    averages = self._averages()
    if not averages:
      return self._measure()
    trained = [v.numpy() for v in self.classifier.trainable_variables]
    for v, average in zip(self.classifier.trainable_variables, averages):
      v.assign(average)
    try:
      return self._measure()
    finally:
      for v, value in zip(self.classifier.trainable_variables, trained):
        v.assign(value)

  def _measure(self):
    classifier = self.classifier
    if self._check is None:
      eps = self.eps

      @tf.function(reduce_retracing=True)
      def check(x, y):
        correct = lambda images: tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(adv.logits_of(classifier, images), -1), y), tf.float32))
        return (correct(x), correct(adv.fgsm(classifier, x, y, eps)),
                correct(adv.pgd(classifier, x, y, eps, steps=10)))
      self._check = check
    totals = np.zeros(3)
    for start in range(0, len(self.y), self.batch_size):
      sl = slice(start, start + self.batch_size)
      totals += [float(v) for v in self._check(tf.constant(self.x[sl]), tf.constant(self.y[sl]))]
    return totals / len(self.y)

  def _state(self):
    return ([v.numpy() for v in self.classifier.weights], [v.numpy() for v in self.optimizer.variables])

  def _restore(self, state):
    """Weights and optimizer state as `state` holds them, but the step counter: a rollback must not
    rewind the learning-rate schedule."""
    for v, value in zip(self.classifier.weights, state[0]):
      v.assign(value)
    counters = {id(o.iterations) for o in (self.optimizer, getattr(self.optimizer, "inner_optimizer", None))
                if o is not None}
    if self.optimizer.variables and len(state[1]) == len(self.optimizer.variables):
      for v, value in zip(self.optimizer.variables, state[1]):
        if id(v) not in counters:
          v.assign(value)

  def _record(self, epoch):
    start = time.perf_counter()
    clean, fgsm, pgd = self._accuracies()
    self.seconds += time.perf_counter() - start
    row = {"epoch": epoch, "clean": clean, "fgsm": fgsm, "pgd10": pgd,
           "step_scale": float(self.step_scale.numpy()), "collapsed": False}
    self.history.append(row)
    return row

  def _keep(self, row, state):
    """`row`'s epoch is good: the one to roll back to, and a candidate for the selection unless an
    earlier trained epoch beats it on both figures (those it beats on both are dropped)."""
    self._good, self._good_row = state, row
    if row["epoch"] == 0:  # the start is kept as the fallback, and never beats a trained epoch
      self._front[0] = (row, state)
      return
    front = {e: held for e, held in self._front.items() if e == 0 or not _dominates(row, held[0])}
    if not any(_dominates(held[0], row) for e, held in front.items() if e):
      front[row["epoch"]] = (row, state)
    self._front = front

  def on_epoch_begin(self, epoch, logs=None):
    # the start's check waits for the first epoch: a resumed run's backup is restored by then
    if self._started:
      return
    if self.classifier is None:
      raise ValueError("OverfittingGuard: call watch(model, optimizer) before training")
    self._started = True
    if self.state_path and os.path.exists(self.state_path):
      self._resume()
      return
    row = self._record(epoch)
    self._keep(row, self._state())
    self.log(f"guard: start (epoch {epoch}): clean {row['clean']:.3f} fgsm {row['fgsm']:.3f} "
             f"pgd10 {row['pgd10']:.3f}")

  def _stop(self):
    self.stop_training = True
    trainer = getattr(self, "_model", None)  # the LossTrainer under Keras fit
    if trainer is not None:
      trainer.stop_training = True

  def on_epoch_end(self, epoch, logs=None):
    row = self._record(epoch + 1)
    drop = self._good_row["pgd10"] - row["pgd10"]
    gap = row["fgsm"] - row["pgd10"]
    if drop > self.max_drop or (gap > self.max_gap and drop >= 0):
      row["collapsed"] = True
      self.rollbacks += 1
      self._restore(self._good)
      new_scale = float(self.step_scale.numpy()) * self.shrink
      row["rolled_back_to"] = self._good_row["epoch"]
      self.log(f"guard: epoch {epoch + 1}: collapse (pgd10 {row['pgd10']:.3f}, fgsm {row['fgsm']:.3f}, "
               f"last good {self._good_row['pgd10']:.3f} at epoch {self._good_row['epoch']}): rolled back, "
               f"step scale -> {new_scale:g}")
      if new_scale < self.min_step_scale:
        self._stop()
        self.log("guard: step scale below its floor: training stops at the last good epoch")
      else:
        self.step_scale.assign(new_scale)
    else:
      self._keep(row, self._state())
      self.log(f"guard: epoch {epoch + 1}: clean {row['clean']:.3f} fgsm {row['fgsm']:.3f} "
               f"pgd10 {row['pgd10']:.3f}")
    if logs is not None:
      logs.update(guard_pgd10=row["pgd10"], guard_fgsm=row["fgsm"], guard_clean=row["clean"])
    if self.state_path and self.save_state:
      self._save()

  def _save(self):
    """The guard's state, written aside then renamed into place (a kill never leaves half of it): each
    kept epoch's weights and optimizer state once."""
    meta = {"history": self.history, "rollbacks": self.rollbacks, "seconds": self.seconds,
            "step_scale": float(self.step_scale.numpy()), "good_row": self._good_row,
            "front": [row for row, _ in self._front.values()], "stopped": self.stop_training}
    states = {row["epoch"]: state for row, state in self._front.values()}
    states[self._good_row["epoch"]] = self._good
    arrays = {"meta": np.array(json.dumps(meta))}
    for epoch, (weights, slots) in states.items():
      arrays.update({f"e{epoch}_w{i}": w for i, w in enumerate(weights)})
      arrays.update({f"e{epoch}_o{i}": o for i, o in enumerate(slots)})
    with files.atomic_path(self.state_path) as tmp:
      np.savez(tmp, **arrays)

  def _resume(self):
    """Takes back the state `_save` wrote: the last good epoch's weights and optimizer state replace
    the executor's backup (which holds the epoch as trained, collapsed or not)."""
    with np.load(self.state_path, allow_pickle=False) as saved:
      meta = json.loads(str(saved["meta"]))
      arrays = lambda prefix: [saved[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in saved.files))]
      state = lambda epoch: (arrays(f"e{epoch}_w"), arrays(f"e{epoch}_o"))
      self._good_row = meta["good_row"]
      self._good = state(self._good_row["epoch"])
      self._front = {row["epoch"]: (row, state(row["epoch"])) for row in meta["front"]}
    self.history, self.rollbacks, self.seconds = meta["history"], meta["rollbacks"], meta["seconds"]
    self.step_scale.assign(meta["step_scale"])
    self._restore(self._good)
    self.log(f"guard: resumed after epoch {self.history[-1]['epoch']} (last good epoch "
             f"{self._good_row['epoch']}, step scale {meta['step_scale']:g}, {self.rollbacks} rollback(s))")
    if meta["stopped"]:
      self._stop()

  def _choice(self):
    """(row, why) of the epoch the selection rule picks among the kept ones."""
    rows = [row for row, _ in self._front.values()]
    why = "the best held-out PGD-10 accuracy"
    if self.selection == "balanced":  # among the trained epochs: the start's clean accuracy is no defence's
      rows = [row for row in rows if row["epoch"]] or rows
      best_clean = max(row["clean"] for row in rows)
      rows = [row for row in rows if row["clean"] >= best_clean - self.clean_tolerance]
      why += (f" among the epochs within {self.clean_tolerance:g} of the best held-out clean accuracy "
              f"({best_clean:.3f})")
    return max(rows, key=lambda row: (row["pgd10"], row["clean"], row["epoch"])), why

  def on_train_end(self, logs=None):
    if not self._started:  # a resumed run that had no epoch left
      return
    if self.select_best:
      chosen, why = self._choice()
      state = self._front[chosen["epoch"]][1]
    else:
      chosen, why, state = self._good_row, "the last good epoch", self._good
    self._restore(state)
    averages = self._averages()
    if averages:  # what Keras' fit does at its end, for the epoch chosen
      self.optimizer.finalize_variable_values(self.classifier.trainable_variables)
    self.selected_epoch = chosen["epoch"]
    self.selection_reason = (f"epoch {chosen['epoch']}: {why} (clean {chosen['clean']:.3f}, "
                             f"pgd10 {chosen['pgd10']:.3f}){', weights averaged' if averages else ''}")
    self.log(f"guard: selected {self.selection_reason}")
