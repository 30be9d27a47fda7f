"""The training executor (one loss function for fit and the custom loop, precision as an execution
setting) and the work directory's fingerprinted stages, on tiny models and folders."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lad_tf.runtime import execution, losses, precision
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.run.workdir import WorkDir
from lad_tf.runtime.files import atomic_path, read_json


def _task(n=256, seed=0):
  """Dark images (class 0) against bright ones (class 1): a task any small model learns at once."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, size=n)
  x = (0.5 * rng.random((n, 6, 6, 1)) + 0.5 * y[:, None, None, None]).astype(np.float32)
  return x, y.astype(np.int64)


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6, 6, 1))
  hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
  return keras.Model(inputs, keras.layers.Dense(2)(hidden))


@pytest.mark.parametrize("loop", ["fit", "custom"])
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fit_trains_under_each_loop_and_precision_and_leaves_a_float32_model(loop, precision):
  x, y = _task()
  ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
  model = _model()
  run = ExecutionConfig(verbose=0, loop=loop, precision=precision)
  history = execution.fit(model, losses.classification, ds, run, 6, lambda: keras.optimizers.Adam(1e-2),
                          validation_data=ds)
  assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
  assert history["loss"][-1] < 0.5 * history["loss"][0]
  assert history["val_accuracy"][-1] > 0.95
  # the trained model is the caller's own, still float32 (precision applied to a training copy)
  assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
  accuracy = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
  assert accuracy == pytest.approx(history["val_accuracy"][-1], abs=0.02 if precision == "float32" else 0.05)


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
  monkeypatch.setattr(precision, "has_gpu", lambda: False)
  monkeypatch.setattr(precision, "cpu_flags", lambda: {"sse4_2", "avx512_bf16"})
  assert precision.resolve_precision("auto") == "mixed_bfloat16"
  monkeypatch.setattr(precision, "cpu_flags", lambda: {"sse4_2", "avx2"})
  assert precision.resolve_precision("auto") == "float32"
  monkeypatch.setattr(precision, "BF16_MEASURED_ACCURATE", False)
  monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
  assert precision.resolve_precision("auto") == "float32"
  assert precision.resolve_precision("mixed_float16") == "float32"  # no GPU: a warning, not a slow run
  with pytest.raises(ValueError, match="precision must be one of"):
    ExecutionConfig(precision="float8")


def test_a_loss_without_per_example_losses_is_refused():
  x, y = _task(32)
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
  with pytest.raises(ValueError, match="per-example losses or a dict with 'loss'"):
    execution.fit(_model(), lambda m, xb, yb, t: {"error": losses.cross_entropy(yb, m(xb))}, ds,
                  ExecutionConfig(verbose=0), 1, lambda: keras.optimizers.SGD(0.1))


def test_stages_rerun_exactly_when_their_settings_change(tmp_path):
  work = WorkDir(str(tmp_path))
  calls = []

  def stage(value):
    def run(out):
      calls.append(value)
      with open(os.path.join(out, "value.txt"), "w") as f:
        f.write(str(value))
    return run

  work.run_stage("a", {"lr": 1}, stage(1))
  work.run_stage("a", {"lr": 1}, stage(1))
  assert calls == [1] and work.done("a", {"lr": 1}) and not work.done("a", {"lr": 2})
  work.run_stage("a", {"lr": 2}, stage(2))
  assert calls == [1, 2] and open(os.path.join(work.path("a"), "value.txt")).read() == "2"
  assert read_json(work.path("a", "stage.json"))["settings"] == {"lr": 2}
  # a killed run with other settings leaves a partial folder whose state must not be reused
  os.makedirs(work.path(".b.partial"))
  with open(work.path(".b.partial", "stage.json"), "w") as f:
    f.write('{"fingerprint": "0000"}')
  open(work.path(".b.partial", "stale-backup"), "w").close()
  work.run_stage("b", {"x": 1}, lambda out: calls.append(sorted(os.listdir(out))))
  assert calls[-1] == ["stage.json"]


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
  target = tmp_path / "model.keras"
  with pytest.raises(RuntimeError):
    with atomic_path(str(target)) as tmp:
      assert tmp.endswith(".keras") and os.path.dirname(tmp) == str(tmp_path)
      open(tmp, "w").write("half")
      raise RuntimeError("killed")
  assert list(tmp_path.iterdir()) == []
