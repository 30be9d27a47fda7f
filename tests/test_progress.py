"""Progress lines with the time left (lad_tf.runtime.progress), the defend plan (lad_tf.run.plan) and SVHN's .mat
writer (the benchmark's full-size stand-in files), on the embedded digits and tiny synthetic files."""
import logging
import math
import os

import keras
import numpy as np
import pytest

from lad_tf import models
from lad_tf.data import datasets
from lad_tf.run import defend, plan
from lad_tf.runtime import execution, losses
from lad_tf.runtime.progress import Progress, StepTimer, duration
from lad_tf.errors import ConfigError
from lad_tf.data.sources import svhn


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_duration_reads_like_a_person_would():
  assert duration(7.4) == "7s"
  assert duration(185) == "3m05s"
  assert duration(3720) == "1h02m"
  assert duration(float("inf")) == "?"


def test_progress_estimates_the_time_left_of_the_whole_stage_without_the_compiling_batch():
  clock, lines = FakeClock(), []
  progress = Progress("classifier", every_s=0, batch_size=128, say=lines.append, clock=clock)
  progress.set_params({"epochs": 2, "steps": 10})
  progress.on_train_begin()
  progress.on_epoch_begin(0)
  clock.now += 5.0  # the first batch traces and compiles: slow, left out of the rate
  progress.on_train_batch_end(0)
  for batch in range(1, 5):
    clock.now += 1.0  # then 1 batch/s
    progress.on_train_batch_end(batch)
  # 5 of 20 batches done; 15 left at 1 batch/s
  assert lines[-1] == ("classifier: epoch 1/2, batch 5/10 (25% of classifier), 1.00 batch/s, 128 images/s, "
                       "9s elapsed, about 15s left")
  assert "left" not in lines[0]  # one batch gives no rate yet
  progress.on_epoch_end(0)
  progress.on_epoch_begin(1)
  for batch in range(10):
    clock.now += 2.0  # slower now: the rate is the mean since the first batch
    progress.on_train_batch_end(batch)
    if batch == 4:
      rate = (4 + 5) / (4 * 1.0 + 5 * 2.0)  # the batches after the very first over their time
      assert lines[-1].endswith(f"about {duration(5 / rate)} left")
  progress.on_train_end()
  assert lines[-1].endswith("done") and "epoch 2/2, batch 10/10" in lines[-1]


def test_progress_learns_the_steps_per_epoch_when_keras_does_not_know_them():
  clock, lines = FakeClock(), []
  progress = Progress("generator", every_s=0, say=lines.append, clock=clock)
  progress.set_params({"epochs": 3, "steps": None})
  progress.on_train_begin()
  progress.on_epoch_begin(0)
  for batch in range(4):
    clock.now += 1.0
    progress.on_train_batch_end(batch)
  assert "left" not in lines[-1] and "batch 4," in lines[-1]
  progress.on_epoch_end(0)
  progress.on_epoch_begin(1)
  clock.now += 1.0
  progress.on_train_batch_end(0)
  assert "batch 1/4" in lines[-1] and lines[-1].endswith("about 7s left")  # 3 + 4 batches at 1/s


def test_progress_stays_silent_on_short_loops():
  clock, lines = FakeClock(), []
  progress = Progress("latents", every_s=10, say=lines.append, clock=clock)
  progress.set_params({"steps": 3})
  progress.on_predict_begin()
  for batch in range(3):
    clock.now += 1.0
    progress.on_predict_batch_end(batch)
  progress.on_predict_end()
  assert lines == []


def test_the_executor_logs_progress_with_the_time_left_while_training(caplog):
  data = datasets.load("digits")
  keras.utils.set_random_seed(0)
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  train = datasets.to_tf_dataset(data.train.take(np.arange(640)), 64, shuffle=True)
  run = execution.ExecutionConfig(verbose=1, progress_s=0.0)
  with caplog.at_level(logging.INFO, logger="lad_tf"):
    history = execution.fit(model, losses.classification, train, run, 2, lambda: keras.optimizers.Adam(1e-3),
                            name="classifier", batch_size=64)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("classifier: ")]
  assert len(lines) >= 19  # one per batch (progress_s=0) plus the final one
  assert any("epoch 2/2, batch 10/10" in line for line in lines)
  assert any(line.endswith("left") and "images/s" in line for line in lines)
  assert lines[-1].endswith("done")
  assert history["loss"][1] < history["loss"][0]


