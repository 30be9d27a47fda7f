"""Training under `tf.distribute`: strategy by name, chief-only writes, local clusters.

Strategies (`get_strategy(name)`; the command lines take `--strategy=NAME`):
  default       no distribution (TensorFlow's default strategy): one device.
  mirrored      `tf.distribute.MirroredStrategy`: every local GPU (or the CPU) of one machine.
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` environment
                variable: the same program runs on every worker; gradients are all-reduced each step.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy with more than one worker (keras-team/keras#20585),
so lad_tf.runtime.execution.fit runs lad_tf.runtime.custom_loop.custom_fit there: a custom loop with the same semantics as `fit` (loss = mean over the global batch, one optimizer step per
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
