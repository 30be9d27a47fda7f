"""The custom training loop: `fit`'s semantics under `strategy.run`.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy with more than one worker (keras-team/keras#20585),
so lad_tf.runtime.execution.fit runs `custom_fit` there (and wherever a caller asks for it) with the
same per-example loss_fn: loss = mean over the global batch, one optimizer step per global batch, the
same epochs and dataset order, per-epoch checkpoints the chief writes.
"""
import contextlib
import logging
import os
import shutil
import time

from lad_tf.runtime import distribute
from lad_tf.runtime.losses import per_example

log = logging.getLogger("lad_tf")


def custom_fit(model, optimizer, loss_fn, dataset, epochs, strategy=None, state_dir=None,
               validation_data=None, verbose=2, name="train", callbacks=()):
  """A `fit` equivalent under `strategy.run` (works under MultiWorkerMirroredStrategy).

  Args:
    model: a Keras model built inside `strategy.scope()` (see distribute.build_in_scope).
    optimizer: a Keras optimizer created inside `strategy.scope()`.
    loss_fn: `loss_fn(model, x, y, training)` -> per-example losses, or a dict with them as "loss"
      plus other per-example figures (see lad_tf.runtime.execution). Each step minimises the sum of the
      per-example losses over the global batch divided by its size (the mean, as Keras fit does);
      every figure is reported as its mean over the epoch's examples.
    dataset: a tf.data.Dataset batched by the global batch size (the same on every worker).
    epochs: total epochs (resumed runs do the remaining ones).
    strategy: a strategy or its name (default: the default strategy).
    state_dir: folder for per-epoch checkpoints (state_dir/backup) so a killed run resumes; the chief
      writes there, other workers into a temporary folder; deleted once training ends.
    validation_data: optional dataset evaluated with loss_fn (training=False) after each epoch, on
      every worker alike; reported as val_<key>.
    verbose: 0 silent, 1 or 2 one line per epoch (on the chief).
    name: what the progress lines call this loop.
    callbacks: objects with Keras' callback methods: `on_epoch_end(epoch, logs)` after each epoch's
      checkpoint, and `on_train_begin`, `on_epoch_begin`, `on_train_batch_end` and `on_train_end`
      when they have them (Keras callbacks, e.g. lad_tf.runtime.progress.Progress); training stops after an
      epoch where a callback's `stop_training` attribute is True.
  Returns:
    history dict {key: [value per epoch run]} like `fit(...).history`.
  """
  import tensorflow as tf
  strategy = distribute.get_strategy(strategy)
  variables = list(model.trainable_variables)
  with strategy.scope():
    if not optimizer.built:
      optimizer.build(variables)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
  backup = os.path.join(state_dir, "backup") if state_dir else None
  start_epoch = _restore(checkpoint, backup, epoch_var, name, verbose)
  _check_same_epoch(strategy, start_epoch)
  train_step, eval_step = _steps(model, optimizer, loss_fn, strategy, variables)
  loop = _Epochs(train_step, eval_step, distribute.distribute_dataset(dataset, strategy), validation_data,
                 callbacks, name, verbose and distribute.is_chief(strategy))
  steps = int(dataset.cardinality())
  loop.call("set_params", {"epochs": epochs, "steps": steps if steps > 0 else None, "verbose": verbose})
  with _checkpoint_dir(backup, strategy) as write_to:
    manager = tf.train.CheckpointManager(checkpoint, write_to, max_to_keep=1) if write_to else None
    history = loop.run(start_epoch, epochs, epoch_var, manager)
  if backup and distribute.is_chief(strategy):
    shutil.rmtree(backup, ignore_errors=True)  # as BackupAndRestore(delete_checkpoint=True)
  return history


def _restore(checkpoint, backup, epoch_var, name, verbose):
  """The epoch a killed run stopped after (0 without a backup)."""
  import tensorflow as tf
  latest = tf.train.latest_checkpoint(backup) if backup else None
  if not latest:
    return 0
  checkpoint.restore(latest).expect_partial()
  if verbose:
    log.info("%s: resumed from %s at epoch %d", name, latest, int(epoch_var.numpy()))
  return int(epoch_var.numpy())


def _steps(model, optimizer, loss_fn, strategy, variables):
  """The distributed train step and the eval step; each returns per-figure sums plus "count"."""
  import tensorflow as tf

  def batch_sums(batch, training):
    x, y = batch
    figures = per_example(loss_fn(model, x, y, training))
    return {"count": tf.cast(tf.size(figures["loss"]), tf.float32),
            **{k: tf.reduce_sum(v) for k, v in figures.items()}}

  def replica_step(batch):
    context = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
      totals = batch_sums(batch, True)
      global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, totals["count"])
      loss = totals["loss"] / tf.maximum(global_count, 1.0)
      scaled = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, variables)
    optimizer.apply(gradients, variables)
    return totals

  @tf.function(reduce_retracing=True)
  def train_step(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

  @tf.function(reduce_retracing=True)
  def eval_step(batch):
    return batch_sums(batch, False)

  return train_step, eval_step


class _Epochs:
  """The epoch loop: steps, sums, validation, checkpoint, callbacks, one log line per epoch."""

  def __init__(self, train_step, eval_step, distributed, validation_data, callbacks, name, say):
    self.train_step, self.eval_step = train_step, eval_step
    self.distributed, self.validation_data = distributed, validation_data
    self.callbacks, self.name, self.say = callbacks, name, say

  def call(self, method, *args):
    for callback in self.callbacks:
      if hasattr(callback, method):
        getattr(callback, method)(*args)

  def run(self, start_epoch, epochs, epoch_var, manager):
    history = {}
    self.call("on_train_begin", None)
    for epoch in range(start_epoch, epochs):
      self.call("on_epoch_begin", epoch, None)
      start = time.time()
      totals = None
      for step, batch in enumerate(self.distributed):
        sums = self.train_step(batch)
        self.call("on_train_batch_end", step, None)
        totals = _add(totals, sums)
      figures = _means(totals)
      if self.validation_data is not None:
        val = None
        for batch in self.validation_data:
          val = _add(val, self.eval_step(batch))
        figures.update({f"val_{k}": v for k, v in _means(val).items()})
      for key, value in figures.items():
        history.setdefault(key, []).append(value)
      epoch_var.assign(epoch + 1)
      if manager:
        manager.save(checkpoint_number=epoch + 1)
      if self.say:
        log.info("%s epoch %d/%d - %.1fs - %s", self.name, epoch + 1, epochs, time.time() - start,
                 " - ".join(f"{k}: {v:.4f}" for k, v in figures.items()))
      self.call("on_epoch_end", epoch, figures)
      if any(getattr(c, "stop_training", False) for c in self.callbacks):
        break
    self.call("on_train_end", None)
    return history


def _add(totals, sums):
  return sums if totals is None else {k: totals[k] + sums[k] for k in totals}


def _means(totals):
  if not totals:
    return {}
  count = max(float(totals["count"]), 1.0)
  return {k: float(v) / count for k, v in totals.items() if k != "count"}


def _check_same_epoch(strategy, start_epoch):
  """All workers must resume at the same epoch, or the collectives would wait for ever."""
  if not distribute.all_equal(strategy, start_epoch):
    raise RuntimeError(f"workers resume at different epochs (this one at {start_epoch}): every worker "
                       f"must see the chief's backup (put the work directory on a shared filesystem), "
                       f"or delete the backup to start over")


@contextlib.contextmanager
def _checkpoint_dir(backup, strategy):
  if backup is None:
    yield None
    return
  with distribute.write_dir(backup, strategy) as path:
    yield path