def test_step_timer_leaves_out_the_first_batch():
  clock, cpu = FakeClock(), FakeClock()
  timer = StepTimer(clock, cpu)
  for step in (30.0, 2.0, 2.0, 2.0):
    clock.now += step
    cpu.now += 2 * step  # two busy threads
    timer.on_train_batch_end(0)
  assert timer.seconds_per_batch() == pytest.approx(2.0)
  assert timer.cpu_seconds_per_batch() == pytest.approx(4.0)
  with pytest.raises(ValueError, match="at least 2 batches"):
    StepTimer().seconds_per_batch()


# -- the plan -------------------------------------------------------------------------------------
def test_plan_estimates_each_stage_from_timed_batches_and_skips_done_stages(tmp_path):
  config = defend.DefendConfig(dataset="digits", defence="lad", classifier_epochs=2, generator_epochs=3,
                                 execution=execution.ExecutionConfig(verbose=0))
  run = defend.DefendRun(str(tmp_path), config)

  def fake_classifier(out):  # the classifier stage, done (an untrained model is enough to plan)
    model = models.build_classifier("lenet5", (28, 28, 1), 10)
    model.save(os.path.join(out, "model.keras"))
  run.prepare()
  run.work.run_stage("classifier", run.settings["classifier"], fake_classifier)

  estimates, lines = run.plan(batches=2)
  by_name = {e.name: e for e in estimates}
  assert [e.name for e in estimates] == list(defend.STAGES)
  assert by_name["classifier"].done and not by_name["generator"].done
  assert "classifier_step" not in lines[-1]  # a done stage's training is not timed
  # the estimate is the stage's counts times the measured batch times
  fake = plan.Timings({"decoder_step": 0.5, "decoder_inference": 0.1, "classifier_inference": 0.2},
                      {"decoder_step": 64, "decoder_inference": 512, "classifier_inference": 512})
  generator = {e.name: e for e in plan.estimate(run, fake)}["generator"]
  n_train, n_eval = len(run.data.train), len(run.evaluation)
  assert generator.parts["training"] == pytest.approx(3 * math.ceil(n_train / 64) * 0.5)
  assert generator.parts["latents (train and test)"] == pytest.approx(math.ceil((n_train + n_eval) / 512) * 0.2)
  assert generator.seconds == pytest.approx(sum(generator.parts.values()))
  assert lines[0].startswith("plan") and any(line.strip().startswith("classifier  done") for line in lines)
  total = [line for line in lines if line.strip().startswith("total")][0]
  expected = sum(e.seconds for e in estimates if not e.done)
  assert f"about {duration(expected):>6s}" in total
  assert all(e.seconds > 0 for e in estimates if not e.done)
  # AutoAttack's time depends on how many images resist: a range, the plan's total spans it too
  robustness = by_name["robustness"]
  assert robustness.upper > 10 * robustness.seconds
  assert any(line.strip().startswith("robustness") and f"to {duration(robustness.upper)}" in line for line in lines)
  assert f"to {duration(expected - robustness.seconds + robustness.upper)}" in total


def test_the_default_defence_plans_its_carried_step(tmp_path):
  """atta's loss reads each example's row (carried perturbations): the plan's timed step gives it one,
  or `python -m pipelines.defend` stops before its first stage."""
  run = defend.DefendRun(str(tmp_path), defend.DefendConfig(dataset="digits", execution=execution.ExecutionConfig(verbose=0)))
  run.prepare()
  assert run.config.defence == "atta" == defend.DefendConfig().defence
  timings = plan.measure(run, 1, ["robust_step"])
  assert timings.batch == {"robust_step": 128} and timings.seconds["robust_step"] > 0


