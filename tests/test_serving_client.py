"""serving.client: image loading, the Python API over gRPC and REST, and the command line."""
import os
import subprocess
import sys

import numpy as np
import pytest

from serving import client as client_lib
from serving import export
from serving import launch
from serving import testing

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  root = tmp_path_factory.mktemp("client")
  base = str(root / "digits")
  model = testing.tiny_classifier(SHAPE, num_classes=4, seed=3)
  export.export_classifier(model, base, sample_images=testing.random_images(4, SHAPE),
                           model_name="digits")
  server = launch.ServerProcess(base, model_name="digits", log_path=str(root / "server.log"))
  server.start()
  yield model, server
  server.stop()


def _png(path, pixels):
  import tensorflow as tf
  with open(path, "wb") as f:
    f.write(tf.io.encode_png(pixels).numpy())


@pytest.fixture
def image_dir(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(3, *SHAPE), dtype=np.uint8)
  for i in range(2):
    _png(tmp_path / f"img{i}.png", pixels[i])
  np.save(tmp_path / "img2.npy", pixels[2])  # uint8 [H, W, C]
  (tmp_path / "notes.txt").write_text("ignored")
  return tmp_path, pixels.astype(np.float32) / 255.0


def test_load_images_from_directory_scales_to_unit_range(image_dir):
  path, want = image_dir
  images, names = client_lib.load_images(str(path), channels=1)
  assert names == ["img0.png", "img1.png", "img2.npy"]
  assert images.dtype == np.float32 and images.shape == (3, *SHAPE)
  np.testing.assert_allclose(images, want, atol=1e-7)


def test_load_images_single_files_and_batches(image_dir, tmp_path):
  path, want = image_dir
  images, names = client_lib.load_images(str(path / "img1.png"))
  np.testing.assert_allclose(images[0], want[1], atol=1e-7)
  assert names == ["img1.png"]
  rgb, _ = client_lib.load_images(str(path / "img1.png"), channels=3)
  assert rgb.shape == (1, 8, 8, 3)
  batch = np.random.default_rng(1).random((4, *SHAPE), dtype=np.float32)
  np.save(tmp_path / "batch.npy", batch)
  images, names = client_lib.load_images(str(tmp_path / "batch.npy"))
  np.testing.assert_array_equal(images, batch)
  assert names == [f"batch.npy[{i}]" for i in range(4)]
  np.save(tmp_path / "gray.npy", batch[0, :, :, 0])  # [H, W] gains batch and channel axes.
  assert client_lib.load_images(str(tmp_path / "gray.npy"))[0].shape == (1, *SHAPE)


def test_load_images_errors_name_the_problem(tmp_path):
  np.save(tmp_path / "bad.npy", np.full((8, 8), 255.0, np.float32))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    client_lib.load_images(str(tmp_path / "bad.npy"))
  with pytest.raises(FileNotFoundError):
    client_lib.load_images(str(tmp_path / "missing.png"))
  (tmp_path / "x.jpg").write_bytes(b"")
  with pytest.raises(ValueError, match="png"):
    client_lib.load_images(str(tmp_path / "x.jpg"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="no .png"):
    client_lib.load_images(str(empty))


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_predict_client_matches_keras(served, rest):
  model, server = served
  address = server.rest_address if rest else server.grpc_address
  x = testing.random_images(5, SHAPE, seed=8)
  with client_lib.PredictClient(address, model_name="digits", rest=rest) as client:
    out = client.predict(x)
    assert set(out) == {"probabilities", "classes"}
    assert out["probabilities"].dtype == np.float32 and out["classes"].dtype == np.int64
    want = testing.keras_outputs(model, x)
    assert np.max(np.abs(out["probabilities"] - want["probabilities"])) <= 1e-5
    np.testing.assert_array_equal(out["classes"], want["classes"])
    single = client.predict(x[0])  # One [H, W, C] image is a batch of one.
    assert single["classes"].shape == (1,) and single["classes"][0] == want["classes"][0]
    assert client.status()[0]["state"] == "AVAILABLE"
    assert client.input_shape() == list(SHAPE)
    with pytest.raises(client_lib.RequestError) as info:
      client.predict(x * 255)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.http == 400
    assert "outside [0, 1]" in info.value.message
    with pytest.raises(client_lib.RequestError) as info:
      client.predict(x, version=7)
    assert info.value.code == "NOT_FOUND" and info.value.http == 404


def test_command_line_prints_classes(served, image_dir):
  model, server = served
  path, images = image_dir
  env = dict(os.environ, PYTHONPATH=launch.REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "serving.client", f"--server={server.grpc_address}",
       "--model_name=digits", f"--images={path}"],
      cwd=launch.REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [line for line in result.stdout.splitlines() if "\tclass=" in line]
  assert [line.split("\t")[0] for line in lines] == ["img0.png", "img1.png", "img2.npy"]
  want = testing.keras_outputs(model, images)["classes"]
  assert [int(line.split("\t")[1].split("=")[1]) for line in lines] == list(want)


def test_client_rejects_bad_server_address():
  with pytest.raises(ValueError, match="HOST:PORT"):
    client_lib.PredictClient("localhost")


def test_decodes_tf_serving_style_value_fields():
  """tensorflow_model_server answers with float_val / int64_val, not tensor_content."""
  from tensorflow.core.framework import tensor_pb2
  from tensorflow.core.framework import tensor_shape_pb2
  from tensorflow.core.framework import types_pb2

  def proto(dtype, field, values, shape):
    p = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    getattr(p, field).extend(values)
    return p

  probs = client_lib._decode(proto(types_pb2.DT_FLOAT, "float_val", [0.25, 0.75, 1.0, 0.0], [2, 2]))
  np.testing.assert_array_equal(probs, np.array([[0.25, 0.75], [1.0, 0.0]], np.float32))
  classes = client_lib._decode(proto(types_pb2.DT_INT64, "int64_val", [1, 0], [2]))
  assert classes.dtype == np.int64 and classes.tolist() == [1, 0]
