"""serving.server's versions as TF Serving's: odd folder names skipped, failed loads retried,
a half-copied version loaded once complete, and unloaded versions' memory given back."""
import os
import shutil
import time

import numpy as np
import pytest

from serving import client as client_lib
from serving import errors
from serving import export
from serving import launch
from serving import testing

SHAPE = (8, 8, 1)


def _states(client):
  return {s["version"]: s for s in client.status()}


def _available(client, version):
  return _states(client).get(version, {}).get("state") == "AVAILABLE"


def _publish(source, base, version):
  """Copy a complete version folder in under a temporary name, then rename (atomic push)."""
  tmp = os.path.join(base, f".tmp-{version}")
  shutil.copytree(source, tmp)
  os.rename(tmp, os.path.join(base, str(version)))


def test_version_folder_names_are_ascii_digits_within_int64(tmp_path):
  for name in ("1", "²", "１", "99999999999999999999", "9223372036854775807", "+3", "7a"):
    (tmp_path / name).mkdir()
  (tmp_path / "5").write_text("a file, not a folder")
  assert export.list_versions(str(tmp_path)) == [1, 9223372036854775807]


class _FlakyServable:
  """Stands in for servable.Servable: fails its first `failures` loads (a transient error)."""
  failures = 2
  loads = 0

  def __init__(self, name, version, path, max_batch_size, **kwargs):
    type(self).loads += 1
    if type(self).loads <= self.failures:
      raise OSError("Read less bytes than requested")
    self.name, self.version = name, version

  def warmup(self, iterations=1):
    return 0

  def close(self):
    pass


def test_failed_load_is_retried_without_file_changes(tmp_path, monkeypatch):
  from serving import manager as manager_lib

  (tmp_path / "1").mkdir()
  (tmp_path / "1" / "saved_model.pb").write_bytes(b"unchanged")
  monkeypatch.setattr(manager_lib.servable_lib, "Servable", _FlakyServable)
  monkeypatch.setattr(_FlakyServable, "loads", 0)
  manager = manager_lib.ModelManager([_model_config("m", str(tmp_path))], max_num_load_retries=2,
                                     load_retry_interval_s=0.05, enable_warmup=False)
  manager.poll()
  ((version, state, code, message),) = manager.status("m")
  assert (version, state) == (1, "END") and "Read less bytes" in message
  manager.poll()  # Too early: the retry interval has not passed.
  assert _FlakyServable.loads == 1
  time.sleep(0.06)
  manager.poll()  # Retry 1 fails, retry 2 succeeds.
  time.sleep(0.06)
  manager.poll()
  assert _FlakyServable.loads == 3
  assert manager.status("m")[0][1] == "AVAILABLE"
  assert manager.resolve("m").version == 1


def test_retries_stop_after_max_num_load_retries(tmp_path, monkeypatch):
  from serving import manager as manager_lib

  (tmp_path / "1").mkdir()
  monkeypatch.setattr(_FlakyServable, "failures", 100)
  monkeypatch.setattr(_FlakyServable, "loads", 0)
  monkeypatch.setattr(manager_lib.servable_lib, "Servable", _FlakyServable)
  manager = manager_lib.ModelManager([_model_config("m", str(tmp_path))], max_num_load_retries=1,
                                     load_retry_interval_s=0.0, enable_warmup=False)
  for _ in range(5):
    manager.poll()
  assert _FlakyServable.loads == 2  # The first load and one retry.
  with pytest.raises(errors.ServingError, match="no available version"):
    manager.resolve("m")


def _model_config(name, base):
  from serving import config
  return config.ModelConfig(name, base)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
  root = tmp_path_factory.mktemp("versions")
  exports = str(root / "exports")
  models = [testing.tiny_classifier(SHAPE, num_classes=3, seed=s) for s in (1, 2)]
  for model in models:
    export.export_classifier(model, exports, sample_images=testing.random_images(4, SHAPE))
  base = str(root / "served")
  os.makedirs(base)
  _publish(os.path.join(exports, "1"), base, 1)
  server = launch.ServerProcess(
      base, model_name="lad", poll_seconds=0.2, log_path=str(root / "server.log"),
      extra_flags=["--max_num_load_retries=3", "--load_retry_interval_micros=300000"])
  server.start()
  client = client_lib.PredictClient(server.grpc_address, model_name="lad")
  yield {"base": base, "exports": exports, "models": models, "server": server, "client": client,
         "log": str(root / "server.log")}
  client.close()
  server.stop()


