"""tf.distribute: two MultiWorkerMirroredStrategy workers on loopback end with the same weights and the
chief's export is valid; the custom loop trains exactly as Keras fit; strategies by name; options.

Run as a script (`python tests/test_distribute.py worker OUT_DIR`, TF_CONFIG set), this file is one
worker of the two-worker test.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lad_tf.runtime.execution import ExecutionConfig
from kill import Killed, KillAfter

WORKERS = 2
TRAIN_EXAMPLES = 320      # 5 global batches of 64: a few steps per epoch
EPOCHS = 2
BATCH = 64
WORKER_TIMEOUT_S = 240


# -- one worker of the two-worker test (runs in its own process) -----------------------------------
def _worker(out_dir):
  from lad_tf.runtime import distribute
  strategy = distribute.get_strategy("multi_worker")  # before any other TensorFlow op
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import training

  data = datasets.load("digits")
  train = data.train.take(np.arange(TRAIN_EXAMPLES))
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  with distribute.write_dir(os.path.join(out_dir, "state"), strategy) as state:
    history, accuracy = training.train_classifier(
        model, train, data.test, training.TrainConfig(epochs=EPOCHS, batch_size=BATCH,
                                                      execution=ExecutionConfig(strategy="multi_worker", verbose=0)),
        state)
  _, task_id = distribute.task(strategy)
  result = {"task": task_id, "chief": distribute.is_chief(strategy), "history": history,
            "accuracy": accuracy, "replicas": strategy.num_replicas_in_sync}
  np.savez(os.path.join(out_dir, f"weights-{task_id}.npz"), *model.get_weights())
  if result["chief"]:
    images = data.test.x[:16]
    np.save(os.path.join(out_dir, "images.npy"), images)
    np.save(os.path.join(out_dir, "logits.npy"), np.asarray(model(images, training=False)))
    model.save(os.path.join(out_dir, "model.keras"))
    from serving import export as serving_export  # an import error fails the test, not skips a check
    result["export"] = serving_export.export_classifier(model, os.path.join(out_dir, "export"),
                                                        sample_images=images, model_name="lad")
  with open(os.path.join(out_dir, f"result-{task_id}.json"), "w") as f:
    json.dump(result, f)


# -- the two-worker test ----------------------------------------------------------------------------
def _launch_workers(out_dir, tmp_root):
  from lad_tf.runtime import distribute
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), TF_CPP_MIN_LOG_LEVEL="2",
             TMPDIR=tmp_root, CUDA_VISIBLE_DEVICES="")
  procs = []
  for tf_config in distribute.local_tf_configs(WORKERS):
    procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", out_dir],
                                  env=dict(env, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outputs, deadline = [], time.time() + WORKER_TIMEOUT_S
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
      outputs.append(out)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out[-4000:]}"


def _single_process_reference(epochs):
  """The same training in this process, no distribution, through the same custom loop (Keras fit
  draws its shuffles differently from the second epoch on; see test_custom_loop_*_as_fit)."""
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import training
  data = datasets.load("digits")
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", data.spec.image_shape, data.spec.num_classes)
  history, _ = training.train_classifier(
      model, data.train.take(np.arange(TRAIN_EXAMPLES)), data.test,
      training.TrainConfig(epochs=epochs, batch_size=BATCH, execution=ExecutionConfig(verbose=0, loop="custom")),
      state_dir=None)
  return model, history


def test_two_workers_train_to_identical_weights_and_the_chief_exports(tmp_path):
  out_dir, tmp_root = tmp_path / "out", tmp_path / "tmp"
  out_dir.mkdir()
  tmp_root.mkdir()
  _launch_workers(str(out_dir), str(tmp_root))

  results = [json.loads((out_dir / f"result-{i}.json").read_text()) for i in range(WORKERS)]
  assert [r["chief"] for r in results] == [True, False]
  assert all(r["replicas"] == WORKERS for r in results)
  weights = [np.load(out_dir / f"weights-{i}.npz") for i in range(WORKERS)]
  for name in weights[0].files:
    np.testing.assert_array_equal(weights[0][name], weights[1][name])
  # the same training as one process over the same global batches (up to summation order)
  reference, history = _single_process_reference(EPOCHS)
  for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
    np.testing.assert_allclose(results[0]["history"][key], history[key], rtol=1e-4)
  for got, want in zip([weights[0][n] for n in weights[0].files], reference.get_weights()):
    np.testing.assert_allclose(got, want, atol=1e-4)

  # only the chief wrote artifacts: the other worker's checkpoints lived in a temporary folder
  assert not list(tmp_root.iterdir()), f"a worker left files behind: {list(tmp_root.iterdir())}"
  assert not (out_dir / "state" / "backup").exists()  # deleted once training ended
  assert sorted(p.name for p in out_dir.iterdir() if p.suffix == ".keras") == ["model.keras"]
  import keras
  images, logits = np.load(out_dir / "images.npy"), np.load(out_dir / "logits.npy")
  loaded = keras.models.load_model(out_dir / "model.keras", compile=False)
  np.testing.assert_allclose(np.asarray(loaded(images, training=False)), logits, atol=1e-5)
  import tensorflow as tf
  served = tf.saved_model.load(results[0]["export"]).signatures["serving_default"]
  outputs = {k: v.numpy() for k, v in served(tf.constant(images)).items()}
  np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(logits).numpy(), atol=1e-5)


# -- the custom loop against Keras fit (default strategy, in process) --------------------------------
def _digits(n=256):
  from lad_tf.data import datasets
  return datasets.load("digits"), np.arange(n)


def test_custom_loop_trains_the_classifier_exactly_as_fit(tmp_path):
  # One epoch: from the second on, Keras fit skips one of the dataset's seeded reshuffles (it opens
  # an extra iterator), so the epochs see other (equally random) orders; the loss, optimizer, batch
  # size and steps are the same.
  import keras
  from lad_tf import models
  from lad_tf.runtime import training
  data, rows = _digits()
  runs = {}
  for loop in ("fit", "custom"):
    keras.utils.set_random_seed(0)
    model = models.build_classifier("lenet5", data.spec.image_shape, 10)
    history, accuracy = training.train_classifier(
        model, data.train.take(rows), data.test, training.TrainConfig(epochs=1, batch_size=64,
                                                                      execution=ExecutionConfig(verbose=0, loop=loop)),
        str(tmp_path / loop))
    runs[loop] = (model.get_weights(), history, accuracy)
  for a, b in zip(runs["fit"][0], runs["custom"][0]):
    np.testing.assert_allclose(a, b, atol=1e-6)
  for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
    np.testing.assert_allclose(runs["fit"][1][key], runs["custom"][1][key], rtol=1e-5)
  assert runs["fit"][2] == runs["custom"][2]


def test_custom_loop_fine_tunes_and_trains_the_generator_as_fit(tmp_path):
  import keras
  from lad_tf import models
  from lad_tf.lad import decoder as decoder_lib, fine_tuning
  data, rows = _digits(128)
  x = data.train.x[rows]
  x_adv = np.clip(x + np.random.default_rng(0).normal(scale=0.1, size=x.shape), 0, 1).astype(np.float32)
  keras.utils.set_random_seed(0)
  classifier = models.build_classifier("lenet5", data.spec.image_shape, 10)
  tuned = {loop: fine_tuning.fine_tune(classifier, x, x_adv, data.train.y[rows],
                                   fine_tuning.FineTuneConfig(epochs=1, execution=ExecutionConfig(verbose=0, loop=loop)))
           for loop in ("fit", "custom")}
  for a, b in zip(tuned["fit"].get_weights(), tuned["custom"].get_weights()):
    np.testing.assert_allclose(a, b, atol=1e-6)

  phi, _ = models.split_at_latent(classifier)
  losses = {}
  for loop in ("fit", "custom"):
    keras.utils.set_random_seed(0)
    decoder = models.build_generator("lenet5_decoder", 500, data.spec.image_shape)
    config = decoder_lib.DecoderConfig(epochs=1, batch_size=32, execution=ExecutionConfig(verbose=0, loop=loop))
    losses[loop] = decoder_lib.train_decoder(phi, decoder, data.train.take(rows), data.test.take(rows),
                                             config, state_dir=str(tmp_path / loop))
  np.testing.assert_allclose(losses["fit"]["history"]["loss"], losses["custom"]["history"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(losses["fit"]["test_loss"], losses["custom"]["test_loss"], rtol=1e-5)


def test_custom_loop_resumes_exactly_after_a_kill(tmp_path):
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import custom_loop, losses
  data, rows = _digits()
  ds = datasets.to_tf_dataset(data.train.take(rows), 64)

  def fresh():
    keras.utils.set_random_seed(0)
    return (models.build_classifier("lenet5", data.spec.image_shape, 10),
            keras.optimizers.SGD(0.05, momentum=0.9))  # momentum: the optimizer state must come back

  straight, optimizer = fresh()
  custom_loop.custom_fit(straight, optimizer, losses.classification, ds, 3, verbose=0)
  model, optimizer = fresh()
  with pytest.raises(Killed):
    custom_loop.custom_fit(model, optimizer, losses.classification, ds, 3, state_dir=str(tmp_path),
                          verbose=0, callbacks=[KillAfter(0)])
  model, optimizer = fresh()
  history = custom_loop.custom_fit(model, optimizer, losses.classification, ds, 3,
                                  state_dir=str(tmp_path), verbose=0)
  assert len(history["loss"]) == 2  # epochs 2 and 3 only
  for a, b in zip(straight.get_weights(), model.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert not (tmp_path / "backup").exists()


# -- strategies by name and the options ------------------------------------------------------------
def test_strategies_by_name_and_mirrored_training(tmp_path):
  import keras
  import tensorflow as tf
  from lad_tf import models
  from lad_tf.runtime import distribute, training
  assert distribute.get_strategy("default") is tf.distribute.get_strategy()
  mirrored = distribute.get_strategy("mirrored")
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  assert distribute.get_strategy("mirrored") is mirrored
  assert distribute.is_chief(mirrored) and distribute.num_workers(mirrored) == 1
  assert not distribute.uses_custom_loop(mirrored)
  with pytest.raises(ValueError, match="strategy must be one of"):
    distribute.get_strategy("tpu")
  data, rows = _digits(128)
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", data.spec.image_shape, 10)
  before = [w.copy() for w in model.get_weights()]
  history, _ = training.train_classifier(model, data.train.take(rows), data.test.take(rows),
                                         training.TrainConfig(epochs=1, batch_size=64,
                                                              execution=ExecutionConfig(strategy="mirrored", verbose=0)),
                                         str(tmp_path))
  assert len(history["loss"]) == 1
  assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # trained in place
  model.predict(data.test.x[:4], verbose=0)  # and usable outside the strategy
  # the custom loop under MirroredStrategy trains as under the default strategy
  trained = {}
  for name in ("default", "mirrored"):
    keras.utils.set_random_seed(0)
    model = models.build_classifier("lenet5", data.spec.image_shape, 10)
    training.train_classifier(model, data.train.take(rows), data.test.take(rows),
                              training.TrainConfig(epochs=1, batch_size=64,
                                                   execution=ExecutionConfig(strategy=name, verbose=0, loop="custom")),
                              None)
    trained[name] = model.get_weights()
  for a, b in zip(trained["default"], trained["mirrored"]):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mixed_precision_is_a_warned_no_op_without_a_gpu():
  import keras
  from lad_tf.runtime import execution, precision
  if precision.has_gpu():
    pytest.skip("a GPU is present")
  assert execution.configure(ExecutionConfig(precision="mixed_float16")) == "float32"
  assert keras.mixed_precision.global_policy().name == "float32"


def test_mixed_precision_trains_with_loss_scaling_in_both_loops():
  """mixed_float16 forced on a CPU (slow there, but it runs the same code as on GPUs)."""
  import keras
  from lad_tf.data import datasets
  from lad_tf.lad import fine_tuning
  from lad_tf.runtime import training
  rng = np.random.default_rng(0)
  x = rng.random((128, 8, 8, 1)).astype(np.float32)
  y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
  try:
    keras.mixed_precision.set_global_policy("mixed_float16")  # what configure refuses without a GPU
    for loop in ("fit", "custom"):
      keras.utils.set_random_seed(0)
      inputs = keras.Input((8, 8, 1))
      hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
      model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
      assert model(x[:1]).dtype == "float16"
      history, _ = training.train_classifier(
          model, datasets.Split(x, y), datasets.Split(x, y),
          training.TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2,
                               execution=ExecutionConfig(verbose=0, loop=loop)), None)
      assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
      tuned = fine_tuning.fine_tune(model, x, x, y, fine_tuning.FineTuneConfig(epochs=1, execution=ExecutionConfig(verbose=0, loop=loop)))
      assert all(np.all(np.isfinite(w)) for w in tuned.get_weights())
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_write_dir_keeps_nothing_on_other_workers(tmp_path, monkeypatch):
  from lad_tf.runtime import distribute
  monkeypatch.setattr(distribute, "is_chief", lambda strategy=None: False)
  with distribute.write_dir(str(tmp_path / "chief"), "default") as path:
    open(os.path.join(path, "checkpoint"), "w").close()
  assert not os.path.exists(path) and not (tmp_path / "chief").exists()


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(sys.argv[2])
  else:
    sys.exit("usage: test_distribute.py worker OUT_DIR (with TF_CONFIG set)")
