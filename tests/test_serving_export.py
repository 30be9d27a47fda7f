"""serving.export: layout, signatures, numerics, warmup, model card, atomic publication."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from serving import export
from serving import export_check
from serving import testing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def model():
  return testing.tiny_classifier(SHAPE, num_classes=3, seed=1)


@pytest.fixture(scope="module")
def images():
  return testing.random_images(12, SHAPE, seed=2)


@pytest.fixture(scope="module")
def exported(model, images, tmp_path_factory):
  base = str(tmp_path_factory.mktemp("export") / "lad")
  card = {"dataset": "fashion_mnist", "clean_accuracy": 0.91, "robustness": {"fgsm": 0.2}}
  path = export.export_classifier(model, base, sample_images=images, model_card=card)
  return base, path


def _subprocess_env():
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def test_layout_is_base_version_with_assets_extra(exported):
  base, path = exported
  assert path == os.path.join(os.path.abspath(base), "1")
  assert export.list_versions(base) == [1]
  for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests",
               "assets.extra/model_card.json"):
    assert os.path.exists(os.path.join(path, name)), name
  assert os.path.exists(os.path.join(base, "models.config"))
  assert not [n for n in os.listdir(base) if n.startswith(export.TMP_PREFIX)]


def test_signatures_names_dtypes_shapes(exported):
  import tensorflow as tf

  loaded = tf.saved_model.load(exported[1])
  assert set(loaded.signatures) == {"serving_default", "latent"}
  serve = loaded.signatures["serving_default"]
  _, inputs = serve.structured_input_signature
  assert list(inputs) == ["images"]
  assert inputs["images"].dtype == tf.float32
  assert inputs["images"].shape.as_list() == [None, *SHAPE]
  outputs = serve.structured_outputs
  assert set(outputs) == {"probabilities", "classes"}
  assert outputs["probabilities"].dtype == tf.float32
  assert outputs["probabilities"].shape.as_list() == [None, 3]
  assert outputs["classes"].dtype == tf.int64
  assert outputs["classes"].shape.as_list() == [None]
  assert set(loaded.signatures["latent"].structured_outputs) == {"latent"}


def test_served_values_equal_keras(exported, model):
  import keras
  import tensorflow as tf

  loaded = tf.saved_model.load(exported[1])
  x = testing.random_images(20, SHAPE, seed=7)  # Not the validation samples.
  got = loaded.signatures["serving_default"](images=tf.constant(x))
  want = testing.keras_outputs(model, x)
  assert np.max(np.abs(got["probabilities"].numpy() - want["probabilities"])) <= 1e-5
  np.testing.assert_array_equal(got["classes"].numpy(), want["classes"])
  np.testing.assert_allclose(got["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
  latent = loaded.signatures["latent"](images=tf.constant(x))["latent"].numpy()
  encoder = keras.Model(model.input, model.get_layer("latent").output)
  want_latent = np.asarray(encoder(x, training=False))
  assert latent.shape == (20, 16)
  assert np.max(np.abs(latent - want_latent)) <= 1e-5


def test_graph_rejects_nan_and_out_of_range_pixels(exported):
  import tensorflow as tf

  serve = tf.saved_model.load(exported[1]).signatures["serving_default"]
  for bad, fragment in ((np.nan, "NaN"), (1.5, "above 1"), (-0.1, "below 0")):
    x = testing.random_images(2, SHAPE, seed=3)
    x[1, 2, 3, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
      serve(images=tf.constant(x))
  serve(images=tf.constant(np.ones((1, *SHAPE), np.float32)))  # Both bounds are allowed.


def test_warmup_file_holds_prediction_logs(exported, model):
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  path = os.path.join(exported[1], "assets.extra", "tf_serving_warmup_requests")
  records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
             for r in tf.data.TFRecordDataset(path)]
  assert 1 <= len(records) <= 1000
  signatures = set()
  loaded = tf.saved_model.load(exported[1])
  for record in records:
    assert record.WhichOneof("log_type") == "predict_log"
    request = record.predict_log.request
    assert request.model_spec.name == "lad"
    signatures.add(request.model_spec.signature_name)
    x = tf.make_ndarray(request.inputs["images"])
    assert x.dtype == np.float32 and x.shape[1:] == SHAPE and x.shape[0] >= 1
    assert 0.0 <= x.min() and x.max() <= 1.0
    if request.model_spec.signature_name == "serving_default":
      got = loaded.signatures["serving_default"](images=tf.constant(x))
      np.testing.assert_array_equal(got["classes"].numpy(),
                                    testing.keras_outputs(model, x)["classes"])
  assert signatures == {"serving_default", "latent"}


def test_model_card_and_models_config(exported):
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  base, path = exported
  with open(os.path.join(path, "assets.extra", "model_card.json")) as f:
    card = json.load(f)
  assert card["dataset"] == "fashion_mnist"
  assert card["clean_accuracy"] == 0.91
  assert card["robustness"] == {"fgsm": 0.2}
  assert card["version"] == 1 and card["model_name"] == "lad"
  assert card["input"]["range"] == [0.0, 1.0] and card["input"]["name"] == "images"
  assert card["validation"]["max_abs_diff"] <= 1e-5
  assert set(card["signatures"]) == {"serving_default", "latent"}
  config = model_server_config_pb2.ModelServerConfig()
  with open(os.path.join(base, "models.config")) as f:
    text_format.Parse(f.read(), config)
  (entry,) = config.model_config_list.config
  assert entry.name == "lad"
  assert entry.base_path == os.path.abspath(base)
  assert entry.model_platform == "tensorflow"


def test_versions_increase_and_are_immutable(model, images, tmp_path):
  base = str(tmp_path / "m")
  assert export.export_classifier(model, base, sample_images=images[:2]).endswith("/1")
  assert export.export_classifier(model, base, sample_images=images[:2]).endswith("/2")
  with pytest.raises(FileExistsError, match="already exists"):
    export.export_classifier(model, base, sample_images=images[:2], version=2)
  assert export.export_classifier(model, base, sample_images=images[:2], version=10).endswith(
      "/10")
  assert export.export_classifier(model, base, sample_images=images[:2]).endswith("/11")
  assert export.list_versions(base) == [1, 2, 10, 11]


def test_failed_validation_publishes_nothing(model, images, tmp_path, monkeypatch):
  base = str(tmp_path / "m")
  monkeypatch.setattr(export_check, "TOLERANCE", -1.0)  # Any difference, even 0, now fails.
  with pytest.raises(export.ExportError, match="refusing to publish"):
    export.export_classifier(model, base, sample_images=images)
  assert export.list_versions(base) == []
  assert os.listdir(base) == []  # No temporary folder left behind either.


def test_bad_arguments_are_named(model, images, tmp_path):
  import keras

  base = str(tmp_path / "m")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    export.export_classifier(model, base, sample_images=images * 255)
  with pytest.raises(ValueError, match="expects"):
    export.export_classifier(model, base, sample_images=testing.random_images(2, (9, 9, 1)))
  with pytest.raises(ValueError, match=r"\[N>=1, H, W, C\]"):
    export.export_classifier(model, base, sample_images=images[0])
  inputs = keras.Input(SHAPE)
  one_logit = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
  with pytest.raises(ValueError, match="2 logits"):
    export.export_classifier(one_logit, base, sample_images=images)
  assert export.list_versions(base) == []


def test_killed_export_leaves_no_integer_directory(tmp_path):
  """SIGKILL between writing and publishing: only an ignored .tmp-* folder may remain."""
  base = str(tmp_path / "m")
  script = textwrap.dedent(f"""
      import os, sys, time
      from serving import export, testing
      real_rename = os.rename
      def stalled_rename(src, dst):
          print("VALIDATED", flush=True)
          time.sleep(120)
          real_rename(src, dst)
      export.os.rename = stalled_rename
      model = testing.tiny_classifier({SHAPE!r}, num_classes=3, seed=1)
      export.export_classifier(model, {base!r}, sample_images=testing.random_images(4, {SHAPE!r}))
  """)
  process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=_subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "VALIDATED" not in line:
      line = process.stdout.readline()
      if not line and process.poll() is not None:
        break
    assert "VALIDATED" in line, "the export subprocess never reached the rename"
    leftovers = os.listdir(base)
    assert any(n.startswith(export.TMP_PREFIX) for n in leftovers)
    tmp_dir = os.path.join(base, next(n for n in leftovers if n.startswith(export.TMP_PREFIX)))
    assert os.path.exists(os.path.join(tmp_dir, "saved_model.pb"))  # Fully written...
    process.send_signal(signal.SIGKILL)
    process.wait(10)
  finally:
    if process.poll() is None:
      process.kill()
    process.stdout.close()
  assert export.list_versions(base) == []  # ...yet never visible as a version.
  assert all(not n.isdigit() for n in os.listdir(base))


def test_pipeline_export_with_random_fallback(tmp_path):
  """`python -m pipelines.export --workdir=DIR` with an unloadable dataset still exports."""
  workdir = tmp_path / "work"
  (workdir / "classifier").mkdir(parents=True)
  testing.tiny_classifier(SHAPE, num_classes=3, seed=4).save(
      str(workdir / "classifier" / "model.keras"))
  metrics = {"dataset": "no_such_dataset_for_tests", "original": {"clean_accuracy": 0.5}}
  (workdir / "metrics.json").write_text(json.dumps(metrics))
  (workdir / "evaluation").mkdir()
  (workdir / "evaluation" / "report.json").write_text(json.dumps({"pgd": {"accuracy": 0.1}}))
  env = _subprocess_env()
  result = subprocess.run(
      [sys.executable, "-m", "pipelines.export", f"--workdir={workdir}", "--model_name=demo",
       "--num_samples=4"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  version_dir = workdir / "export" / "1"
  assert (version_dir / "saved_model.pb").exists()
  card = json.loads((version_dir / "assets.extra" / "model_card.json").read_text())
  assert card["dataset"] == "no_such_dataset_for_tests"
  assert card["clean_accuracy"] == 0.5
  assert card["robustness"] == {"pgd": {"accuracy": 0.1}} and card["robustness_evaluated"]
  assert card["sample_images"].startswith("uniform random")
  assert card["source"]["stage"] == "classifier"
  assert "random" in result.stderr + result.stdout
  assert 'name: "demo"' in (workdir / "export" / "models.config").read_text()
