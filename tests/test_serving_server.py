"""serving.server in a subprocess on loopback: round trips, metadata, status, bad input, versions.

The version-push test changes what is served, so it runs last in this module.
"""
import concurrent.futures
import json
import os
import re

import numpy as np
import pytest

from serving import client as client_lib
from serving import export
from serving import launch
from serving import tensors
from serving import testing

SHAPE = (8, 8, 1)
MAX_BATCH = 8
MAX_BYTES = 100_000


class Served:
  pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  root = tmp_path_factory.mktemp("server")
  s = Served()
  s.base = str(root / "lad")
  s.model = testing.tiny_classifier(SHAPE, num_classes=3, seed=1)
  export.export_classifier(s.model, s.base, sample_images=testing.random_images(8, SHAPE, seed=5))
  s.log = str(root / "server.log")
  s.server = launch.ServerProcess(
      s.base, model_name="lad", poll_seconds=0.2, log_path=s.log,
      extra_flags=[f"--max_batch_size={MAX_BATCH}", f"--max_request_bytes={MAX_BYTES}"])
  s.server.start()
  s.grpc = client_lib.PredictClient(s.server.grpc_address, model_name="lad")
  s.rest = client_lib.PredictClient(s.server.rest_address, model_name="lad", rest=True)
  yield s
  s.grpc.close()
  s.rest.close()
  s.server.stop()


def _images(n, seed=11):
  return testing.random_images(n, SHAPE, seed=seed)


def _assert_matches(outputs, model, x):
  want = testing.keras_outputs(model, x)
  assert outputs["probabilities"].shape == want["probabilities"].shape
  assert np.max(np.abs(outputs["probabilities"] - want["probabilities"])) <= 1e-5
  np.testing.assert_array_equal(outputs["classes"], want["classes"])


def _assert_still_serving(s):
  x = _images(2, seed=99)
  _assert_matches(s.grpc.predict(x), s.model, x)
  _assert_matches(s.rest.predict(x), s.model, x)
  assert s.server.alive()


# -- happy paths -----------------------------------------------------------------------------------


def test_status_is_available(served):
  for client in (served.grpc, served.rest):
    (status,) = client.status()
    assert status == {"version": 1, "state": "AVAILABLE", "error_code": "OK",
                      "error_message": ""}


def test_rest_status_json_shape(served):
  status, payload = served.rest._http("GET", "/v1/models/lad")
  assert status == 200
  assert payload == {"model_version_status": [
      {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                        "error_message": ""}}]}


