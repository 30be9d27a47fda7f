"""serving.server under hostile traffic, started with tensorflow_model_server's flags: bodies bounded
while read, idle connections that hold nothing, server-side batching, and TF Serving's answers
for the odd requests (JSON errors, URL decoding, int64 versions, labels, chunked bodies)."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from serving import client as client_lib
from serving import export
from serving import launch
from serving import testing

SHAPE = (8, 8, 1)
MAX_BATCH = 8
MAX_BYTES = 8 << 20


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  root = tmp_path_factory.mktemp("hostile")
  base = str(root / "lad")
  models = [testing.tiny_classifier(SHAPE, num_classes=3, seed=s) for s in (1, 2)]
  for model in models:
    export.export_classifier(model, base, sample_images=testing.random_images(4, SHAPE))
  models_config = _write(root / "models.config", f"""
      model_config_list {{ config {{
        name: "lad" base_path: "{base}" model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
        version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }}
      }} }}""")
  batching = _write(root / "batching.config", f"""
      max_batch_size {{ value: {MAX_BATCH} }}
      batch_timeout_micros {{ value: 2000 }}
      num_batch_threads {{ value: 2 }}
      max_enqueued_batches {{ value: 100 }}""")
  log = str(root / "server.log")
  # The command line a TF Serving user would write, plus our two limits.
  flags = [f"--model_config_file={models_config}", "--enable_batching",
           f"--batching_parameters_file={batching}", "--model_config_file_poll_wait_seconds=60",
           "--rest_api_num_threads=4", "--rest_api_timeout_in_ms=20000",
           "--max_num_load_retries=2", "--load_retry_interval_micros=1000000",
           "--grpc_channel_arguments=grpc.max_concurrent_streams=100",
           "--enable_model_warmup=true", "--num_request_iterations_for_warmup=2",
           "--tensorflow_session_parallelism=2", "--monitoring_config_file=/dev/null",
           f"--max_batch_size={MAX_BATCH}", f"--max_request_bytes={MAX_BYTES}"]
  server = launch.ServerProcess(base, model_name="lad", poll_seconds=1, log_path=log,
                                extra_flags=flags)
  server.start()
  grpc_client = client_lib.PredictClient(server.grpc_address, model_name="lad")
  rest = client_lib.PredictClient(server.rest_address, model_name="lad", rest=True)
  yield {"server": server, "grpc": grpc_client, "rest": rest, "models": models, "log": log,
         "root": root}
  grpc_client.close()
  rest.close()
  server.stop()


def _raw(address, data, timeout=5.0, send_all=True):
  """Send raw bytes on a new connection; returns (status, headers dict, body bytes)."""
  host, port = address.rsplit(":", 1)
  with socket.create_connection((host, int(port)), timeout=timeout) as sock:
    if send_all:
      sock.sendall(data)
    else:
      sock.send(data)
    response = b""
    while b"\r\n\r\n" not in response:
      chunk = sock.recv(65536)
      if not chunk:
        break
      response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
      chunk = sock.recv(65536)
      if not chunk:
        break
      body += chunk
  return status, headers, body


def _json_error(status_headers_body):
  status, headers, body = status_headers_body
  assert headers.get("content-type") == "application/json", (status, headers, body[:200])
  return status, json.loads(body)["error"]


def _images(n, seed=3):
  return testing.random_images(n, SHAPE, seed=seed)


def _assert_matches(outputs, model, x):
  want = testing.keras_outputs(model, x)
  assert np.max(np.abs(outputs["probabilities"] - want["probabilities"])) <= 1e-5
  np.testing.assert_array_equal(outputs["classes"], want["classes"])


# -- TF Serving's flags ----------------------------------------------------------------------------


def test_tf_serving_flags_are_accepted_and_idle_ones_warn(served):
  assert served["server"].alive()
  with open(served["log"]) as f:
    text = f.read()
  for flag in ("monitoring_config_file", "tensorflow_session_parallelism",
               "model_config_file_poll_wait_seconds"):
    assert f"--{flag} has no effect" in text, text[-3000:]
  assert "batching=on" in text


def test_broken_config_files_get_a_message_not_a_traceback(tmp_path):
  cases = [(["--model_config_file=" + _write(tmp_path / "bad.config", "model_config_list {")],
            "not a ModelServerConfig"),
           (["--model_config_file=" + str(tmp_path / "missing.config")], "cannot read"),
           (["--model_base_path=/nowhere", "--enable_batching",
             "--batching_parameters_file=" + _write(tmp_path / "b.config", "max_batch_size: 3")],
            "not a BatchingParameters")]
  env = dict(os.environ, PYTHONPATH=launch.REPO_ROOT)
  for flags, fragment in cases:
    done = subprocess.run([sys.executable, "-m", "serving.server", "--port=0", *flags],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=launch.REPO_ROOT)
    assert done.returncode != 0
    assert fragment in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


# -- batching --------------------------------------------------------------------------------------


def test_batching_parameters_file_is_parsed(tmp_path):
  from serving import config

  path = _write(tmp_path / "b.config", """
      max_batch_size { value: 32 } batch_timeout_micros { value: 5000 }
      num_batch_threads { value: 3 } max_enqueued_batches { value: 7 }
      allowed_batch_sizes: 8 allowed_batch_sizes: 32 thread_pool_name { value: "x" }""")
  parsed, ignored = config.read_batching_parameters_file(path)
  assert (parsed.max_batch_size, parsed.batch_timeout_micros, parsed.num_batch_threads,
          parsed.max_enqueued_batches, parsed.allowed_batch_sizes) == (32, 5000, 3, 7, (8, 32))
  assert ignored == ["thread_pool_name"]
  with pytest.raises(config.ConfigError, match="must equal max_batch_size"):
    config.BatchingConfig(max_batch_size=16, allowed_batch_sizes=(8,))


def test_concurrent_requests_are_merged_into_one_model_call():
  from serving import batching
  from serving import config

  calls = []

  def model(arrays):
    calls.append(len(arrays["x"]))
    return {"y": arrays["x"] * 2, "n": np.full(len(arrays["x"]), len(arrays["x"]))}

  scheduler = batching.BatchScheduler(
      model, config.BatchingConfig(max_batch_size=8, batch_timeout_micros=500_000,
                                   num_batch_threads=1, allowed_batch_sizes=(4, 8)))
  inputs = [np.full((1, 2), 1.0), np.full((2, 2), 3.0)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    start = time.monotonic()
    first = pool.submit(scheduler.submit, {"x": inputs[0]})
    time.sleep(0.05)
    second = pool.submit(scheduler.submit, {"x": inputs[1]})
    results = [first.result(10), second.result(10)]
  assert calls == [4]  # One call: 1 + 2 rows, padded to the allowed size 4.
  assert time.monotonic() - start >= 0.45  # 3 rows < 8: the batch waited for its timeout.
  np.testing.assert_array_equal(results[0]["y"], inputs[0] * 2)
  np.testing.assert_array_equal(results[1]["y"], inputs[1] * 2)
  with pytest.raises(Exception, match="Task size 9 is larger than maximum input batch size 8"):
    scheduler.submit({"x": np.zeros((9, 2))})
  scheduler.stop()


def test_batched_server_answers_each_request_its_own_outputs(served):
  model = served["models"][1]

  def one(i):
    x = _images(1 + i % 3, seed=100 + i)
    _assert_matches(served["grpc"].predict(x), model, x)
    return True

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    assert all(pool.map(one, range(24)))


# -- bounded bodies --------------------------------------------------------------------------------


def _predict_head(length, path="/v1/models/lad:predict"):
  return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          f"Content-Length: {length}\r\n\r\n").encode()


def _numbers_body(size):
  row = ", ".join(["0.5"] * 64)
  unit = f"[{row}], "
  count = size // len(unit)
  return ('{"instances": [' + unit * count + f"[{row}]" + "]}").encode()


def test_declared_oversize_is_refused_before_the_body_is_sent(served):
  start = time.monotonic()
  status, message = _json_error(_raw(served["server"].rest_address,
                                     _predict_head(MAX_BYTES + 1), timeout=5))
  assert status == 413 and "exceeds the limit" in message
  assert time.monotonic() - start < 3


def test_too_many_numbers_are_refused_while_reading(served):
  body = _numbers_body(MAX_BYTES - 1024)  # Within the byte limit, far above the batch limit.
  rss_before = served["server"].rss_mb()
  # Only the first MiB is sent: the answer must not wait for (or parse) the rest.
  status, message = _json_error(_raw(served["server"].rest_address,
                                     _predict_head(len(body)) + body[:1 << 20],
                                     timeout=5, send_all=True))
  assert status == 400 and "before parsing" in message, message
  # The whole body, sent by a client that reads the answer after sending: still refused.
  status, payload = served["rest"].post_raw("/v1/models/lad:predict", body)
  assert status == 400 and "maximum batch size" in payload["error"]
  growth_mb = served["server"].rss_mb() - rss_before
  assert growth_mb < 40, f"server memory grew {growth_mb:.0f} MB for refused bodies"
  x = _images(2)
  _assert_matches(served["rest"].predict(x), served["models"][1], x)


def test_idle_connections_hold_no_thread(served):
  address = served["server"].rest_address
  host, port = address.rsplit(":", 1)
  idle = []
  try:
    for i in range(80):
      sock = socket.create_connection((host, int(port)), timeout=5)
      if i % 4 == 0:  # Some send half a request head and stall (slowloris).
        sock.sendall(b"POST /v1/models/lad:predict HTTP/1.1\r\nContent-Le")
      idle.append(sock)
    time.sleep(0.2)
    with client_lib.PredictClient(address, model_name="lad", rest=True, timeout=3) as fresh:
      start = time.monotonic()
      assert fresh.status()[0]["state"] == "AVAILABLE"
      x = _images(1)
      _assert_matches(fresh.predict(x), served["models"][1], x)
      assert time.monotonic() - start < 2.0
  finally:
    for sock in idle:
      sock.close()


# -- TF Serving's answers to odd requests ----------------------------------------------------------


def test_version_above_int64_in_url_is_400(served):
  body = json.dumps({"inputs": _images(1).tolist()}).encode()
  for path in ("/v1/models/lad/versions/99999999999999999999:predict",
               "/v1/models/lad/versions/9223372036854775808"):
    method = "POST" if path.endswith(":predict") else "GET"
    status, payload = served["rest"]._http(method, path, body if method == "POST" else None)
    assert status == 400 and "Failed to convert version" in payload["error"], payload


def test_boolean_among_floats_is_refused(served):
  instance = _images(1)[0].tolist()
  instance[0][0][0] = True
  status, payload = served["rest"].post_raw("/v1/models/lad:predict",
                                            json.dumps({"instances": [instance]}).encode())
  assert status == 400 and "boolean" in payload["error"], payload


def test_duplicate_output_filter_is_refused(served):
  with pytest.raises(client_lib.RequestError) as info:
    served["grpc"].predict_raw({"images": _images(1)}, output_filter=["classes", "classes"])
  assert info.value.code == "INVALID_ARGUMENT" and "duplicate" in info.value.message


def test_odd_methods_urls_and_request_lines_get_json_errors(served):
  address = served["server"].rest_address
  for method in ("PUT", "DELETE"):
    status, message = _json_error(_raw(address, (f"{method} /v1/models/lad HTTP/1.1\r\n"
                                                 "Host: x\r\nContent-Length: 0\r\n\r\n").encode()))
    assert status == 400 and "malformed request" in message
  for length in (10_000, 70_000):
    status, message = _json_error(_raw(address, (f"GET /v1/models/{'a' * length} HTTP/1.1\r\n"
                                                 "Host: x\r\n\r\n").encode()))
    assert status == 414, message
  status, message = _json_error(_raw(address, b"HELLO THERE\r\n\r\n"))
  assert status == 400 and "malformed HTTP request line" in message


def test_url_encoded_names_and_labels_are_decoded(served):
  x = _images(2)
  body = json.dumps({"inputs": x.tolist()}).encode()
  status, payload = served["rest"].post_raw("/v1/models/l%61d/labels/c%61nary:predict", body)
  assert status == 200, payload
  _assert_matches({"probabilities": np.array(payload["outputs"]["probabilities"], np.float32),
                   "classes": np.array(payload["outputs"]["classes"])}, served["models"][1], x)
  status, payload = served["rest"].post_raw("/v1/models/lad/labels/st%61ble:predict", body)
  assert status == 200
  _assert_matches({"probabilities": np.array(payload["outputs"]["probabilities"], np.float32),
                   "classes": np.array(payload["outputs"]["classes"])}, served["models"][0], x)


def test_status_with_a_label_lists_every_version(served):
  status, payload = served["rest"]._http("GET", "/v1/models/lad/labels/stable")
  assert status == 200
  assert sorted(int(s["version"]) for s in payload["model_version_status"]) == [1, 2]


def test_chunked_body_is_accepted(served):
  x = _images(1)
  body = json.dumps({"inputs": x.tolist()}).encode()
  chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700])
                    for i in range(0, len(body), 700)) + b"0\r\n\r\n"
  head = (b"POST /v1/models/lad:predict HTTP/1.1\r\nHost: x\r\n"
          b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
  status, _, raw = _raw(served["server"].rest_address, head + chunks)
  assert status == 200, raw[:300]
  outputs = json.loads(raw)["outputs"]
  _assert_matches({"probabilities": np.array(outputs["probabilities"], np.float32),
                   "classes": np.array(outputs["classes"])}, served["models"][1], x)
