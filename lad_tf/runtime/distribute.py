"""Training under `tf.distribute`: strategy by name, chief-only writes, the custom loop.

Strategies (`get_strategy(name)`; the command lines take `--strategy=NAME`):
  default       no distribution (TensorFlow's default strategy): one device.
  mirrored      `tf.distribute.MirroredStrategy`: every local GPU (or the CPU) of one machine.
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` environment
                variable: the same program runs on every worker; gradients are all-reduced each step.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy with more than one worker (keras-team/keras#20585),
so lad_tf.runtime.execution.fit runs `custom_fit` there: a
custom loop with the same semantics as `fit` (loss = mean over the global batch, one optimizer step per
global batch, the same epochs and dataset order) under `strategy.run`. `default` and `mirrored` keep
`fit` (it works there) unless a caller asks for the custom loop.

Only the chief writes artifacts: `is_chief()` tells, and `write_dir()` gives the others a temporary
folder that is deleted when they leave it. `MultiWorkerMirroredStrategy` must be created before
TensorFlow runs any op: command lines call `get_strategy` first thing.
"""
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time


log = logging.getLogger("lad_tf")

STRATEGIES = ("default", "mirrored", "multi_worker")
LOOPS = ("auto", "fit", "custom")

_STRATEGIES = {}  # name -> strategy: one per process (a second MultiWorkerMirroredStrategy fails)


# -- strategies ---------------------------------------------------------------------------------
def get_strategy(name=None):
  """The `tf.distribute.Strategy` called `name` (one of STRATEGIES), created once per process.

  None or "default" is TensorFlow's default (no-op) strategy; a Strategy object is returned as is.
  """
  import tensorflow as tf
  if name is None or isinstance(name, tf.distribute.Strategy):
    return name if name is not None else tf.distribute.get_strategy()
  if name not in STRATEGIES:
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got '{name}'")
  if name == "default":
    return tf.distribute.get_strategy()
  if name not in _STRATEGIES:
    if name == "mirrored":
      _STRATEGIES[name] = tf.distribute.MirroredStrategy()
    else:
      if not os.environ.get("TF_CONFIG"):
        log.warning("strategy multi_worker without TF_CONFIG: training as a single worker")
      _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
    strategy = _STRATEGIES[name]
    log.info("strategy %s: %d replica(s) in sync, %s", name, strategy.num_replicas_in_sync,
             "chief" if is_chief(strategy) else "worker %s" % (task(strategy),))
  return _STRATEGIES[name]


def strategy_name(strategy):
  """"default", "mirrored" or "multi_worker" for a strategy (or its name)."""
  import tensorflow as tf
  if strategy is None or isinstance(strategy, str):
    return strategy or "default"
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return "multi_worker"
  if isinstance(strategy, tf.distribute.MirroredStrategy):
    return "mirrored"
  return "default"


def is_multi_worker(strategy):
  import tensorflow as tf
  return isinstance(get_strategy(strategy), tf.distribute.MultiWorkerMirroredStrategy)


def task(strategy=None):
  """(task_type, task_id) of this process in its cluster; (None, None) outside a cluster."""
  strategy = get_strategy(strategy)
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return None, None
  return resolver.task_type, resolver.task_id


def num_workers(strategy=None):
  """Workers in the cluster (1 outside multi-worker training)."""
  strategy = get_strategy(strategy)
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  spec = resolver.cluster_spec().as_dict()
  return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def is_chief(strategy=None):
  """True on the process that writes artifacts: the `chief` task, else worker 0, else the only one."""
  task_type, task_id = task(strategy)
  if task_type is None:
    return True
  if task_type == "chief":
    return True
  if task_type == "worker":
    resolver = get_strategy(strategy).cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and int(task_id or 0) == 0
  return False


def uses_custom_loop(strategy, loop="auto"):
  """Whether the training loops run `custom_fit` rather than Keras `fit`."""
  if loop not in LOOPS:
    raise ValueError(f"loop must be one of {LOOPS}, got '{loop}'")
  if loop == "auto":
    return is_multi_worker(strategy)
  if loop == "fit" and is_multi_worker(strategy) and num_workers(strategy) > 1:
    raise ValueError("Keras fit fails under MultiWorkerMirroredStrategy with several workers "
                     "(keras-team/keras#20585): use loop='custom' (or 'auto')")
  return loop == "custom"


@contextlib.contextmanager
def write_dir(path, strategy=None):
  """`path` on the chief; on other workers a temporary folder deleted on exit (they keep nothing)."""
  if is_chief(strategy):
    os.makedirs(path, exist_ok=True)
    yield path
    return
  tmp = tempfile.mkdtemp(prefix="lad_tf-worker-")
  try:
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def build_in_scope(model, strategy):
  """A copy of a Keras model whose variables belong to `strategy` (the model itself if they do).

  Models must be built inside `strategy.scope()`: callers keep their plain model, train the copy,
  then take its weights back with `model.set_weights(copy.get_weights())`.
  """
  import keras
  strategy = get_strategy(strategy)
  if not model.weights or all(strategy.extended.variable_created_in_scope(_tf_variable(v))
                              for v in model.weights):
    return model
  with strategy.scope():
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
  return copy


def _tf_variable(variable):
  return getattr(variable, "value", variable)