def test_metadata_shows_the_signatures(served):
  for client in (served.grpc, served.rest):
    meta = client.metadata()
    assert meta["model_spec"]["name"] == "lad"
    assert meta["model_spec"]["version"] == "1"
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "latent"}
    serve = signatures["serving_default"]
    assert serve["method_name"] == "tensorflow/serving/predict"
    assert serve["inputs"]["images"]["dtype"] == "DT_FLOAT"
    dims = [int(d["size"]) for d in serve["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == [-1, *SHAPE]
    assert serve["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert serve["outputs"]["classes"]["dtype"] == "DT_INT64"
  assert served.grpc.input_shape() == list(SHAPE)


def test_grpc_and_rest_round_trips_equal_keras(served):
  for n in (1, 5):
    x = _images(n, seed=n)
    _assert_matches(served.grpc.predict(x), served.model, x)
    _assert_matches(served.rest.predict(x), served.model, x)  # Columnar `inputs`.
  x = _images(3, seed=21)
  status, payload = served.rest.post_raw("/v1/models/lad:predict",
                                         json.dumps({"instances": x.tolist()}).encode())
  assert status == 200
  rows = payload["predictions"]
  assert len(rows) == 3 and set(rows[0]) == {"probabilities", "classes"}
  _assert_matches({"probabilities": np.array([r["probabilities"] for r in rows], np.float32),
                   "classes": np.array([r["classes"] for r in rows])}, served.model, x)
  status, payload = served.rest.post_raw(
      "/v1/models/lad/versions/1:predict",
      json.dumps({"instances": [{"images": v} for v in x.tolist()]}).encode())
  assert status == 200 and [r["classes"] for r in payload["predictions"]] == list(
      testing.keras_outputs(served.model, x)["classes"])


def test_latent_signature_and_output_filter(served):
  import keras

  x = _images(4, seed=31)
  encoder = keras.Model(served.model.input, served.model.get_layer("latent").output)
  want = np.asarray(encoder(x, training=False))
  got = served.grpc.predict(x, signature_name="latent")["latent"]
  assert np.max(np.abs(got - want)) <= 1e-5
  only = served.grpc.predict_raw({"images": x}, output_filter=["classes"])
  assert set(only) == {"classes"}


def test_warmup_ran_on_load(served):
  with open(served.log) as f:
    text = f.read()
  match = re.search(r"version 1 available \([\d.]+s, (\d+) warmup request", text)
  assert match, text[-2000:]
  assert int(match.group(1)) == len(export.read_warmup_requests(os.path.join(served.base, "1")))


def test_concurrent_clients(served):
  def worker(i):
    rest = i % 2 == 1
    address = served.server.rest_address if rest else served.server.grpc_address
    with client_lib.PredictClient(address, model_name="lad", rest=rest) as client:
      for j in range(8):
        x = _images(1 + (i + j) % 4, seed=100 * i + j)
        _assert_matches(client.predict(x), served.model, x)
    return True

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    assert all(pool.map(worker, range(8)))


# -- bad input: each refused with TF Serving's status, and the server keeps answering --------------


def _proto(array, shape=None):
  proto = tensors.from_numpy(array)
  if shape is not None:
    del proto.tensor_shape.dim[:]
    for d in shape:
      proto.tensor_shape.dim.add(size=d)
  return proto


def _grpc_cases():
  good = _images(1)
  nan, high, low = good.copy(), good.copy(), good.copy()
  nan[0, 1, 1, 0] = np.nan
  high[0, 1, 1, 0] = 1.5
  low[0, 1, 1, 0] = -0.01
  return [
      ("float64", {"images": good.astype(np.float64)}, {}, "INVALID_ARGUMENT", "must be float32"),
      ("int64", {"images": (good * 255).astype(np.int64)}, {}, "INVALID_ARGUMENT", "float32"),
      ("shape", {"images": _images(1)[:, :7]}, {}, "INVALID_ARGUMENT", "does not match"),
      ("rank", {"images": good[0]}, {}, "INVALID_ARGUMENT", "does not match"),
      ("short content", {"images": _proto(good[:, :2], [1, 8, 8, 1])}, {}, "INVALID_ARGUMENT",
       "tensor_content"),
      ("huge claimed shape", {"images": _proto(good, [10**9, 8, 8, 1])}, {}, "INVALID_ARGUMENT",
       "maximum batch size"),
      ("unknown key", {"pixels": good}, {}, "INVALID_ARGUMENT", "unknown input ['pixels']"),
      ("extra key", {"images": good, "pixels": good}, {}, "INVALID_ARGUMENT", "unknown input"),
      ("missing key", {}, {}, "INVALID_ARGUMENT", "missing input ['images']"),
      ("unknown model", {"images": good}, {"model_name": "nope"}, "NOT_FOUND", "`nope`"),
      ("unknown version", {"images": good}, {"version": 99}, "NOT_FOUND", "version 99"),
      ("unknown signature", {"images": good}, {"signature_name": "nope"},
       "FAILED_PRECONDITION", "`nope` not found"),
      ("NaN", {"images": nan}, {}, "INVALID_ARGUMENT", "NaN"),
      ("above 1", {"images": high}, {}, "INVALID_ARGUMENT", "outside [0, 1]"),
      ("below 0", {"images": low}, {}, "INVALID_ARGUMENT", "outside [0, 1]"),
      ("batch over max", {"images": _images(MAX_BATCH + 1)}, {}, "INVALID_ARGUMENT",
       f"maximum batch size {MAX_BATCH}"),
      ("empty batch", {"images": np.zeros((0, *SHAPE), np.float32)}, {}, "INVALID_ARGUMENT",
       "empty"),
      ("unknown output", {"images": good}, {"output_filter": ["logits"]}, "INVALID_ARGUMENT",
       "unknown outputs"),
      ("oversized message", {"images": _proto(np.zeros(MAX_BYTES // 4 + 10, np.float32),
                                              [1, 8, 8, 1])}, {}, "RESOURCE_EXHAUSTED", ""),
  ]


@pytest.mark.parametrize("case", _grpc_cases(), ids=lambda c: c[0])
def test_grpc_bad_input(served, case):
  _, inputs, kwargs, code, fragment = case
  with pytest.raises(client_lib.RequestError) as info:
    served.grpc.predict_raw(inputs, **kwargs)
  assert info.value.code == code, info.value
  assert fragment in info.value.message
  _assert_still_serving(served)


def _rest_cases():
  x = _images(1).tolist()
  nan_body = json.dumps({"instances": [[[[float("nan")] * 1] * 8] * 8]}).encode()
  assert b"NaN" in nan_body
  high = _images(1)
  high[0, 0, 0, 0] = 3.0
  dumps = lambda obj: json.dumps(obj).encode()
  predict = "/v1/models/lad:predict"
  return [
      ("malformed JSON", predict, b'{"instances": [[', 400, "malformed JSON"),
      ("not UTF-8", predict, b'\xff\xfe\xfa', 400, "malformed JSON"),
      ("not an object", predict, b"[1, 2]", 400, "JSON object"),
      ("both formats", predict, dumps({"instances": x, "inputs": x}), 400, "exactly one"),
      ("no inputs", predict, dumps({"signature_name": "serving_default"}), 400, "exactly one"),
      ("empty instances", predict, dumps({"instances": []}), 400, "non-empty"),
      ("strings", predict, dumps({"instances": [[[["a"]] * 8] * 8]}), 400, "numbers"),
      ("base64 object", predict, dumps({"inputs": {"images": {"b64": "AAAA"}}}), 400, "object"),
      ("ragged", predict, dumps({"instances": [x[0], x[0][:3]]}), 400, "images"),
      ("wrong shape", predict, dumps({"inputs": _images(1)[:, :, :5].tolist()}), 400,
       "does not match"),
      ("unknown key", predict, dumps({"inputs": {"pixels": x}}), 400, "unknown input"),
      ("unknown key row", predict, dumps({"instances": [{"pixels": x[0]}]}), 400,
       "unknown input"),
      ("unknown model", "/v1/models/nope:predict", dumps({"inputs": x}), 404, "`nope`"),
      ("unknown version", "/v1/models/lad/versions/99:predict", dumps({"inputs": x}), 404,
       "version 99"),
      ("unknown signature", predict, dumps({"inputs": x, "signature_name": "nope"}), 400,
       "`nope` not found"),
      ("bad signature type", predict, dumps({"inputs": x, "signature_name": 5}), 400, "string"),
      ("NaN", predict, nan_body, 400, "NaN"),
      ("out of range", predict, dumps({"inputs": high.tolist()}), 400, "outside [0, 1]"),
      ("batch over max", predict, dumps({"inputs": _images(MAX_BATCH + 1).tolist()}), 400,
       f"maximum batch size {MAX_BATCH}"),
      ("oversized body", predict, b" " * (MAX_BYTES + 1), 413, "exceeds the limit"),
      ("classify", "/v1/models/lad:classify", dumps({"examples": []}), 501, ":predict"),
      ("bad route", "/v1/models/lad:explode", dumps({"inputs": x}), 400, "malformed request"),
      ("not the API", "/predict", dumps({"inputs": x}), 404, "no such resource"),
  ]


@pytest.mark.parametrize("case", _rest_cases(), ids=lambda c: c[0])
def test_rest_bad_input(served, case):
  _, path, body, status, fragment = case
  got_status, payload = served.rest.post_raw(path, body)
  assert got_status == status, payload
  assert isinstance(payload, dict) and fragment in payload["error"], payload
  _assert_still_serving(served)


def test_rest_get_errors(served):
  assert served.rest._http("GET", "/v1/models/nope")[0] == 404
  assert served.rest._http("GET", "/v1/models/lad/versions/42")[0] == 404
  assert served.rest._http("GET", "/v1/models/lad/versions/42/metadata")[0] == 404
  status, payload = served.rest._http("GET", "/v1/models/lad/versions/x")
  assert status == 400 and "malformed" in payload["error"]
  with pytest.raises(client_lib.RequestError) as info:
    client_lib.PredictClient(served.server.grpc_address, model_name="nope").status()
  assert info.value.code == "NOT_FOUND"
  _assert_still_serving(served)


# -- versions (last: it changes the served model) --------------------------------------------------


def test_new_version_is_served_without_restart_and_broken_one_is_reported(served):
  pid = served.server.process.pid
  new_model = testing.tiny_classifier(SHAPE, num_classes=3, seed=2)
  x = _images(6, seed=41)
  assert not np.array_equal(testing.keras_outputs(new_model, x)["probabilities"],
                            testing.keras_outputs(served.model, x)["probabilities"])
  export.export_classifier(new_model, served.base, sample_images=_images(4, seed=42))
  testing.wait_for(lambda: any(s["version"] == 2 and s["state"] == "AVAILABLE"
                        for s in served.grpc.status()))
  testing.wait_for(lambda: 1 not in [s["version"] for s in served.grpc.status()
                              if s["state"] == "AVAILABLE"])
  _assert_matches(served.grpc.predict(x), new_model, x)
  _assert_matches(served.rest.predict(x), new_model, x)
  with pytest.raises(client_lib.RequestError) as info:
    served.grpc.predict(x, version=1)  # Unloaded under the default `latest 1` policy.
  assert info.value.code == "NOT_FOUND"

  broken = os.path.join(served.base, "3")
  os.makedirs(os.path.join(broken, "variables"))
  with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
    f.write(b"this is not a SavedModel")
  status = testing.wait_for(lambda: [s for s in served.grpc.status() if s["version"] == 3
                              and s["state"] == "END"])
  assert status[0]["error_code"] != "OK" and "failed to load" in status[0]["error_message"]
  rest_status = {s["version"]: s for s in served.rest.status()}
  assert rest_status[3]["state"] == "END" and rest_status[2]["state"] == "AVAILABLE"
  _assert_matches(served.grpc.predict(x), new_model, x)  # Version 2 still serves.
  _assert_matches(served.rest.predict(x), new_model, x)
  assert served.grpc.metadata()["model_spec"]["version"] == "2"
  assert served.server.alive() and served.server.process.pid == pid  # No restart.


# -- in-process pieces -----------------------------------------------------------------------------


def test_model_config_file_parsing(tmp_path):
  from serving import server

  config = tmp_path / "models.config"
  config.write_text("""
      model_config_list {
        config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
        config { name: "b" base_path: "rel/b"
                 model_version_policy { specific { versions: 3 versions: 5 } }
                 version_labels { key: "stable" value: 3 } }
      }""")
  a, b = server.read_model_config_file(str(config))
  assert (a.name, a.base_path, a.policy, a.num_versions) == ("a", "/models/a", "latest", 1)
  assert b.base_path == str(tmp_path / "rel" / "b")
  assert (b.policy, b.versions, b.version_labels) == ("specific", (3, 5), {"stable": 3})
  config.write_text("model_config_list { config { name: 'x' }")
  with pytest.raises(ValueError, match="text proto"):
    server.read_model_config_file(str(config))
