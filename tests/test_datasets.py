"""Loaders on real data (embedded digits, Debian's Fashion-MNIST), on small files written in SVHN's,
CelebA's and the IDX format, on the TFDS path (mock data), and every bad-input case."""
import gzip
import os

import numpy as np
import pytest

from lad_tf.data import datasets
from lad_tf.data.sources import DataFormatError, DatasetNotFoundError


@pytest.fixture(scope="module")
def digits():
  return datasets.load("digits")


def test_digits_is_real_mnist_like_and_stratified(digits):
  assert digits.source == "embedded"
  assert digits.train.x.shape == (1438, 28, 28, 1) and digits.test.x.shape == (359, 28, 28, 1)
  assert digits.train.x.dtype == np.float32 and digits.train.y.dtype == np.int64
  assert 0.0 <= digits.train.x.min() and digits.train.x.max() <= 1.0
  # MNIST-like: the digit sits in the central 20x20 box, the 4-pixel frame is empty
  assert digits.train.x[:, :4].max() == 0.0 and digits.train.x[:, :, -4:].max() == 0.0
  assert np.all(np.bincount(digits.test.y, minlength=10) >= 35)


@pytest.mark.skipif(not os.path.isdir(datasets.DEBIAN_FASHION_MNIST),
                    reason="Debian's dataset-fashion-mnist is not installed (make test installs it)")
def test_fashion_mnist_from_debian_files():
  data = datasets.load("fashion_mnist")
  assert data.source == "system"
  assert data.train.x.shape == (60000, 28, 28, 1) and data.test.x.shape == (10000, 28, 28, 1)
  assert np.array_equal(np.bincount(data.test.y), np.full(10, 1000))
  assert 0.0 <= data.train.x.min() and data.train.x.max() == 1.0


def _write_idx(path, array, gz=True):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(payload)


def _write_mnist_dir(directory, digits, gz=True):
  for split, prefix in (("train", "train"), ("test", "t10k")):
    part = getattr(digits, split)
    suffix = ".gz" if gz else ""
    _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"),
               np.round(part.x[:50, :, :, 0] * 255), gz)
    _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), part.y[:50], gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_from_data_dir(tmp_path, digits, gz):
  _write_mnist_dir(tmp_path, digits, gz)
  data = datasets.load("mnist", data_dir=str(tmp_path))
  assert data.source == "local"
  assert data.train.x.shape == (50, 28, 28, 1)
  np.testing.assert_array_equal(data.train.y, digits.train.y[:50])
  np.testing.assert_allclose(data.train.x, np.round(digits.train.x[:50] * 255) / 255, atol=1e-6)


def test_idx_bad_magic_names_the_file(tmp_path, digits):
  _write_mnist_dir(tmp_path, digits)
  bad = tmp_path / "train-labels-idx1-ubyte.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x0d\x01" + (50).to_bytes(4, "big") + bytes(50))
  with pytest.raises(DataFormatError, match="train-labels-idx1-ubyte.gz: bad IDX magic"):
    datasets.load("mnist", data_dir=str(tmp_path))


def test_idx_truncated_file_is_a_short_read(tmp_path, digits):
  _write_mnist_dir(tmp_path, digits, gz=False)
  path = tmp_path / "t10k-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataFormatError, match="t10k-images-idx3-ubyte: short read"):
    datasets.load("mnist", data_dir=str(tmp_path))


def test_truncated_gzip_names_the_file(tmp_path, digits):
  _write_mnist_dir(tmp_path, digits)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.gz"):
    datasets.load("mnist", data_dir=str(tmp_path))


def test_missing_dataset_names_every_way_to_get_it(tmp_path):
  with pytest.raises(DatasetNotFoundError) as error:
    datasets.load("svhn", data_dir=str(tmp_path), source="local")
  message = str(error.value)
  assert "svhn" in message and "--data_dir" in message and "train_32x32.mat" in message
  assert "TensorFlow Datasets" in message