# -- the custom loop ------------------------------------------------------------------------------
def distribute_dataset(dataset, strategy):
  """`strategy.experimental_distribute_dataset` over a dataset batched by the *global* batch size.

  Across workers the data are sharded element-wise (AutoShardPolicy.DATA): each worker reads the
  same seeded dataset and keeps its part of every global batch.
  """
  import tensorflow as tf
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def all_equal(strategy, value):
  """Whether every replica of `strategy` holds the same number `value` (a collective: call it on
  every worker at the same point of the program)."""
  import tensorflow as tf
  strategy = get_strategy(strategy)
  if strategy.num_replicas_in_sync == 1:
    return True
  value = float(value)
  vector = tf.constant([value, value * value, 1.0], tf.float32)

  @tf.function
  def sums():
    per_replica = strategy.run(lambda: tf.identity(vector))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  total, squares, n = (float(t) for t in sums())
  # sum(v)^2 == n * sum(v^2) only when every replica holds the same v (Cauchy-Schwarz)
  return abs(total * total - n * squares) <= 1e-3 * max(1.0, n * squares)


def _check_same_epoch(strategy, start_epoch):
  """All workers must resume at the same epoch, or the collectives would wait for ever."""
  if not all_equal(strategy, start_epoch):
    raise RuntimeError(f"workers resume at different epochs (this one at {start_epoch}): every worker "
                       f"must see the chief's backup (put the work directory on a shared filesystem), "
                       f"or delete the backup to start over")


def custom_loop_optimizer(strategy, make_optimizer):
  """The optimizer for custom_fit, created in the strategy's scope (loss-scaled under
  mixed_float16, which Keras `compile` would otherwise do for us)."""
  import keras
  with strategy.scope():
    optimizer = make_optimizer()
    if (keras.mixed_precision.global_policy().name == "mixed_float16"
        and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def custom_fit(model, optimizer, loss_fn, dataset, epochs, strategy=None, state_dir=None,
               validation_data=None, verbose=2, name="train", callbacks=()):
  """A `fit` equivalent under `strategy.run` (works under MultiWorkerMirroredStrategy); called by
  lad_tf.runtime.execution.fit, which picks it or Keras fit for the same loss_fn.

  Args:
    model: a Keras model built inside `strategy.scope()` (see `build_in_scope`).
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
  from lad_tf.runtime.execution import per_example
  strategy = get_strategy(strategy)
  variables = list(model.trainable_variables)
  with strategy.scope():
    if not optimizer.built:
      optimizer.build(variables)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
  backup = os.path.join(state_dir, "backup") if state_dir else None
  start_epoch = 0
  if backup:
    latest = tf.train.latest_checkpoint(backup)
    if latest:
      checkpoint.restore(latest).expect_partial()
      start_epoch = int(epoch_var.numpy())
      if verbose:
        log.info("%s: resumed from %s at epoch %d", name, latest, start_epoch)
  _check_same_epoch(strategy, start_epoch)

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

  distributed = distribute_dataset(dataset, strategy)
  history = {}
  chief = is_chief(strategy)
  call = lambda method, *args: [getattr(c, method)(*args) for c in callbacks if hasattr(c, method)]
  steps = int(dataset.cardinality())
  for callback in callbacks:
    if hasattr(callback, "set_params"):
      callback.set_params({"epochs": epochs, "steps": steps if steps > 0 else None, "verbose": verbose})
  with _checkpoint_dir(backup, strategy) as write_to:
    manager = tf.train.CheckpointManager(checkpoint, write_to, max_to_keep=1) if write_to else None
    call("on_train_begin", None)
    for epoch in range(start_epoch, epochs):
      call("on_epoch_begin", epoch, None)
      start = time.time()
      totals = None
      for step, batch in enumerate(distributed):
        sums = train_step(batch)
        call("on_train_batch_end", step, None)
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
      figures = _means(totals)
      if validation_data is not None:
        val = None
        for batch in validation_data:
          sums = eval_step(batch)
          val = sums if val is None else {k: val[k] + sums[k] for k in val}
        figures.update({f"val_{k}": v for k, v in _means(val).items()})
      for key, value in figures.items():
        history.setdefault(key, []).append(value)
      epoch_var.assign(epoch + 1)
      if manager:
        manager.save(checkpoint_number=epoch + 1)
      if verbose and chief:
        log.info("%s epoch %d/%d - %.1fs - %s", name, epoch + 1, epochs, time.time() - start,
                 " - ".join(f"{k}: {v:.4f}" for k, v in figures.items()))
      call("on_epoch_end", epoch, figures)
      if any(getattr(c, "stop_training", False) for c in callbacks):
        break
    call("on_train_end", None)
  if backup and chief:
    shutil.rmtree(backup, ignore_errors=True)  # as BackupAndRestore(delete_checkpoint=True)
  return history


def _means(totals):
  if not totals:
    return {}
  count = max(float(totals["count"]), 1.0)
  return {k: float(v) / count for k, v in totals.items() if k != "count"}


@contextlib.contextmanager
def _checkpoint_dir(backup, strategy):
  if backup is None:
    yield None
    return
  with write_dir(backup, strategy) as path:
    yield path


# -- local clusters (tests, benchmarks, trying multi-worker on one machine) ------------------------
def free_port():
  """A TCP port on the loopback interface that was free a moment ago (bound to port 0)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def local_tf_configs(num_workers):
  """TF_CONFIG values (JSON strings) of a `num_workers` cluster on localhost; worker 0 is the chief."""
  workers = [f"localhost:{free_port()}" for _ in range(num_workers)]
  return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
          for i in range(num_workers)]
