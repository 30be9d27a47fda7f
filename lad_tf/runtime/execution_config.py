"""`ExecutionConfig`: how (not what) a stage computes, composed into every stage's config and applied by
lad_tf.runtime.execution. Plain data that imports no TensorFlow, so the command lines can make their
flags of its defaults and print --help without starting TensorFlow."""
import dataclasses
from typing import Any

from lad_tf.runtime import distribute
from lad_tf.runtime.precision import PRECISIONS


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How (not what) a stage computes; composed into every stage's config.

  strategy: "default", "mirrored", "multi_worker" (or a tf.distribute.Strategy).
  loop: "auto" (custom loop under multi_worker, Keras fit otherwise), "fit" or "custom".
  seed: seeds Python, NumPy, TensorFlow and Keras at the start of each stage.
  deterministic: also tf.config.experimental.enable_op_determinism (process-wide).
  precision: the dtype policy of *training* ("float32", "mixed_float16" on GPUs, "mixed_bfloat16" on
    CPUs with AVX512-BF16 / AMX, or "auto": see `auto_precision`). The executor trains a copy of the
    model under that policy and copies the float32 weights back, so saved models, inference, the
    boundaries and serving stay float32.
  jit_compile: XLA for the Keras fit train steps.
  verbose: 0 silent, 1 or 2 progress per epoch, plus (both) a lad_tf.runtime.progress line with the time
    left every `progress_s` seconds.
  progress_s: seconds between two progress lines of a training loop.
  """
  strategy: Any = "default"
  loop: str = "auto"
  seed: int = 0
  deterministic: bool = False
  precision: str = "float32"
  jit_compile: bool = False
  verbose: int = 2
  progress_s: float = 10.0

  def __post_init__(self):
    if isinstance(self.strategy, str) and self.strategy not in distribute.STRATEGIES:
      raise ValueError(f"strategy must be one of {distribute.STRATEGIES}, got '{self.strategy}'")
    if self.loop not in distribute.LOOPS:
      raise ValueError(f"loop must be one of {distribute.LOOPS}, got '{self.loop}'")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")

  def get_strategy(self):
    return distribute.get_strategy(self.strategy)

  def seed_everything(self):
    import keras
    keras.utils.set_random_seed(self.seed)