def _svhn_arrays(digits, n):
  rgb = np.repeat(np.pad(digits.train.x[:n], ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
  labels = digits.train.y[:n].copy()
  mat_labels = np.where(labels == 0, 10, labels).reshape(-1, 1)  # SVHN writes the digit 0 as 10
  return np.round(rgb * 255).astype(np.uint8), labels, mat_labels


def test_svhn_mat_files(tmp_path, digits):
  from scipy import io as scipy_io
  images, labels, mat_labels = _svhn_arrays(digits, 40)
  for name in ("train_32x32.mat", "test_32x32.mat"):
    scipy_io.savemat(tmp_path / name, {"X": np.transpose(images, (1, 2, 3, 0)), "y": mat_labels})
  data = datasets.load("svhn", data_dir=str(tmp_path))
  assert data.train.x.shape == (40, 32, 32, 3)
  np.testing.assert_array_equal(data.test.y, labels)
  assert data.train.streamed  # uint8 pixels kept, scaled per row or per streamed batch
  np.testing.assert_allclose(data.train.x[:], images / 255.0, atol=1e-6)
  streamed = np.concatenate([xb for xb, _ in datasets.to_tf_dataset(data.train, 16).as_numpy_iterator()])
  np.testing.assert_array_equal(streamed, data.train.x[:])
  _assert_shuffled_pairs_match(data.train.x, data.train.x[:])
  with pytest.raises(TypeError, match="index the rows you need"):
    np.asarray(data.train.x)


def test_svhn_mat_without_labels(tmp_path, digits):
  from scipy import io as scipy_io
  images, _, mat_labels = _svhn_arrays(digits, 10)
  scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": np.transpose(images, (1, 2, 3, 0))})
  scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.transpose(images, (1, 2, 3, 0)), "y": mat_labels})
  with pytest.raises(DataFormatError, match=r"train_32x32.mat: the .mat file has no variable y"):
    datasets.load("svhn", data_dir=str(tmp_path))


def _write_celeba(directory, digits, n=12, attribute="Smiling"):
  import tensorflow as tf
  (directory / "img_align_celeba").mkdir()
  names = ["5_o_Clock_Shadow", attribute, "Young"]
  lines = [str(n), " ".join(names)]
  for i in range(n):
    face = tf.image.resize(digits.train.x[i], (218, 178)).numpy()
    face = np.repeat(np.clip(face, 0, 1), 3, axis=-1)
    name = f"{i + 1:06d}.jpg"
    tf.io.write_file(str(directory / "img_align_celeba" / name),
                     tf.io.encode_jpeg(tf.cast(np.round(face * 255), tf.uint8)))
    lines.append(f"{name} -1 {1 if i % 3 == 0 else -1} 1")
  (directory / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


def test_celeba_folder_gives_smiling_labels(tmp_path, digits):
  _write_celeba(tmp_path, digits)
  data = datasets.load("celeba_smile", data_dir=str(tmp_path))
  assert data.train.x.shape[1:] == (128, 128, 3)
  assert len(data.train) + len(data.test) == 12
  all_labels = np.concatenate([data.train.y, data.test.y])
  np.testing.assert_array_equal(all_labels, [1 if i % 3 == 0 else 0 for i in range(12)])
  assert data.train.streamed and data.test.streamed  # faces are decoded on the fly, never held whole
  faces = data.train.x[:]
  assert faces.dtype == np.float32 and 0.0 <= faces.min() and faces.max() <= 1.0 and faces.std() > 0.05
  # the tf.data stream decodes the same faces, in order, as indexing does
  streamed = np.concatenate([xb for xb, _ in datasets.to_tf_dataset(data.train, 4).as_numpy_iterator()])
  np.testing.assert_allclose(streamed, faces, atol=1e-6)
  np.testing.assert_allclose(data.train.take([2, 0]).x[:], faces[[2, 0]], atol=1e-6)
  _assert_shuffled_pairs_match(data.train.x, faces)


def _assert_shuffled_pairs_match(lazy, images):
  """A shuffled stream keeps each image with its row's value (labels, latents), in a new order."""
  rows, streamed = [], []
  for image, row in lazy.pairs(np.arange(len(lazy)), shuffle=True, seed=3).as_numpy_iterator():
    rows.append(row)
    streamed.append(image)
  assert sorted(rows) == list(range(len(lazy))) and rows != sorted(rows)
  np.testing.assert_allclose(np.stack(streamed), images[rows], atol=1e-6)


def test_celeba_attributes_without_smiling(tmp_path, digits):
  _write_celeba(tmp_path, digits, n=3, attribute="Eyeglasses")
  with pytest.raises(DataFormatError, match="list_attr_celeba.txt: no attribute column 'Smiling'"):
    datasets.load("celeba_smile", data_dir=str(tmp_path))


def test_tfds_path_with_mock_data(monkeypatch):
  import socket
  import tensorflow_datasets as tfds
  # mock_data replaces the download and preparation, not the loader's check that the download hosts
  # resolve: let them resolve whatever this machine's network.
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                 ("127.0.0.1", 0))])
  with tfds.testing.mock_data(num_examples=16):
    data = datasets.load("fashion_mnist", source="tfds")
  assert data.source == "tfds"
  assert data.train.x.shape == (16, 28, 28, 1) and data.train.x.dtype == np.float32
  assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0


def test_calibration_split_is_stratified_and_disjoint(digits):
  calibration, evaluation = datasets.calibration_split(digits.test, 10, seed=3)
  assert np.array_equal(np.bincount(calibration.y), np.full(10, 10))
  assert len(calibration) + len(evaluation) == len(digits.test)
  as_rows = lambda s: {r.tobytes() for r in s.x}
  assert not as_rows(calibration) & as_rows(evaluation)
  again, _ = datasets.calibration_split(digits.test, 10, seed=3)
  np.testing.assert_array_equal(again.x, calibration.x)


