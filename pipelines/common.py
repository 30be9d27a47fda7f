"""Flags, logging and error reporting shared by the command lines."""
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

flags.DEFINE_bool("verbose", False, "Show the Python traceback of an expected error (a missing dataset, "
                  "a corrupt file, settings that do not fit together) instead of its one-line message.")

# Exit status of an expected error (the message says what to do) and of a usage error.
EXIT_ERROR = 1
EXIT_USAGE = 2


def run(main):
  """app.run(main), with expected errors as one line on stderr and a non-zero exit, no traceback.

  Expected errors are lad_tf's `LadError`s (they name the problem and the way out) and absl's
  UsageError; anything else is a bug and keeps its traceback. --verbose keeps every traceback.
  """
  def guarded(argv):
    from lad_tf.errors import LadError
    try:
      return main(argv)
    except (LadError, app.UsageError) as e:
      if flags.FLAGS.verbose:
        raise
      usage = isinstance(e, app.UsageError)
      hint = " (see --help)" if usage else " (--verbose shows the traceback)"
      print(f"error: {e}{hint}", file=sys.stderr)
      sys.exit(EXIT_USAGE if usage else EXIT_ERROR)

  app.run(guarded)


def define_data_flags(default_dataset="digits"):
  from lad_tf.data import datasets
  flags.DEFINE_enum("dataset", default_dataset, sorted(datasets.REGISTRY), "Dataset by name.")
  flags.DEFINE_string("data_dir", None, "Folder with the dataset's own files (also TFDS's data_dir).")
  flags.DEFINE_string("workdir", None, "Work directory (default: runs/DATASET).")
  flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same numbers.")


def setup_logging():
  """lad_tf's progress lines (logger "lad_tf") on stderr through absl."""
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger("lad_tf").setLevel(logging.INFO)


def workdir(flag_values):
  return flag_values.workdir or f"runs/{flag_values.dataset}"


# The command lines' --precision: the fastest policy measured accurate enough on this hardware, where
# the library's ExecutionConfig keeps float32 unless a caller asks.
COMMAND_LINE_PRECISION = "auto"


def define_distribution_flags():
  """--strategy, --deterministic, --precision, --jit_compile (see docs/SCALING.md): the choices of
  lad_tf.runtime, the defaults of its ExecutionConfig."""
  from lad_tf.runtime import distribute, execution, precision
  defaults = execution.ExecutionConfig()
  flags.DEFINE_enum("strategy", defaults.strategy, list(distribute.STRATEGIES),
                    "tf.distribute strategy of every training loop: default (one device), mirrored (all "
                    "local GPUs), multi_worker (MultiWorkerMirroredStrategy from the TF_CONFIG environment "
                    "variable; run the same command on every worker, only the chief writes --workdir).")
  flags.DEFINE_bool("deterministic", defaults.deterministic, "Reproducible runs: seeds everything and enables "
                    "tf.config.experimental.enable_op_determinism (slower on GPUs).")
  flags.DEFINE_enum("precision", COMMAND_LINE_PRECISION, list(precision.PRECISIONS),
                    "Keras dtype policy of training (losses in float32): mixed_float16 on GPUs (float32 "
                    "with a warning without one), mixed_bfloat16 on CPUs with AVX512-BF16/AMX, auto: what "
                    "lad_tf.runtime.precision.auto_precision measured accurate enough on this hardware.")
  flags.DEFINE_bool("jit_compile", defaults.jit_compile, "XLA-compile the Keras fit train steps (measured "
                    "slower on CPU: LeNet, and svhnNet 2.2x / its decoder 5x the CPU time per batch; try it on "
                    "GPUs).")


def execution_config(flag_values):
  """The ExecutionConfig of --seed and the distribution flags. Creates the strategy first (a
  MultiWorkerMirroredStrategy must exist before TensorFlow runs any op)."""
  from lad_tf.runtime import distribute
  from lad_tf.runtime.execution import ExecutionConfig
  distribute.get_strategy(flag_values.strategy)
  return ExecutionConfig(strategy=flag_values.strategy, seed=flag_values.seed,
                         deterministic=flag_values.deterministic, precision=flag_values.precision,
                         jit_compile=flag_values.jit_compile)
