"""Query detection (serving.detection): attacks flagged, benign clients left alone, a bounded store,
and the whole path through a real server (a Square attack refused, benign images answered).

Benign traffic is Fashion-MNIST's test set, what the detector's defaults were tuned on; the 8x8
digits upscaled to 28x28 are far more alike than real images (docs/DETECTION.md)."""
import os

import numpy as np
import pytest

import digits_models
from lad_tf.data import datasets
from lad_tf.attacks import query as query_lib
from pipelines import attack_service
from serving import client as client_lib
from serving import config as config_lib
from serving import detection
from serving import errors
from serving import export
from serving import fingerprints
from serving import launch
from serving import testing

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
  return datasets.load("digits").test


@pytest.fixture(scope="module")
def fashion():
  if not os.path.isdir(datasets.DEBIAN_FASHION_MNIST):
    pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it)")
  return datasets.load("fashion_mnist").test.x[:400]


@pytest.fixture(scope="module")
def lenet():
  return digits_models.plain_lenet()[0]


def _softmax(model):
  def query(images):
    logits = np.asarray(model(images, training=False), np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
  return query


def _benign_stream(x, rng, repeats=10):
  """Distinct images, and for `repeats` of them every benign copy (retry, noise, shift, JPEG)."""
  stream = [image for image in x]
  for i in rng.choice(len(x), repeats, replace=False):
    stream.extend(testing.benign_copies(x[i], rng).values())
  order = rng.permutation(len(stream))
  return [stream[k] for k in order]


def _attack_like(x, rng):
  """What query attacks send: one 8x8 square moved by eps (Square), tiny noise (HopSkipJump's probes)."""
  square = x.copy()
  for image in square:
    top, left = rng.integers(0, 20, 2)
    image[top:top + 8, left:left + 8] = np.clip(image[top:top + 8, left:left + 8] + rng.choice([-EPS, EPS]), 0, 1)
  probes = np.clip(x + rng.uniform(-0.005, 0.005, x.shape), 0, 1).astype(np.float32)
  return square, probes


def test_fingerprints_keep_attack_queries_close_and_other_images_apart(digits):
  c = config_lib.DetectionConfig()
  x = digits.x[:60]
  fp = fingerprints.fingerprints(x, c.quantization_step, c.window_size, c.hashes_per_query)
  for near in _attack_like(x, np.random.default_rng(0)):
    fp_near = fingerprints.fingerprints(near, c.quantization_step, c.window_size, c.hashes_per_query)
    same = np.array([fingerprints.shared_counts(fp_near[i:i + 1], fp[i])[0] for i in range(len(x))])
    assert np.mean(same >= c.match_threshold) >= 0.75, same
  others = np.concatenate([fingerprints.shared_counts(np.delete(fp, i, axis=0), fp[i]) for i in range(len(x))])
  assert np.mean(others >= c.match_threshold) <= 0.02, np.bincount(others)


def test_square_runs_are_flagged_within_a_few_queries_and_benign_clients_are_not(digits, fashion, lenet):
  detector = detection.QueryDetector(config_lib.DetectionConfig(action="log"))
  answer = _softmax(lenet)
  for i in range(4):
    client = f"attacker-{i}"

    def query(images, client=client):
      detector.check(client, images)
      return answer(images)

    model = query_lib.QueryModel(query, 10)
    query_lib.run_query_attack("square", model, digits.x[i:i + 1], digits.y[i:i + 1], EPS, 60, seed=i)
  flagged = detector.metrics()["flagged_at_query"]
  assert sorted(flagged) == [f"attacker-{i}" for i in range(4)]
  assert np.median(list(flagged.values())) <= 12 and max(flagged.values()) <= 20, flagged
  rng = np.random.default_rng(1)
  for k in range(4):
    for image in _benign_stream(fashion[100 * k:100 * (k + 1)], rng):
      detector.check(f"reader-{k}", image[None])
  assert detector.metrics()["clients_flagged"] == 4  # The attackers alone.


def test_exact_resubmissions_are_answered_and_not_counted(digits):
  detector = detection.QueryDetector(config_lib.DetectionConfig(action="reject"))
  for _ in range(30):
    detector.check("retrier", digits.x[:1])
  metrics = detector.metrics()
  assert metrics["exact_resubmissions"] == 29 and metrics["clients_flagged"] == 0
  assert metrics["queries_remembered"] == 1


def test_a_flagged_client_is_refused_from_then_on(digits):
  detector = detection.QueryDetector(config_lib.DetectionConfig(action="log_and_reject"))
  rng = np.random.default_rng(0)
  with pytest.raises(errors.ServingError) as refused:
    for _ in range(20):
      detector.check("probe", _attack_like(digits.x[:1], rng)[0])
  assert refused.value.code.name == "PERMISSION_DENIED" and refused.value.http == 403
  with pytest.raises(errors.ServingError):
    detector.check("probe", digits.x[100:101])  # Even an unrelated image.
  detector.check("someone-else", digits.x[100:101])


def test_the_store_keeps_under_its_cap_by_dropping_the_least_recent_clients(digits):
  detector = detection.QueryDetector(config_lib.DetectionConfig(max_memory_mb=0.02))
  for k in range(40):
    detector.check(f"c{k}", digits.x[5 * k:5 * k + 5])
  metrics = detector.metrics()
  assert metrics["store_bytes"] <= 0.02e6 and metrics["clients_evicted"] > 0
  assert metrics["clients_remembered"] == 40 - metrics["clients_evicted"]
  detector.check("c39", digits.x[:1])
  assert "c0" not in detector._clients and "c39" in detector._clients  # pylint: disable=protected-access
  big = detection.QueryDetector(config_lib.DetectionConfig())
  big.check("busy", np.random.default_rng(0).random((1500, 28, 28, 1), dtype=np.float32))
  metrics = big.metrics()
  assert metrics["queries_remembered"] == 1500
  assert (metrics["store_bytes"] - detection.CLIENT_OVERHEAD_BYTES) / 1500 <= 100  # Bytes per query.


def test_parameters_file_is_read_and_bad_values_are_named(tmp_path):
  path = tmp_path / "detection.config"
  path.write_text('action: "reject" neighbours_to_flag: 7 max_memory_mb: 12.5 client_id_header: "X-User"\n')
  c = config_lib.read_detection_parameters_file(str(path))
  assert (c.action, c.neighbours_to_flag, c.max_memory_mb, c.client_id_header) == ("reject", 7, 12.5, "x-user")
  assert c.window_size == config_lib.DetectionConfig().window_size
  path.write_text('action: "ban"\n')
  with pytest.raises(config_lib.ConfigError, match="action must be one of"):
    config_lib.read_detection_parameters_file(str(path))
  path.write_text("windows: 3\n")
  with pytest.raises(config_lib.ConfigError, match="not a query detection parameters text proto"):
    config_lib.read_detection_parameters_file(str(path))


def test_a_real_server_refuses_a_square_attack_and_answers_benign_images(tmp_path, digits, fashion, lenet):
  base = str(tmp_path / "digits")
  export.export_classifier(lenet, base, sample_images=digits.x[:8], model_name="digits")
  params = tmp_path / "detection.config"
  params.write_text('action: "log_and_reject"\n')
  flags = ["--enable_query_detection", f"--query_detection_parameters_file={params}"]
  with launch.ServerProcess(base, model_name="digits", extra_flags=flags,
                            log_path=str(tmp_path / "server.log")) as server:
    with client_lib.PredictClient(server.grpc_address, model_name="digits", client_id="mallory") as attacker:
      query = attack_service.endpoint_fn(attacker, "probabilities", 64)
      report = attack_service.attack_through(query, 10, "square", digits.x[:2], digits.y[:2], EPS, 1000)
    assert report["refused"] and report["queries_before_refusal"] <= 40, report
    with client_lib.PredictClient(server.rest_address, model_name="digits", rest=True,
                                  client_id="mallory") as same_over_rest:
      with pytest.raises(client_lib.RequestError) as refused:
        same_over_rest.predict(digits.x[200:201])
      assert refused.value.http == 403
    rng = np.random.default_rng(0)
    with client_lib.PredictClient(server.grpc_address, model_name="digits", client_id="alice") as alice, \
        client_lib.PredictClient(server.rest_address, model_name="digits", rest=True, client_id="bob") as bob:
      for k, image in enumerate(_benign_stream(fashion[:200], rng)):
        outputs = (alice if k % 2 else bob).predict(image[None])
        assert outputs["probabilities"].shape == (1, 10)
      status, metrics = bob._http("GET", "/monitoring/detection")
    assert status == 200 and metrics["clients_flagged"] == 1 and metrics["requests_rejected"] >= 2
    assert list(metrics["flagged_at_query"]) == ["id:mallory"]