def test_plan_estimates_the_robust_defence_and_autoattack_from_their_own_pieces(tmp_path):
  config = defend.DefendConfig(dataset="digits", defence="fgsm_rs", defence_epochs=3,
                                 execution=execution.ExecutionConfig(verbose=0))
  run = defend.DefendRun(str(tmp_path), config)
  run.prepare()
  c = run.config
  assert plan.stage_pieces(c, "defended") == ("classifier_inference", "robust_step", "attack_gradient")
  timings = plan.measure(run, 2, ["robust_step", "attack_gradient", "classifier_inference"])
  # an fgsm_rs step takes two passes through the model, an input gradient about one: both are timed
  assert timings.batch == {"robust_step": 128, "attack_gradient": 512, "classifier_inference": 512}
  assert all(v > 0 for v in timings.seconds.values())
  fake = plan.Timings({"robust_step": 0.3, "attack_gradient": 0.2, "classifier_inference": 0.1},
                      {"robust_step": 128, "attack_gradient": 512, "classifier_inference": 512})
  by_name = {e.name: e for e in plan.estimate(run, fake)}
  assert [e.name for e in plan.estimate(run, fake)] == ["classifier", "defended", "robustness", "report"]
  n = len(run.data.train)
  held = min(1000, n // 5)
  defended = by_name["defended"].parts
  assert defended["training"] == pytest.approx(3 * math.ceil((n - held) / 128) * 0.3)
  # the guard: PGD-10 and FGSM on the held-out rows before and after each of the 3 epochs
  assert defended["guard (each epoch)"] == pytest.approx(4 * held * (11 * 0.2 + 3 * 0.1) / 512)
  aa = by_name["robustness"]
  n_aa = min(c.robust_eval_examples, len(run.evaluation))
  g, f = 0.2 / 512, 0.1 / 512
  assert aa.parts["APGD-CE, both models"] == pytest.approx(2 * n_aa * 100 * g)
  assert aa.upper - aa.seconds == pytest.approx(n_aa * (9 * 100 * g + 9 * 100 * (g + f) + 5000 * f))


# -- SVHN's .mat files ----------------------------------------------------------------------------
def _pixels(split):
  """A split's images as one float32 array (SVHN keeps uint8 pixels and decodes the rows indexed)."""
  return split.x[np.arange(len(split))]


def test_written_mat_files_read_back_through_the_svhn_loader(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(12) % 10
  svhn.write_mat(tmp_path / "train_32x32.mat", images, labels)
  svhn.write_mat(tmp_path / "test_32x32.mat", images[:5] / 255.0, labels[:5])  # floats in [0, 1] too
  data = datasets.load("svhn", data_dir=str(tmp_path), source="local")
  np.testing.assert_array_equal(data.train.y, labels)
  np.testing.assert_allclose(_pixels(data.train), images / 255.0, atol=1e-7)
  np.testing.assert_allclose(_pixels(data.test), images[:5] / 255.0, atol=1e-7)
  from scipy import io as scipy_io
  raw = scipy_io.loadmat(tmp_path / "train_32x32.mat")
  assert raw["X"].shape == (32, 32, 3, 12) and raw["X"].dtype == np.uint8
  assert raw["y"][0, 0] == 10  # SVHN writes the digit 0 as 10


def test_synthetic_svhn_files_have_the_requested_sizes_and_are_seeded(tmp_path):
  a = svhn.write_synthetic(str(tmp_path / "a"), {"train": 30, "test": 20}, seed=3)
  b = svhn.write_synthetic(str(tmp_path / "b"), {"train": 30, "test": 20}, seed=3)
  da, db = datasets.load("svhn", data_dir=a), datasets.load("svhn", data_dir=b)
  assert (len(da.train), len(da.test)) == (30, 20)
  np.testing.assert_array_equal(_pixels(da.train), _pixels(db.train))
  assert set(np.unique(da.train.y)) <= set(range(10))
  with pytest.raises(ValueError, match="images"):
    svhn.write_mat(tmp_path / "bad.mat", np.zeros((2, 28, 28, 1)), [0, 1])


def test_cpu_bound_spreads_each_parts_cpu_seconds_over_the_cores_and_keeps_autoattacks_range():
  from pipelines.benchmarks.pipeline import cpu_bound
  summary = {"seconds_per_batch": {"robust_step": 2.0, "attack_gradient": 1.0, "classifier_inference": 1.0},
             "cpu_seconds_per_batch": {"robust_step": 2.0, "attack_gradient": 1.5, "classifier_inference": 0.5},
             "stages": {"defended": {"extrapolated_s": 100.0, "extrapolated_parts_s": {"training": 100.0}},
                        "robustness": {"extrapolated_s": 40.0, "extrapolated_upper_s": 400.0,
                                       "extrapolated_parts_s": {"APGD-CE, both models": 40.0}}}}
  out = cpu_bound(summary, cores=2)
  # training: 2 CPU-s per 2 wall-s batch over 2 cores -> half; APGD-CE: 1.5 / 1 / 2 -> 0.75
  assert out["stages_s"] == pytest.approx({"defended": 50.0, "robustness": 30.0})
  assert out["upper_stages_s"] == pytest.approx({"robustness": 300.0})
  assert out["upper_total_s"] == pytest.approx(350.0)


def test_robust_defence_decodes_svhns_uint8_split_and_refuses_one_too_big_before_any_stage(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(120) % 10
  svhn.write_mat(tmp_path / "train_32x32.mat", images, labels)
  svhn.write_mat(tmp_path / "test_32x32.mat", images[:40], labels[:40])
  config = lambda **kw: defend.DefendConfig(**{"dataset": "svhn", "data_dir": str(tmp_path), "defence": "fgsm_rs",
                                                 "calibration_per_class": 2, **kw})
  run = defend.DefendRun(str(tmp_path / "run"), config())
  assert run.data.train.streamed  # SVHN keeps uint8 pixels
  train = run.robust_train_split().in_memory()
  assert train.x.dtype == np.float32 and train.x.shape == (120, 32, 32, 3)
  np.testing.assert_allclose(train.x, images / 255.0, atol=1e-7)
  assert len(defend.DefendRun(str(tmp_path / "run2"), config(defence_train_examples=200)).robust_train_split()) == 120
  # over the memory limit: refused when the run is set up, with the flag that fixes it
  monkeypatch.setattr(defend, "ROBUST_MEMORY_BYTES", 100 * 32 * 32 * 3 * 4)
  with pytest.raises(ConfigError, match=r"--defence_train_examples=100 \(at most 100 fit\)"):
    defend.DefendRun(str(tmp_path / "run3"), config())
  assert len(defend.DefendRun(str(tmp_path / "run4"), config(defence_train_examples=100)).robust_train_split()) == 100
  defend.DefendRun(str(tmp_path / "run5"), config(defence="lad"))  # the paper's method streams: no limit


def test_pipeline_benchmark_keeps_a_given_workdir_and_a_second_run_resumes_from_it(tmp_path):
  """An hours-long full run (SVHN) must keep its log and per-stage times when killed, and the same
  command must pick up its finished stages instead of training them again."""
  from pipelines.benchmarks import pipeline as bench
  work = tmp_path / "work"
  flags = ["--classifier_epochs=5", "--defence=fgsm_rs", "--defence_epochs=1", "--autoattack=none",
           "--export=false", "--plan_batches=0", "--report_images=0"]
  first = bench.run(dataset="digits", workdir=str(work), extra_args=flags)
  assert {"classifier", "defended"} <= set(first["stages"])
  assert (work / "stages.json").is_file() and (work / "defend.log").is_file()
  assert first["original_clean_accuracy"] > 0.5  # five epochs on digits: well above chance (0.1)
  bench.run(dataset="digits", workdir=str(work), extra_args=flags)
  log = (work / "defend.log").read_text()
  assert "stage classifier: running" in log and "stage classifier: done, skipped" in log
