"""The AC-WGAN-GP (lad_tf.models.acgan) and the GA attack (lad_tf.attacks.ga) on real digits.

One LeNet and one small AC-GAN are trained once for the module (about 40 s on 2 CPU cores); the
attack runs use fewer steps than the paper's 1000 and a larger step size, so the file takes about
2 minutes.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lad_tf.data import datasets
from lad_tf.lad import fine_tuning
from lad_tf.runtime import training
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.attacks import ga
from lad_tf.evaluation import sweeps
from lad_tf.models import acgan as acgan_lib
from lad_tf.run import acgan as acgan_run
import trained
from digits_models import plain_lenet
from kill import Killed, KillAfter

# A tiny AC-GAN that is class-conditional after a few epochs on the 1,438 training digits.
SMALL = dict(epochs=6, width=16, noise_dim=32, critic_steps=3, learning_rate=5e-4, verbose=0)
FAST_ATTACK = dict(num_steps=150, learning_rate=0.2, log_every=0)


@pytest.fixture(scope="module")
def digits():
  return datasets.load("digits")


@pytest.fixture(scope="module")
def lenet(digits):
  model, _ = plain_lenet()
  assert training.accuracy(model, digits.test.x, digits.test.y) >= 0.95
  return model


def _train_small_gan(folder):
  data = datasets.load("digits")
  model, history = acgan_run.train_acgan(data.train, data.spec.image_shape, data.spec.num_classes,
                                         acgan_lib.ACGANConfig(**SMALL))
  assert len(history["d_loss"]) == SMALL["epochs"]
  model.save(folder)


@pytest.fixture(scope="module")
def gan():
  """The small AC-GAN, trained once per test run (tests/trained.py)."""
  return acgan_lib.ACGAN.load(trained.artifact("small_acgan", _train_small_gan, **SMALL))


# -- the generative model ----------------------------------------------------------------------
def test_networks_have_the_documented_shapes_for_grey_and_colour_images():
  for shape in [(28, 28, 1), (32, 32, 3)]:
    generator = acgan_lib.build_generator(shape, num_classes=7, noise_dim=16, width=8)
    critic = acgan_lib.build_critic(shape, num_classes=7, width=8)
    images = generator([tf.random.normal((3, 16)), tf.constant([0, 3, 6])])
    assert images.shape == (3, *shape)
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    score, logits = critic(images)
    assert score.shape == (3, 1) and logits.shape == (3, 7)
    pair = acgan_lib.ACGAN(generator, critic)
    assert (pair.noise_dim, pair.num_classes, pair.image_shape) == (16, 7, shape)
  with pytest.raises(ValueError, match="divisible by 4"):
    acgan_lib.build_generator((30, 30, 1))


def test_samples_are_recognised_as_their_class_by_a_trained_lenet(gan, lenet, digits, tmp_path):
  accuracy, per_class = acgan_run.class_conditional_accuracy(gan, lenet, n_per_class=30)
  assert accuracy >= 0.4, per_class  # chance is 0.1
  aux_accuracy = training.accuracy(keras.Model(gan.critic.inputs, gan.critic.outputs[1]), digits.test.x, digits.test.y)
  assert aux_accuracy >= 0.7  # the auxiliary classifier is a usable judge of the class
  # save / load round trip keeps the samples
  gan.save(str(tmp_path / "acgan"))
  loaded = acgan_lib.ACGAN.load(str(tmp_path))  # a work directory holding acgan/ also works
  np.testing.assert_allclose(loaded.sample([1, 2, 3], seed=5), gan.sample([1, 2, 3], seed=5), atol=1e-5)


def test_killed_acgan_stage_resumes_at_its_last_epoch(tmp_path):
  config = acgan_lib.ACGANConfig(epochs=4, width=8, noise_dim=8, critic_steps=1, verbose=0)
  workdir = str(tmp_path / "run")
  with pytest.raises(Killed):
    acgan_run.train_stage(workdir, "digits", config, callbacks=[KillAfter(1)])
  assert not os.path.exists(os.path.join(workdir, "acgan"))
  backup = os.path.join(workdir, ".acgan.partial", "backup", "latest.weights.h5")
  # the backup holds the weights and both optimisers' states (2 epochs of 1438 // 64 = 22 steps)
  trainer = acgan_lib.build_trainer((28, 28, 1), 10, config)
  trainer.load_weights(backup)
  assert int(trainer.g_optimizer.iterations.numpy()) == 44 == int(trainer.d_optimizer.iterations.numpy())
  info = acgan_run.train_stage(workdir, "digits", config)
  assert len(info["history"]["d_loss"]) == 2  # epochs 3 and 4 only: 1 and 2 were done before the kill
  assert os.path.exists(os.path.join(workdir, "acgan", "generator.keras"))
  assert os.path.exists(os.path.join(workdir, "figures", "acgan_samples.png"))
  assert not os.path.exists(os.path.join(workdir, ".acgan.partial"))
  again = acgan_run.train_stage(workdir, "digits", config)  # a finished stage is skipped
  assert again["history"] == info["history"]


# -- the attack ---------------------------------------------------------------------------------
def test_untargeted_search_fools_lenet_while_the_auxiliary_classifier_keeps_the_source(gan, lenet):
  result = ga.make_ga_set(lenet, gan, n_per_class=6, targeted=False, seed=0, **FAST_ATTACK)
  kept = result["kept"]
  assert result["x_adv"].shape == (60, 28, 28, 1) and kept.dtype == bool
  assert result["success_rate"] >= 0.25, result["success_rate"]
  # what `kept` promises, checked independently of the attack's own bookkeeping
  pred = np.argmax(lenet.predict(result["x_adv"][kept], verbose=0), axis=-1)
  aux = np.argmax(gan.aux_fn(result["x_adv"][kept]).numpy(), axis=-1)
  assert np.all(pred != result["source"][kept]) and np.all(aux == result["source"][kept])
  assert np.all(result["target"] == -1)
  # the kept images stay in [0, 1] and are still near their starting samples (the soft box)
  x0 = gan.sample(result["source"], noise=np.random.default_rng(0).standard_normal((60, gan.noise_dim)))
  assert result["x_adv"].min() >= 0.0 and result["x_adv"].max() <= 1.0
  assert np.mean(np.abs(result["x_adv"][kept] - x0[kept])) < 0.15
  # lenet's own accuracy on what fooled it is zero by construction
  assert ga.transfer_accuracy({"lenet": lenet}, result)["lenet"] == 0.0


def test_targeted_search_reaches_its_targets(gan, lenet):
  source = np.repeat(np.arange(10), 4)
  target = (source + 1 + np.arange(40) % 9) % 10
  images, kept = ga.generative_attack(lenet, gan.generator, gan.aux_fn, source, target, seed=1, **FAST_ATTACK)
  assert kept.mean() >= 0.1, kept.mean()
  pred = np.argmax(lenet.predict(images[kept], verbose=0), axis=-1)
  np.testing.assert_array_equal(pred, target[kept])


def test_pixel_noise_stays_within_its_bound_and_the_search_is_seeded(gan, lenet):
  noise = np.random.default_rng(3).standard_normal((20, gan.noise_dim)).astype(np.float32)
  # z frozen (no gradient step, no noise): only the pixel perturbation moves the image
  images, _ = ga.generative_attack(lenet, gan.generator, gan.aux_fn, 4, num=20, noise=noise, num_steps=20,
                                   learning_rate=0.0, noise_std=0.0, pixel_eps=0.1, log_every=0)
  start = gan.sample(np.full(20, 4), noise=noise)
  assert np.max(np.abs(images - start)) <= 0.1 + 1e-5
  assert np.max(np.abs(images - start)) > 0.01
  run = lambda: ga.generative_attack(lenet, gan.generator, gan.aux_fn, 7, num=8, num_steps=10, seed=11,
                                     batch_size=3, log_every=0)
  first, second = run(), run()
  np.testing.assert_allclose(first[0], second[0], atol=1e-5)
  np.testing.assert_array_equal(first[1], second[1])


def test_bad_arguments_are_refused(gan, lenet):
  with pytest.raises(ValueError, match="num"):
    ga.generative_attack(lenet, gan.generator, gan.aux_fn, 3, num_steps=1)
  with pytest.raises(ValueError, match="equals its source"):
    ga.generative_attack(lenet, gan.generator, gan.aux_fn, [1, 2], [1, 3], num_steps=1)
  with pytest.raises(ValueError, match="class indices"):
    ga.generative_attack(lenet, gan.generator, gan.aux_fn, [1, 12], num_steps=1)
  with pytest.raises(ValueError, match="num_steps"):
    ga.generative_attack(lenet, gan.generator, gan.aux_fn, [1], num_steps=0)


def test_evaluation_helpers_pair_by_source_class_and_fine_tune(gan, lenet, digits, tmp_path):
  transfer = ga.ga_transfer_set(lenet, gan, n_per_class=3, seed=2, **FAST_ATTACK)
  assert transfer["tries"] == 30 and len(transfer["x_adv"]) >= 1
  # what the set promises, checked against the models themselves: every example fools the model it
  # was crafted on and keeps its source class for the AC-GAN's auxiliary classifier
  pred = np.argmax(lenet.predict(transfer["x_adv"], verbose=0), axis=-1)
  aux = np.argmax(gan.aux_fn(transfer["x_adv"]).numpy(), axis=-1)
  assert np.all(pred != transfer["source"]) and np.all(aux == transfer["source"])
  assert transfer["success_rate"] == pytest.approx(len(transfer["x_adv"]) / 30)
  path = ga.save_set(str(tmp_path / "ga.npz"), transfer)
  loaded = ga.load_set(path)
  np.testing.assert_array_equal(loaded["source"], transfer["source"])
  assert loaded["tries"] == 30
  x, x_adv, y = sweeps.fine_tune_pairs(transfer, digits.test, seed=0)
  assert x.shape == x_adv.shape and len(y) == len(x_adv)
  for clean_image, label in zip(x, y):  # every partner is a clean image of the same class
    matches = np.flatnonzero(np.all(digits.test.x == clean_image, axis=(1, 2, 3)))
    assert len(matches) and np.all(digits.test.y[matches] == label)
  tuned, used = sweeps.ga_fine_tuned(lenet, gan, digits.test, n_per_class=2, seed=3,
                                 config=fine_tuning.FineTuneConfig(epochs=1, execution=ExecutionConfig(verbose=0)), **FAST_ATTACK)
  assert used["kept"].any()
  assert training.accuracy(tuned, digits.test.x, digits.test.y) >= 0.85
  assert tuned is not lenet


def test_evaluation_ga_rows_attack_the_defended_model_itself_and_score_it_on_the_originals_examples(gan, lenet, digits):
  from types import SimpleNamespace
  from lad_tf.evaluation import sweeps
  from lad_tf.run import evaluate

  # models that differ from the original and each other (shorter trainings, other seeds)
  defended, other = plain_lenet(epochs=4, seed=1)[0], plain_lenet(epochs=2, seed=2)[0]
  calibration, held_out = datasets.calibration_split(digits.test, 5, 0)
  contents = SimpleNamespace(original=lenet, defended=defended, calibration=calibration, evaluation=held_out)
  attacked = {"original": lenet, "defended": defended, "baseline_fgsm": other}
  options = dict(learning_rate=0.2, log_every=0)
  config = evaluate.EvalConfig(ga_per_class=2, ga_steps=150, attack_options={"ga": options})
  tune = fine_tuning.FineTuneConfig(epochs=1, execution=ExecutionConfig(verbose=0))
  result = sweeps.ga_rows(gan, contents, attacked, other, config, tune, lambda _: None)
  white, transfer = result["rows"]
  assert (white["attack"], white["setting"], transfer["setting"]) == ("ga", "white_box", "transfer")

  # white box: GA against the original from seed + 1's start points, every try counted
  craft = lambda model: ga.make_ga_set(model, gan, 2, seed=config.seed + 1, num_steps=150, **options)
  own = craft(lenet)
  assert white["n"] == white["tries"] == white["n_images"] == 20 and white["n_pairs"] is None
  assert white["n_kept"] == int(own["kept"].sum()) >= 1
  assert white["original_accuracy"] == pytest.approx(1 - own["kept"].mean())
  assert white["original_accuracy"] == pytest.approx(ga.accuracy_over_tries({"o": lenet}, own)["o"])
  # fixed set: the defended model on the original's GA images; broken where the auxiliary classifier
  # still says the source and the defended model does not
  valid = np.argmax(gan.aux_fn(own["x_adv"]).numpy(), -1) == own["source"]
  said = np.argmax(defended.predict(own["x_adv"], verbose=0), -1)
  assert white["defended_accuracy_fixed_set"] == pytest.approx(1 - np.mean(valid & (said != own["source"])))
  # adaptive: GA run against the defended model itself (its own figure, not the original's)
  assert white["defended_accuracy"] == pytest.approx(1 - craft(defended)["kept"].mean())
  # every baseline the other rows report gets its fixed-set figure and (attack_baselines, the
  # default) is attacked itself; the GA baseline is among the models
  said = np.argmax(other.predict(own["x_adv"], verbose=0), -1)
  assert white["baseline_fgsm_accuracy_fixed_set"] == pytest.approx(1 - np.mean(valid & (said != own["source"])))
  assert white["baseline_fgsm_accuracy"] == pytest.approx(1 - craft(other)["kept"].mean())
  assert 0 <= white["baseline_ga_accuracy_fixed_set"] <= 1 and 0 <= white["baseline_ga_accuracy"] <= 1
  assert 0.5 < result["baseline_clean_accuracy"] <= 1

  # transfer: the black-box model's kept GA examples (seed), fed to every model
  bb = ga.ga_transfer_set(other, gan, 2, seed=config.seed, num_steps=150, **options)
  assert transfer["n"] == len(bb["x_adv"]) and transfer["tries"] == 20
  for name, model in (("original", lenet), ("defended", defended)):
    said = np.argmax(model.predict(bb["x_adv"], verbose=0), -1)
    assert transfer[f"{name}_accuracy"] == pytest.approx(np.mean(said == bb["source"]))
  assert "baseline_fgsm_accuracy" in transfer and "baseline_ga_accuracy" in transfer
