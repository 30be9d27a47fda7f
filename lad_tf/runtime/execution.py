"""One training executor for every loop of lad_tf, run as its `ExecutionConfig` says.

`fit(model, loss_fn, data, execution, epochs=..., optimizer=...)` trains `model` to minimise the mean
of a per-example loss `loss_fn(model, x, y, training)` over a `tf.data` pipeline of (x, y) batches
(batched by the global batch size). Under `default` and `mirrored` strategies it runs Keras `fit` on a
`LossTrainer` (a `keras.Model` whose `train_step` minimises that loss) with per-epoch backups; under
`multi_worker` (where Keras fit fails with several workers) it runs lad_tf.runtime.custom_loop.custom_fit with
the *same* `loss_fn`. So each loss is written once (lad_tf.runtime.losses, lad_tf.lad.fine_tuning.eq4_loss) and the
strategy, seeding, build-in-scope, loop choice and weight copy-back are written once, here.

`loss_fn` returns a float32 vector of per-example losses, or a dict holding it as "loss" plus other
per-example figures (e.g. "accuracy", 1.0 where right) reported as means in the history.
"""
import logging
import os

import keras

from lad_tf.runtime import custom_loop, distribute
# ExecutionConfig is plain data in its own module (the command lines make their flags of it without
# TensorFlow); every caller reads it from here too.
from lad_tf.runtime.execution_config import ExecutionConfig  # noqa: F401
from lad_tf.runtime.losses import per_example
from lad_tf.runtime.precision import resolve_precision, with_policy

log = logging.getLogger("lad_tf")


# -- process-wide settings ------------------------------------------------------------------------
def configure(execution):
  """Applies the process-wide settings of `execution`: op determinism (seeds included). Precision is
  not process-wide: the executor applies it to the copies it trains. Returns the training policy."""
  import tensorflow as tf
  if execution.deterministic:
    execution.seed_everything()
    tf.config.experimental.enable_op_determinism()
  return resolve_precision(execution.precision)


# -- the executor -----------------------------------------------------------------------------------
class LossTrainer(keras.Model):
  """Wraps a model; Keras `fit` on (x, y) batches minimises the batch mean of loss_fn's per-example
  losses and reports the mean of every figure loss_fn returns."""

  def __init__(self, model, loss_fn, **kwargs):
    super().__init__(**kwargs)
    self.model, self.loss_fn = model, loss_fn
    self.trackers = {}
    self.built = model.built  # BackupAndRestore needs a built model

  def call(self, x, training=False):
    return self.model(x, training=training)

  @property
  def metrics(self):
    return list(self.trackers.values())

  def build_metrics(self, element_spec):
    """One Mean metric per figure of loss_fn, found by calling it once (eagerly, training=False) on a
    batch of zeros shaped like the dataset's elements (metrics cannot be created inside fit's trace).
    So a loss_fn must change no state when training=False (e.g. carried perturbations)."""
    import tensorflow as tf
    if self.trackers:
      return
    zeros = tf.nest.map_structure(lambda s: tf.zeros([1, *s.shape[1:]], s.dtype), element_spec)
    x, y, _ = keras.utils.unpack_x_y_sample_weight(zeros)
    self.trackers = {k: keras.metrics.Mean(name=k) for k in self._figures(x, y, False)}

  def _figures(self, x, y, training):
    return per_example(self.loss_fn(self.model, x, y, training))

  def train_step(self, data):
    import tensorflow as tf
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
      figures = self._figures(x, y, True)
      losses = figures["loss"]
      # the batch mean, as Keras' sum_over_batch_size losses; divided by the replicas because
      # tf.distribute sums the replicas' gradients
      loss = tf.reduce_sum(losses) / tf.cast(tf.size(losses), tf.float32)
      loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
      scaled = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16, else the loss
    variables = self.model.trainable_variables
    self.optimizer.apply(tape.gradient(scaled, variables), variables)
    return self._update(figures)

  def test_step(self, data):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    return self._update(self._figures(x, y, False))

  def _update(self, figures):
    for key, values in figures.items():
      self.trackers[key].update_state(values)
    return {k: m.result() for k, m in self.trackers.items()}


def fit_resumable(model, train_ds, epochs, state_dir, validation_data=None, verbose=2, callbacks=()):
  """model.fit that resumes from `state_dir` after a kill (keras BackupAndRestore at every epoch);
  state_dir None: plain fit. `callbacks` run after the backup (a callback that stops or kills the run
  at an epoch's end leaves that epoch saved)."""
  backup = [] if state_dir is None else [keras.callbacks.BackupAndRestore(
      os.path.join(state_dir, "backup"), save_freq="epoch", delete_checkpoint=True)]
  return model.fit(train_ds, epochs=epochs, validation_data=validation_data, verbose=verbose,
                   callbacks=[*backup, *callbacks])


