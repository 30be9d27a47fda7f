"""Training precision: what `precision="auto"` stands for on this machine, and the Keras policy copies
the executor trains. Precision is a setting of training only: saved models, inference, attacks and
serving stay float32."""
import logging

log = logging.getLogger("lad_tf")

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")


def has_gpu():
  import tensorflow as tf
  return bool(tf.config.list_physical_devices("GPU"))


def cpu_flags():
  """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# pipelines/benchmarks/precision.py (benchmarks/precision.json): on this project's 2-core AVX512-BF16
# machine, mixed_bfloat16 trained the Fashion-MNIST LeNet-5 (20,000 images, 3 epochs) to 86.67% test
# accuracy against float32's 86.39% (within 0.3 points) and the classifier plus its decoder 2.1x faster
# (decoder 2.4x at load 11-16; pipelines/benchmarks/decoder.py, read from CPU time, measures the LeNet
# decoder 1.44-1.52x at equal MSE). Set to False if a run of those benchmarks says otherwise.
BF16_MEASURED_ACCURATE = True


def auto_precision():
  """The policy "auto" stands for: mixed_bfloat16 on a CPU with AMX or AVX512-BF16 (where the
  precision benchmark showed accuracy within 0.3 points of float32), float32 elsewhere (GPUs
  included: mixed_float16 has not been measured here)."""
  if BF16_MEASURED_ACCURATE and not has_gpu() and set(BF16_CPU_FLAGS) & cpu_flags():
    return "mixed_bfloat16"
  return "float32"


def resolve_precision(precision):
  """The Keras policy name for `precision`; mixed_float16 without a GPU falls back to float32 with a
  warning (it only slows a CPU down)."""
  if precision == "auto":
    return auto_precision()
  if precision == "mixed_float16" and not has_gpu():
    log.warning("mixed_float16: no GPU found, it would not speed up a CPU; keeping float32")
    return "float32"
  return precision


def with_policy(model, policy):
  """A copy of a functional/sequential Keras model whose layers compute under `policy` (variables stay
  float32, so weights copy back and forth), or the model itself when it already does."""
  import keras
  if all(layer.dtype_policy.name == policy for layer in model.layers if layer.weights) or not model.layers:
    return model

  def clone(layer):
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)

  copy = keras.models.clone_model(model, clone_function=clone)
  copy.set_weights(model.get_weights())
  return copy