def _assert_serves(v, model):
  x = testing.random_images(3, SHAPE, seed=7)
  want = testing.keras_outputs(model, x)
  got = v["client"].predict(x)
  assert np.max(np.abs(got["probabilities"] - want["probabilities"])) <= 1e-5


def test_odd_folder_names_are_skipped_and_polling_goes_on(versions):
  v = versions
  for odd in ("²", "99999999999999999999"):
    shutil.copytree(os.path.join(v["exports"], "1"), os.path.join(v["base"], odd))
  time.sleep(1.0)  # Several polls over the odd folders.
  assert set(_states(v["client"])) == {1}
  _publish(os.path.join(v["exports"], "2"), v["base"], 2)  # Polling must still pick this up.
  testing.wait_for(lambda: _available(v["client"], 2), what="version 2 available")
  testing.wait_for(lambda: _states(v["client"])[1]["state"] == "END", what="version 1 unloaded")
  _assert_serves(v, v["models"][1])
  assert set(_states(v["client"])) == {1, 2}
  rest = client_lib.PredictClient(v["server"].rest_address, model_name="lad", rest=True)
  assert {s["version"] for s in rest.status()} == {1, 2}  # Status answers, no 500.
  rest.close()
  for odd in ("²", "99999999999999999999"):
    shutil.rmtree(os.path.join(v["base"], odd))
  assert v["server"].alive()


def test_half_copied_version_is_loaded_once_complete(versions):
  v = versions
  source = os.path.join(v["exports"], "1")
  target = os.path.join(v["base"], "3")
  shutil.copytree(source, target)
  data = [os.path.join(target, "variables", n) for n in os.listdir(os.path.join(target,
                                                                                "variables"))
          if n.startswith("variables.data")][0]
  with open(data, "rb") as f:
    full = f.read()
  with open(data, "wb") as f:  # Caught mid-copy: the same files, one of them short.
    f.write(full[:len(full) // 3])
  x = testing.random_images(3, SHAPE, seed=7)
  served_before = v["client"].predict(x)["probabilities"]
  status = testing.wait_for(lambda: _states(v["client"]).get(3, {}).get("state") == "END"
                     and _states(v["client"])[3], what="version 3 failing")
  assert status["error_code"] != "OK"
  np.testing.assert_array_equal(v["client"].predict(x)["probabilities"], served_before)
  with open(data, "ab") as f:  # The copy completes: no file added, none renamed.
    f.write(full[len(full) // 3:])
  testing.wait_for(lambda: _available(v["client"], 3), what="version 3 available once complete")
  _assert_serves(v, v["models"][0])


def test_version_swaps_give_memory_back(versions):
  v = versions
  current = max(_states(v["client"]))
  sources = [os.path.join(v["exports"], "1"), os.path.join(v["exports"], "2")]

  def swap():
    nonlocal current
    _publish(sources[current % 2], v["base"], current + 1)
    testing.wait_for(lambda: _available(v["client"], current + 1), what=f"version {current + 1}")
    testing.wait_for(lambda: _states(v["client"])[current]["state"] == "END",
              what=f"version {current} unloaded")
    shutil.rmtree(os.path.join(v["base"], str(current)))
    current += 1

  for _ in range(3):  # Allocator and TF caches settle over the first loads.
    swap()
  before = v["server"].rss_mb()
  swaps = 12
  for _ in range(swaps):
    swap()
  _assert_serves(v, v["models"][(current - 1) % 2])
  growth_mb = v["server"].rss_mb() - before
  # Before the fix every swap kept the unloaded version (about 6 MB each here).
  print(f"memory growth over {swaps} swaps: {growth_mb:.1f} MB")
  assert growth_mb < 15, f"server memory grew {growth_mb:.1f} MB over {swaps} swaps"
