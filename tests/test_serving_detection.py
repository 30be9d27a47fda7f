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
from serving import detection_worker
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


def test_window_hashes_are_each_windows_polynomial_hash_of_its_content_alone():
  rng = np.random.default_rng(0)
  images = rng.random((3, 28, 28, 1), dtype=np.float32)
  images[2, 20] = images[2, 3]  # Row 3's content again in row 20: same windows, same hashes.
  step, window, m = 64, 16, 2**64
  got = fingerprints.window_hashes(images, step, window)
  assert got.shape == (3, 784 - window + 1) and got.dtype == np.uint32
  bins = fingerprints.quantise(images, step)
  a = int(fingerprints._powers(784)[0][1])  # pylint: disable=protected-access
  for n in range(3):
    for i in (0, 1, 97, 400, 768):
      h = sum((int(bins[n, i + j]) + 1) * pow(a, j, m) for j in range(window)) % m
      h = ((h ^ (h >> 31)) * int(fingerprints._MIX)) % m  # pylint: disable=protected-access
      assert int(got[n, i]) == h >> 32, (n, i)
  assert np.array_equal(got[2, 3 * 28:3 * 28 + 13], got[2, 20 * 28:20 * 28 + 13])
  assert len(np.unique(got[0])) >= 0.99 * got.shape[1]  # Random content: (almost) no collisions.


def test_fingerprints_are_the_largest_distinct_hashes_even_with_many_repeats():
  rng = np.random.default_rng(1)
  images = rng.random((6, 28, 28, 1), dtype=np.float32)
  images[1] = 0  # One distinct window: padded with 0.
  images[2, :, ::2] = 0  # Long runs of repeated windows.
  images[3] = np.tile(rng.random((1, 28, 1)), (28, 1, 1)) > 0.5  # Every row alike.
  images[4, 4:] = 0
  for top_k in (20, 50):
    got = fingerprints.fingerprints(images, 96, 16, top_k)
    for row, hashes in zip(got, fingerprints.window_hashes(images, 96, 16)):
      distinct = np.unique(hashes)[-top_k:]
      assert np.array_equal(row, np.concatenate([np.zeros(top_k - len(distinct), np.uint32), distinct]))
  assert np.count_nonzero(got[1]) == 1


def test_sketches_share_a_bit_for_each_shared_hash():
  rng = np.random.default_rng(2)
  query = np.sort(rng.integers(1, 2**32, 20, dtype=np.uint32))
  rows = []
  for shared in rng.integers(0, 21, 300):  # Rows holding `shared` of the query's hashes.
    row = np.concatenate([rng.choice(query, shared, replace=False), rng.integers(1, 2**32, 20 - shared)])
    row[:rng.integers(0, 4)] = 0  # Padding holds no hash.
    rows.append(np.sort(row.astype(np.uint32)))
  rows = np.stack(rows)
  bits = lambda fp: {int(h) % fingerprints.SKETCH_BITS for h in fp if h}
  expected = [len(bits(row) & bits(query)) for row in rows]
  sketches = fingerprints.sketches(rows)
  assert sketches.shape == (300, fingerprints.SKETCH_WORDS) and sketches.dtype == np.uint64
  assert [int(np.bitwise_count(s).sum()) for s in sketches] == [len(bits(row)) for row in rows]
  assert fingerprints.shared_counts(rows, query).tolist() == expected
  history = np.ascontiguousarray(sketches.T)  # As the detector stores them: a column per query.
  assert fingerprints.shared_bits(history, fingerprints.sketches(query[None])[0]).tolist() == expected


def test_fingerprints_keep_attack_queries_close_and_other_images_apart(digits):
  c = config_lib.DetectionConfig()
  x = digits.x[:60]
  fp = fingerprints.fingerprints(x, c.quantization_step, c.window_size, c.hashes_per_query)
  for near in _attack_like(x, np.random.default_rng(0)):
    fp_near = fingerprints.fingerprints(near, c.quantization_step, c.window_size, c.hashes_per_query)
    same = np.array([fingerprints.shared_counts(fp_near[i:i + 1], fp[i])[0] for i in range(len(x))])
    assert np.mean(same >= c.match_threshold) >= 0.5, same  # A run needs neighbours_to_flag of them.
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


def test_the_judging_process_flags_at_the_same_query_and_the_client_is_refused_after(digits):
  rng = np.random.default_rng(0)
  stream = [_attack_like(digits.x[:1], rng)[0] for _ in range(20)] + [digits.x[100:104]]
  in_process = detection.QueryDetector(config_lib.DetectionConfig(action="log"))
  judged_aside = detection_worker.DetectorProcess(config_lib.DetectionConfig(action="log"))
  try:
    for detector in (in_process, judged_aside):
      for k, images in enumerate(stream):
        detector.check("probe", images)
        detector.check(f"reader-{k}", digits.x[k:k + 1])
    flagged, metrics = in_process.metrics()["flagged_at_query"], judged_aside.metrics()
    assert list(flagged) == ["probe"] and metrics["flagged_at_query"] == flagged
    assert metrics["queries"] == 2 * len(stream) + 3 and metrics["queries_remembered"] == metrics["queries"]
  finally:
    judged_aside.close()
  detector = detection_worker.DetectorProcess(config_lib.DetectionConfig(action="reject"))
  try:
    for images in stream[:-1]:
      detector.check("probe", images)  # Queued: judged after the request is answered.
    detector.flush()
    with pytest.raises(errors.ServingError):
      detector.check("probe", digits.x[100:101])
    detector.check("someone-else", digits.x[100:101])
    assert detector.metrics()["requests_rejected"] == 1
  finally:
    detector.close()


def test_a_judging_process_that_dies_is_replaced_and_detection_goes_on(digits):
  detector = detection_worker.DetectorProcess(config_lib.DetectionConfig(action="reject"))
  try:
    detector.check("first", digits.x[:1])
    detector.flush()
    detector._child.kill()  # pylint: disable=protected-access
    detector.check("lost", digits.x[1:2])
    detector.flush()  # Its round trip fails: the judge is restarted, that request left unjudged.
    rng = np.random.default_rng(0)
    for _ in range(20):
      detector.check("probe", _attack_like(digits.x[:1], rng)[0])
    metrics = detector.metrics()
    assert metrics["judge_restarts"] == 1 and list(metrics["flagged_at_query"]) == ["probe"]
    assert metrics["queries"] == 20
  finally:
    detector.close()


def test_a_client_remembers_every_query_up_to_its_history_then_the_newest():
  state = detection._Client()  # pylint: disable=protected-access
  for q in range(1, 301):  # The ring grows many times on the way.
    state.remember(np.full(fingerprints.SKETCH_WORDS, q, np.uint64), q, 200)
    assert sorted(state.digests[:state.size]) == list(range(max(1, q - 199), q + 1))
  assert (state.fps[0, :state.size] == state.digests[:state.size]).all()


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
    # Refused, but when depends on the judge's 50-ms feed and the machine's load (the service_attacks
    # benchmark measures it); the query that flags the client does not, and is checked below.
    assert report["refused"], report
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
    # the two Square runs' stream is the same on every run (measured: flagged at its 21st query)
    assert metrics["flagged_at_query"]["id:mallory"] <= 30, metrics["flagged_at_query"]