def test_calibration_split_refuses_to_eat_the_test_set(digits):
  with pytest.raises(ValueError, match="choose fewer per class"):
    datasets.calibration_split(digits.test, 50)


def test_unknown_dataset():
  with pytest.raises(KeyError, match="known: celeba_smile, digits, fashion_mnist, mnist, svhn"):
    datasets.get_spec("cifar10")


def _tiny_face_classifier():
  import keras
  inputs = keras.Input((128, 128, 3))
  x = keras.layers.Conv2D(2, 3, strides=4)(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_truncated_celeba_jpeg_fails_at_load_naming_the_file(tmp_path, digits):
  _write_celeba(tmp_path, digits, n=6)
  broken = tmp_path / "img_align_celeba" / "000004.jpg"
  broken.write_bytes(broken.read_bytes()[:300])  # a half-downloaded file
  with pytest.raises(DataFormatError) as error:
    datasets.load("celeba_smile", data_dir=str(tmp_path))
  message = str(error.value)
  assert str(broken) in message and "truncated" in message
  assert "download CelebA's img_align_celeba again" in message and "remove the file" in message


def test_garbled_celeba_jpeg_hit_mid_training_is_named(tmp_path, digits):
  from lad_tf.runtime import training
  _write_celeba(tmp_path, digits, n=12)
  data = datasets.load("celeba_smile", data_dir=str(tmp_path))  # all whole JPEGs: loads
  garbled = data.train.x.paths[5]
  content = bytearray(open(garbled, "rb").read())
  content[3:400] = bytes((7 * b + 13) % 256 for b in content[3:400])  # headers garbled, markers intact
  with open(garbled, "wb") as f:
    f.write(bytes(content))
  datasets.celeba.check_files(data.train.x.paths)  # passes the load-time check: only decoding finds it
  for run in (lambda: training.train_classifier(_tiny_face_classifier(), data.train, data.test,
                                                training.TrainConfig(epochs=1, batch_size=4), None),
              lambda: training.accuracy(_tiny_face_classifier(), data.train.x, data.train.y)):
    with pytest.raises(DataFormatError) as error:
      run()
    message = str(error.value)
    assert message.startswith("1 image(s) cannot be decoded: " + garbled)
    assert "download CelebA's img_align_celeba again" in message
  assert data.train.x.unreadable() == [garbled]
  assert data.test.x.unreadable() == []


def test_tfds_and_local_celeba_give_the_same_faces(tmp_path, monkeypatch):
  """The same record through the TFDS loader (streamed from the records) and, written as a file,
  through the local folder: the same face square, the same pixels."""
  import socket
  import tensorflow as tf
  import tensorflow_datasets as tfds
  from lad_tf.data.sources import celeba
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                 ("127.0.0.1", 0))])
  with tfds.testing.mock_data(num_examples=6):
    data = datasets.load("celeba_smile", source="tfds")
    # the raw records as the loader reads them: image left encoded, decoded by the feature (under
    # mock_data, a plain as_dataset draws other random images than one with SkipDecoding)
    builder = tfds.builder("celeb_a")
    raw = [{"image": builder.info.features["image"].decode_example(r["image"]), "attributes": r["attributes"]}
           for r in builder.as_dataset(split="train", shuffle_files=False,
                                       decoders={"image": tfds.decode.SkipDecoding()})]
    assert data.train.streamed and data.test.streamed and len(data.train) == 6
    np.testing.assert_array_equal(data.train.y, [int(r["attributes"]["Smiling"]) for r in raw])
    through_tfds = data.train.x[:]
    # a subset reads the same records; the stream (in order, and shuffled) decodes the same faces
    np.testing.assert_array_equal(data.train.take([4, 1]).x[:], through_tfds[[4, 1]])
    streamed = np.concatenate([xb for xb, _ in datasets.to_tf_dataset(data.train, 4).as_numpy_iterator()])
    np.testing.assert_array_equal(streamed, through_tfds)
    _assert_shuffled_pairs_match(data.train.x, through_tfds)
  images = tmp_path / "img_align_celeba"
  images.mkdir()
  for i, record in enumerate(raw):
    assert record["image"].shape == (218, 178, 3)
    tf.io.write_file(str(images / f"{i:06d}.png"), tf.io.encode_png(record["image"]))  # lossless
    local = celeba.decode_face(str(images / f"{i:06d}.png"))
    np.testing.assert_allclose(local, through_tfds[i], atol=1e-6)
  squashed = tf.image.resize(tf.cast(raw[0]["image"], tf.float32) / 255.0, (128, 128), antialias=True).numpy()
  assert np.abs(squashed - through_tfds[0]).mean() > 0.02  # the old TFDS path (the whole image squashed)
