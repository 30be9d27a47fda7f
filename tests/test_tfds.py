"""The TensorFlow Datasets path as far as the network: every registered TFDS builder resolves in the
installed environment, and a dataset is prepared from local files in its real download format through
the loader `pipelines.defend` uses, with TFDS's download manager replaced at its boundary."""
import socket

import numpy as np
import pytest

from lad_tf.data import datasets
from lad_tf.data.sources import DatasetNotFoundError, tfds_source

TFDS_SPECS = [spec for spec in datasets.REGISTRY.values() if spec.load_tfds]


def test_every_tfds_dataset_is_registered_with_its_builder_name():
  assert {spec.name for spec in TFDS_SPECS} == {"mnist", "fashion_mnist", "svhn", "celeba_smile"}
  assert all(spec.tfds_name for spec in TFDS_SPECS)


@pytest.mark.parametrize("spec", TFDS_SPECS, ids=lambda s: s.name)
def test_builder_resolves_code_checksums_and_urls(spec, tmp_path):
  # Fails with ModuleNotFoundError (importlib_resources) when the install lacks what TFDS imports
  # before downloading: the failure users with internet met.
  builder = tfds_source.builder(spec.tfds_name, data_dir=str(tmp_path))
  assert builder.code_path is not None and builder.code_path.exists()
  url_infos = builder.url_infos
  assert url_infos, f"{spec.tfds_name}: no registered checksums"
  for url, info in url_infos.items():
    assert url.startswith(("http://", "https://"))
    assert len(info.checksum) == 64 and int(info.size) > 0
  assert tfds_source.download_hosts(builder)
  assert not (builder.data_path / "dataset_info.json").exists()
  features = builder.info.features
  assert "image" in features


def _svhn_mat(path, n, seed):
  from scipy import io as scipy_io
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
  labels = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # SVHN writes the digit 0 as 10
  scipy_io.savemat(path, {"X": images, "y": labels})
  return np.transpose(images, (3, 0, 1, 2)), labels.reshape(-1) % 10


@pytest.fixture
def network_resolves(monkeypatch):
  """The download hosts resolve (whatever this machine's network), so the loader goes on to TFDS."""
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                 ("127.0.0.1", 0))])


def test_svhn_prepared_from_local_download(tmp_path, monkeypatch, network_resolves):
  import tensorflow_datasets as tfds
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  written = {split: _svhn_mat(downloads / f"{split}_32x32.mat", n, seed)
             for split, n, seed in (("train", 24, 0), ("test", 12, 1), ("extra", 6, 2))}
  requested = []

  def download(self, url_or_urls):  # DownloadManager.download: {key: url} -> {key: local path}
    requested.append(dict(url_or_urls))
    return {key: str(downloads / url.rsplit("/", 1)[-1]) for key, url in url_or_urls.items()}

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  data = datasets.load("svhn", data_dir=str(tmp_path / "tfds"), source="tfds")
  assert data.source == "tfds"
  assert requested and set(requested[0]) == {"train", "test", "extra"}
  assert all(url.endswith("_32x32.mat") for url in requested[0].values())
  for split_name, split in (("train", data.train), ("test", data.test)):
    images, labels = written[split_name]
    assert split.x.shape == (len(labels), 32, 32, 3) and split.x.dtype == np.float32
    # TFDS may reorder examples: compare as multisets of (image, label)
    got = sorted((split.y[i], split.x[i].tobytes()) for i in range(len(split.y)))
    want = sorted((labels[i], (images[i] / 255.0).astype(np.float32).tobytes()) for i in range(len(labels)))
    assert got == want  # pixels scaled to [0, 1], and the digit 0 (written as 10) labelled 0


def test_offline_fails_at_once_naming_the_ways(tmp_path, monkeypatch):
  def no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", no_dns)
  for variable in tfds_source._PROXY_VARIABLES:  # pylint: disable=protected-access
    monkeypatch.delenv(variable, raising=False)
  with pytest.raises(DatasetNotFoundError) as error:
    datasets.load("svhn", data_dir=str(tmp_path))
  message = str(error.value)
  assert "train_32x32.mat" in message and "--data_dir" in message
  assert "cannot resolve ufldl.stanford.edu" in message and "no internet connection" in message