class Training:
  """A model, its loss and its optimizer under one ExecutionConfig; `fit` may be called several times
  (the optimizer's state carries over, e.g. on-the-fly fine-tuning with fresh data each epoch).

  The model is trained as a copy built in the strategy's scope when its variables are not (or under
  a mixed precision policy); `self.model` and `self.optimizer` are what trains (callbacks that
  watch or roll back weights use them), `finish()` copies the trained weights back into the given
  model and returns it.
  """

  def __init__(self, model, loss_fn, execution, optimizer, name="train"):
    self.execution, self.name, self.loss_fn = execution, name, loss_fn
    self.strategy = execution.get_strategy()
    self.original = model
    self.policy = resolve_precision(execution.precision)
    if self.policy == "float32":
      self.model = distribute.build_in_scope(model, self.strategy)
    else:
      with self.strategy.scope():
        self.model = with_policy(model, self.policy)
      self.model = distribute.build_in_scope(self.model, self.strategy)
    if self.policy == "mixed_float16":  # float16 gradients underflow without loss scaling
      make = optimizer
      optimizer = lambda: keras.optimizers.LossScaleOptimizer(make())
    self.custom = distribute.uses_custom_loop(self.strategy, execution.loop)
    if self.custom:
      self.optimizer = distribute.custom_loop_optimizer(self.strategy, optimizer)
    else:
      with self.strategy.scope():
        self.trainer = LossTrainer(self.model, loss_fn)
        self.trainer.compile(optimizer=optimizer(), jit_compile=execution.jit_compile)
      self.optimizer = self.trainer.optimizer

  def fit(self, data, epochs, state_dir=None, validation_data=None, verbose=None, callbacks=(),
          batch_size=None):
    """Runs (or resumes from state_dir) `epochs` epochs; returns the history dict. With verbose, a
    lad_tf.runtime.progress.Progress line (the time left) every execution.progress_s seconds; `batch_size`
    adds images/s to it."""
    verbose = self.execution.verbose if verbose is None else verbose
    if verbose:
      from lad_tf.runtime.progress import Progress
      callbacks = [*callbacks, Progress(self.name, self.execution.progress_s, batch_size)]
    if self.custom:
      return custom_loop.custom_fit(self.model, self.optimizer, self.loss_fn, data, epochs, self.strategy,
                                   state_dir, validation_data=validation_data, verbose=verbose,
                                   name=self.name, callbacks=callbacks)
    with self.strategy.scope():
      self.trainer.build_metrics(data.element_spec)
    return fit_resumable(self.trainer, data, epochs, state_dir, validation_data=validation_data,
                         verbose=verbose, callbacks=callbacks).history

  def finish(self):
    if self.custom and getattr(self.optimizer, "use_ema", False):  # Keras' fit does this at its end
      self.optimizer.finalize_variable_values(self.model.trainable_variables)
    if self.model is not self.original:
      self.original.set_weights(self.model.get_weights())
    return self.original


def fit(model, loss_fn, data, execution, epochs, optimizer, state_dir=None, validation_data=None,
        name="train", callbacks=(), batch_size=None):
  """Trains `model` for `epochs` epochs on `data` to minimise the mean of `loss_fn` (see the module
  docstring), resumable from `state_dir`; `model` ends trained. `optimizer` is a zero-argument
  callable (called inside the strategy's scope); `batch_size` only labels the progress lines
  (images/s). Returns the history dict {key: [per epoch]}."""
  training = Training(model, loss_fn, execution, optimizer, name)
  history = training.fit(data, epochs, state_dir, validation_data, callbacks=callbacks, batch_size=batch_size)
  training.finish()
  return {k: [float(v) for v in values] for k, values in history.items()}


def evaluate(model, loss_fn, data, name=None):
  """The mean of every figure of `loss_fn` (training=False) over a batched dataset, as floats; with a
  `name`, lad_tf.runtime.progress lines (the time left) while it runs."""
  import tensorflow as tf
  from lad_tf.runtime.progress import Progress
  progress = Progress(name) if name else keras.callbacks.Callback()
  steps = int(data.cardinality())
  progress.set_params({"epochs": 1, "steps": steps if steps > 0 else None})

  @tf.function(reduce_retracing=True)
  def step(x, y):
    figures = per_example(loss_fn(model, x, y, False))
    return {k: tf.reduce_sum(v) for k, v in figures.items()}, tf.size(figures["loss"])

  totals, count = {}, 0
  progress.on_predict_begin()
  for batch, (x, y) in enumerate(data):
    sums, n = step(x, y)
    progress.on_predict_batch_end(batch)
    count += int(n)
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  progress.on_predict_end()
  return {k: v / max(count, 1) for k, v in totals.items()}
