"""The named fine-tuning schedules (lad_tf.lad.fine_tuning.FINE_TUNE_SCHEDULES) and the decoder's loss curve
(DefendConfig.decoder_loss_epochs), through the defend pipeline on the real `digits` images."""
import dataclasses
import os

import keras
import numpy as np
import pytest

from lad_tf.lad import fine_tuning
from lad_tf.run import defend
from lad_tf.errors import ConfigError
from lad_tf.runtime.execution import ExecutionConfig
from lad_tf.runtime.files import read_json
from digits_models import seed_defend_stages, tiny_lad_config

QUIET = ExecutionConfig(verbose=0)


def test_schedules_are_the_documented_ones():
  ours, authors = fine_tuning.schedule_config("lad_tf"), fine_tuning.schedule_config("authors")
  assert (ours.epochs, ours.learning_rate, ours.momentum, ours.batch_size) == (10, 0.001, 0.5, 64)
  assert (authors.epochs, authors.learning_rate, authors.momentum, authors.batch_size) == (100, 0.01, 0.5, 64)
  assert fine_tuning.schedule_config("authors", epochs=3).epochs == 3
  assert fine_tuning.schedule_config() == fine_tuning.FineTuneConfig()
  with pytest.raises(ConfigError, match="unknown fine-tuning schedule 'adam'.*lad_tf, authors"):
    fine_tuning.schedule_config("adam")


def test_defend_config_resolves_the_schedule_and_checks_the_curve_epochs():
  assert defend.DefendConfig(fine_tune_schedule="authors").resolved().fine_tune_epochs == 100
  assert defend.DefendConfig().resolved().fine_tune_epochs == 10
  assert defend.DefendConfig(fine_tune_schedule="authors", fine_tune_epochs=7).resolved().fine_tune_epochs == 7
  with pytest.raises(ConfigError, match=r"decoder loss epochs \[40\].*--generator_epochs"):
    defend.DefendConfig(generator_epochs=30, decoder_loss_epochs=(10, 40)).resolved()


@pytest.fixture(scope="module")
def authors_run(tmp_path_factory, monkeypatch_module):
  """A tiny digits defence with the authors' schedule (2 epochs) and the decoder's loss recorded at
  epochs 1, 2 and 4; every SGD optimizer the defended stage builds is recorded. No AutoAttack stage,
  report curve or attention SVMs: nothing here reads them (the default AutoAttack took minutes)."""
  config = tiny_lad_config(report_images=0, fine_tune_schedule="authors", fine_tune_epochs=2, robust_eval="none")
  # the classifier, decoder and SVMs come from a run another test file may have made (the same settings)
  workdir = seed_defend_stages(str(tmp_path_factory.mktemp("authors")), config)
  defend.DefendRun(workdir, config).run(stop_after="generation")
  built = []
  sgd = keras.optimizers.SGD

  def spy(*args, **kwargs):
    optimizer = sgd(*args, **kwargs)
    built.append(optimizer)
    return optimizer
  monkeypatch_module.setattr(keras.optimizers, "SGD", spy)
  metrics = defend.run_defend(workdir, config)  # the earlier stages are done: only fine-tuning runs
  monkeypatch_module.undo()
  return workdir, config, metrics, built


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as patch:
    yield patch


def test_the_authors_schedule_is_the_optimizer_the_defence_trains_with(authors_run):
  workdir, _, metrics, built = authors_run
  assert built, "the defended stage built no SGD optimizer"
  rates = {round(float(keras.ops.convert_to_numpy(o.learning_rate)), 6) for o in built}
  momenta = {float(o.momentum) for o in built}
  assert rates == {0.01} and momenta == {0.5}
  defended = metrics["defended"]
  assert defended["fine_tune_schedule"] == "authors"
  assert defended["fine_tune_optimizer"] == {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "momentum": 0.5}
  assert defended["clean_accuracy"] > 0.8
  # the schedule is part of the defended stage's identity, and config.json holds it for the evaluation
  assert read_json(os.path.join(workdir, "defended", "stage.json"))["settings"]["schedule"] == "authors"
  assert read_json(os.path.join(workdir, "config.json"))["full"]["fine_tune_schedule"] == "authors"


def test_the_evaluation_fine_tunes_baselines_with_the_defences_schedule(authors_run):
  from lad_tf.evaluation import baselines
  from lad_tf.run import evaluate
  workdir, _, _, _ = authors_run
  run_config = read_json(os.path.join(workdir, "config.json"))
  tune = baselines.fine_tune_config(evaluate.EvalConfig(), run_config)
  assert (tune.epochs, tune.learning_rate, tune.momentum) == (2, 0.01, 0.5)
  # an older work directory without a schedule keeps ours
  del run_config["full"]["fine_tune_schedule"]
  tune = baselines.fine_tune_config(evaluate.EvalConfig(), run_config)
  assert (tune.epochs, tune.learning_rate) == (2, 0.001)


def test_decoder_loss_is_recorded_at_each_epoch_and_falls(authors_run):
  workdir, _, metrics, _ = authors_run
  curve = metrics["generator"]["loss_at_epoch"]
  assert sorted(curve, key=int) == ["1", "2", "4"]
  test = [curve[e]["test"] for e in ("1", "2", "4")]
  train = [curve[e]["train"] for e in ("1", "2", "4")]
  assert test[2] < test[0] and train[2] < train[0]
  # the last point is the trained decoder's own figure
  assert test[2] == pytest.approx(metrics["generator"]["test_loss"], rel=1e-4)
  assert train[2] == pytest.approx(metrics["generator"]["train_loss"], rel=1e-4)
  assert metrics["generator"]["epochs"] == 4


def test_a_changed_schedule_reruns_only_the_defended_stage(authors_run, caplog):
  workdir, config, _, _ = authors_run
  run = defend.DefendRun(workdir, dataclasses.replace(config, fine_tune_schedule="lad_tf", fine_tune_epochs=1))
  assert all(run.work.done(s, run.settings[s]) for s in ("classifier", "generator", "boundaries", "generation"))
  assert not run.work.done("defended", run.settings["defended"])
  run.close()


def test_stop_after_the_generator_runs_no_later_stage(tmp_path):
  config = defend.DefendConfig(dataset="digits", defence="lad", report_images=0, classifier_epochs=2, generator_epochs=2,
                                 calibration_per_class=3, decoder_loss_epochs=(2,), execution=QUIET)
  metrics = defend.DefendRun(str(tmp_path), config).run(stop_after="generator")
  assert os.path.isdir(tmp_path / "generator") and not os.path.exists(tmp_path / "boundaries")
  assert np.isfinite(metrics["generator"]["loss_at_epoch"]["2"]["test"])
  with pytest.raises(ConfigError, match="stop_after"):
    defend.DefendRun(str(tmp_path), config).run(stop_after="export")
