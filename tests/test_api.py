"""lad_tf's public API (lad_tf.harden / evaluate / export / load_data) on what users bring: a
keras.Sequential classifier, numpy arrays or tf.data, their own image folder, and the notebook-style
example of docs/examples run as a user would."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import lad_tf
from lad_tf.data import datasets
from lad_tf.data.sources import DataFormatError
from lad_tf.errors import ConfigError
import independent

EPS = 0.1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sequential(seed=0):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 5, activation="relu"),
                           keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                           keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def digits():
  return datasets.load("digits")


@pytest.fixture(scope="module")
def trained(digits):
  """A Sequential classifier trained the usual Keras way, and its hardened copy."""
  model = _sequential()
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(digits.train.x, digits.train.y, epochs=8, batch_size=64, verbose=0)
  before = [w.copy() for w in model.get_weights()]
  hardened, info = lad_tf.harden(model, (digits.train.x, digits.train.y), eps=EPS, epochs=6, seed=0)
  return model, before, hardened, info


def test_harden_raises_the_robustness_of_a_sequential_model_and_leaves_it_unchanged(trained, digits):
  model, before, hardened, info = trained
  assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
  assert hardened is not model and info["defence"] == lad_tf.DEFAULT_DEFENCE == "atta" and info["eps"] == EPS
  x, y = digits.test.x[:300], digits.test.y[:300]
  original, defended = independent.pgd_accuracy(model, x, y, EPS), independent.pgd_accuracy(hardened, x, y, EPS)
  assert defended > original + 0.15, (original, defended)
  assert np.mean(np.argmax(hardened.predict(x, verbose=0), -1) == y) > 0.8


def test_evaluate_reports_autoattack_on_both_models_and_the_checks(trained, digits):
  model, _, hardened, _ = trained
  report = lad_tf.evaluate(hardened, (digits.test.x, digits.test.y), eps=EPS, examples=40, version="fast",
                           checks=40, original=model)
  assert report["attack"] == "AutoAttack fast" and report["eps"] == EPS and report["examples"] == 40
  assert sum(report["broken_by"].values()) == 40
  assert report["robust_accuracy"] == report["broken_by"].get("", 0) / 40
  assert report["clean_accuracy"] == 1 - report["broken_by"].get("clean", 0) / 40
  assert report["original"]["robust_accuracy"] < report["robust_accuracy"] <= report["clean_accuracy"]
  assert isinstance(report["gradient_masking"]["passed"], bool)
  assert report["training"]["defence"] == "atta"


def test_export_carries_the_card_of_the_model_it_exports(trained, digits, tmp_path):
  _, _, hardened, _ = trained
  report = {"attack": "AutoAttack fast", "eps": EPS, "examples": 40, "clean_accuracy": 0.9, "robust_accuracy": 0.6}
  path = lad_tf.export(hardened, str(tmp_path / "model"), model_card=report, class_names=digits.spec.class_names,
                       dataset="digits", sample_images=digits.test.x[:8])
  card = json.load(open(os.path.join(path, "assets.extra", "model_card.json")))
  assert (card["defence"], card["eps"], card["clean_accuracy"], card["robust_accuracy"]) == ("atta", EPS, 0.9, 0.6)
  assert (card["attack"], card["examples"], card["dataset"]) == ("AutoAttack fast", 40, "digits")
  assert card["class_names"] == list(digits.spec.class_names)
  served = tf.saved_model.load(path).signatures["serving_default"]
  np.testing.assert_array_equal(served(images=tf.constant(digits.test.x[:16]))["classes"].numpy(),
                                np.argmax(hardened.predict(digits.test.x[:16], verbose=0), -1))


def test_bad_input_is_refused_with_the_way_out(digits):
  x, y = digits.train.x[:200], digits.train.y[:200]
  untrained = _sequential(seed=1)
  with pytest.raises(ConfigError, match=r"x / 255"):
    lad_tf.harden(untrained, ((x * 255).astype(np.uint8), y), eps=EPS)
  with pytest.raises(ConfigError, match=r"no better than chance .* allow_weak_model=True"):
    lad_tf.harden(untrained, (x, y), eps=EPS)
  with pytest.raises(ConfigError, match=r"pass eps"):
    lad_tf.harden(untrained, (x, y))
  with pytest.raises(ConfigError, match=r"python -m pipelines.defend --defence=lad "):
    lad_tf.harden(untrained, (x, y), defence="lad", eps=EPS)
  with pytest.raises(ConfigError, match=r"200 images but 199 labels"):
    lad_tf.evaluate(untrained, (x, y[:199]), eps=EPS)


def test_tf_data_and_subclassed_models_are_taken(digits):
  class Small(keras.Model):
    def __init__(self, units, **kwargs):
      super().__init__(**kwargs)
      self.units, self.flat, self.out = units, keras.layers.Flatten(), keras.layers.Dense(units)

    def call(self, x):
      return self.out(self.flat(x))

  data = tf.data.Dataset.from_tensor_slices((digits.train.x[:300], digits.train.y[:300])).batch(50)
  with pytest.raises(ConfigError, match=r"get_config\(\), or build the classifier as keras.Sequential"):
    lad_tf.harden(Small(10), data, eps=EPS, epochs=1, allow_weak_model=True)

  class Configurable(Small):
    def get_config(self):
      return {**super().get_config(), "units": self.units}

  hardened, info = lad_tf.harden(Configurable(10), data, eps=EPS, epochs=1, allow_weak_model=True)
  assert info["train_examples"] == 300 - 30  # a tenth held out for the guard
  assert hardened.predict(digits.test.x[:4], verbose=0).shape == (4, 10)


def test_own_images_from_a_folder_or_an_npz(tmp_path, digits):
  for name, image in (("cat", digits.test.x[0]), ("cat", digits.test.x[1]), ("dog", digits.test.x[2])):
    os.makedirs(tmp_path / "folder" / name, exist_ok=True)
    keras.utils.save_img(str(tmp_path / "folder" / name / f"{len(os.listdir(tmp_path / 'folder' / name))}.png"),
                         np.repeat(image, 3, axis=-1))
  x, y, names = lad_tf.load_data(str(tmp_path / "folder"))
  assert names == ("cat", "dog") and list(y) == [0, 0, 1] and x.shape == (3, 28, 28, 3)
  assert 0 <= x.min() and x.max() <= 1 and abs(float(x[2, ..., 0].mean()) - float(digits.test.x[2].mean())) < 0.01
  np.savez(tmp_path / "set.npz", x=(digits.test.x[:5, ..., 0] * 255).astype(np.uint8), y=digits.test.y[:5])
  x, y, _ = lad_tf.load_data(str(tmp_path / "set.npz"))
  assert x.shape == (5, 28, 28, 1) and np.allclose(x, digits.test.x[:5], atol=1 / 255) and list(y) == list(digits.test.y[:5])
  np.savez(tmp_path / "bad.npz", images=x)
  with pytest.raises(DataFormatError, match=r"has no array x or y: save it with np.savez"):
    lad_tf.load_data(str(tmp_path / "bad.npz"))


def test_the_notebook_example_hardens_evaluates_exports_and_serves():
  """docs/examples/harden_fashion_mnist.py end to end, at its short size: a Sequential LeNet on
  Fashion-MNIST hardened through the API, measured, exported and asked through the server."""
  env = {**os.environ, "LAD_TF_EXAMPLE_SIZE": "small", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  run = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "examples", "harden_fashion_mnist.py")],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  figures = re.search(r"original: ([\d.]+)% clean, ([\d.]+)% under AutoAttack fast; hardened: ([\d.]+)% clean, "
                      r"([\d.]+)%", run.stdout)
  assert figures, run.stdout
  _, original_robust, _, hardened_robust = (float(v) for v in figures.groups())
  assert hardened_robust > original_robust
  assert "agree with the Keras model on 100% of 16 images" in run.stdout


def test_defend_takes_a_sequential_classifier_without_a_latent_layer_and_refuses_an_untrained_one(trained, tmp_path):
  """The command line's path: --classifier=FILE.keras with a robust defence needs no latent layer;
  a classifier no better than chance is refused before any training."""
  from lad_tf.run import defend
  model = trained[0]
  model.save(str(tmp_path / "mine.keras"))
  _sequential(seed=2).save(str(tmp_path / "untrained.keras"))
  config = defend.DefendConfig(defence="atta", defence_epochs=1, defence_train_examples=300, robust_eval="none")
  with pytest.raises(ConfigError, match=r"no better than chance .* --allow_weak_classifier"):
    defend.run_defend(str(tmp_path / "w1"), dataclasses.replace(config, classifier_path=str(tmp_path / "untrained.keras")))
  metrics = defend.run_defend(str(tmp_path / "w2"), dataclasses.replace(config, classifier_path=str(tmp_path / "mine.keras")))
  assert metrics["defence"] == "atta" and metrics["defended"]["clean_accuracy"] > 0.8


def test_defend_runs_on_your_own_images_from_an_npz(digits, tmp_path):
  """--dataset=files:PATH: the spec (shape, classes, splits) comes from the file; every later command
  finds it again through the work directory's config."""
  from lad_tf.run import defend, evaluate
  path = tmp_path / "mine.npz"
  np.savez(path, x=(digits.test.x[..., 0] * 255).astype(np.uint8), y=digits.test.y)  # 359 images, 10 classes
  config = defend.DefendConfig(dataset=f"files:{path}", defence="atta", classifier_epochs=6, defence_epochs=1,
                               robust_eval="none", report_images=0)
  metrics = defend.run_defend(str(tmp_path / "w"), config)
  assert metrics["dataset"] == f"files:{path}" and metrics["original"]["clean_accuracy"] > 0.5
  spec = datasets.get_spec(metrics["dataset"])
  assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10 and spec.attack_eps == 0.1
  assert evaluate.load_workdir(str(tmp_path / "w")).spec is spec

