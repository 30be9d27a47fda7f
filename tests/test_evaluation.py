"""lad_tf.run.evaluate and lad_tf.evaluation.report on a small fake work directory.

The fixture builds what `pipelines.defend` would leave (classifier/, defended/, generation/generated.npz,
config.json, metrics.json) from a LeNet-5 trained on the real `digits` images, so these tests do not
depend on the defend pipeline, then runs the whole protocol once with tiny settings.
"""
import dataclasses
import html
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lad_tf.data import datasets
from lad_tf.lad import generation
from lad_tf.run import evaluate
from lad_tf.runtime import training
from lad_tf.runtime.files import load_model, read_json, write_json
from digits_models import plain_lenet

CALIBRATION_PER_CLASS = 5
LAD_EPS = (0.1, 0.3)
ATTACKS = ("fgsm", "pgd", "jsma", "cw", "apgd", "autoattack")
BASELINES = ("fgsm", "pgd", "jsma", "cw", "clean")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
  # the black-box model on 400 training images: 10 s of CPU against 13.7 s at 800 (AMD EPYC), and
  # its own FGSM still takes 0.23-0.63 off its clean accuracy on the 30 sources (3 seeds; 0.30 at seed 0)
  settings = dict(n_per_class=3, m_per_class=1, targets_per_image=2, blackbox_epochs=2, blackbox_batch_size=32,
                  blackbox_train_examples=400, fine_tune_epochs=1, pgd_iter=10, apgd_iter=10,
                  cw_binary_steps=2, cw_iterations=20, cw_initial_const=1.0, attack_baselines=False,
                  examples_per_attack=5, attack_options={"autoattack": {"version": "fast", "n_iter": 10}},
                  sanity_n=20, sanity_options={"pgd_steps": 5, "more_steps": 10, "restarts": 2})
  settings.update(overrides)
  return evaluate.EvalConfig(**settings)


def make_workdir(root):
  """A defend-like work directory: a trained LeNet as classifier, a *different* LeNet (other seed,
  fewer epochs) as the defended model, so a swapped column shows, and a 'generated' set of noisy
  calibration images (two eps) standing in for LAD's examples."""
  data = datasets.load("digits")
  trained = {}
  for stage, seed, epochs in (("classifier", 0, 15), ("defended", 1, 4)):
    trained[stage], _ = plain_lenet(epochs=epochs, seed=seed)
    os.makedirs(os.path.join(root, stage))
    trained[stage].save(os.path.join(root, stage, "model.keras"))
  model = trained["classifier"]
  calibration, _ = datasets.calibration_split(data.test, CALIBRATION_PER_CLASS, 0)
  rng = np.random.default_rng(0)
  target = (calibration.y + rng.integers(1, 10, len(calibration))) % 10
  parts = {k: [] for k in ("x_adv", "source", "target", "eps", "latent_label", "image_label", "index")}
  for eps in LAD_EPS:
    x_adv = np.clip(calibration.x + eps * rng.uniform(-1, 1, calibration.x.shape), 0, 1).astype(np.float32)
    label = np.argmax(model.predict(x_adv, verbose=0), axis=1)
    for key, value in (("x_adv", x_adv), ("source", calibration.y), ("target", target),
                       ("eps", np.full(len(calibration), eps, np.float32)), ("latent_label", label),
                       ("image_label", label), ("index", np.arange(len(calibration)))):
      parts[key].append(value)
  os.makedirs(os.path.join(root, "generation"))
  recon_label = np.argmax(model.predict(calibration.x, verbose=0), axis=1)
  generation.GeneratedSet(**{k: np.concatenate(v) for k, v in parts.items()}, recon_label=recon_label,
                          latent_scale=1.0).save(os.path.join(root, "generation", "generated.npz"))
  write_json(os.path.join(root, "config.json"),
             {"dataset": "digits", "data_dir": None, "calibration_per_class": CALIBRATION_PER_CLASS,
              "seed": 0, "full": {"fine_tune_mode": "mix", "fine_tune_eps": [0.1], "fine_tune_epochs": 1}})
  write_json(os.path.join(root, "metrics.json"), {"dataset": "digits"})
  return model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("workdir"))
  make_workdir(root)
  lines = []
  report = evaluate.evaluate_workdir(root, small_config(), progress=lines.append)
  return root, report, lines


@pytest.mark.end_to_end("runs the whole evaluation protocol once for the file: every attack, baselines, transfer and sanity checks")
def test_report_json_has_its_schema(evaluated):
  root, report, _ = evaluated
  on_disk = read_json(os.path.join(root, "evaluation", "report.json"))
  assert on_disk["rows"] == report["rows"]
  rows = report["rows"]
  assert {(r["attack"], r["setting"]) for r in rows} == {(a, s) for a in ATTACKS
                                                        for s in ("white_box", "transfer")}
  for row in rows:
    for key in ("attack", "setting", "epsilon", "n", "original_accuracy", "defended_accuracy"):
      assert key in row, key
    assert row["setting"] in ("white_box", "transfer")
    if row["attack"] in ("fgsm", "pgd", "apgd", "autoattack"):
      assert (row["n"], row["n_images"], row["n_pairs"]) == (30, 30, None)
    else:  # targeted: 1 image per class, each towards 2 other classes
      assert (row["n"], row["n_images"], row["n_pairs"]) == (20, 10, 20)
    for name in BASELINES:
      assert f"baseline_{name}_accuracy" in row
    if row["setting"] == "white_box":
      assert "defended_accuracy_fixed_set" in row
    if row["attack"] in ("jsma", "cw"):
      assert row["epsilon"] is None
  # The paper's 0.3 as printed, and the dataset's usual eps (digits: 0.1).
  assert sorted({r["epsilon"] for r in rows if r["attack"] == "pgd"}) == [0.1, 0.3]
  assert set(report["clean"]) == {"original", "defended"} | {f"baseline_{b}" for b in BASELINES}
  for name in BASELINES:
    assert report["models"][f"baseline_{name}"]["fine_tuned_on"] == 10 * CALIBRATION_PER_CLASS
  assert report["n"]["targeted_images"] == 10 and report["n"]["targeted_pairs"] == 20
  assert [r["epsilon"] for r in report["lad_sweep"]] == pytest.approx(list(LAD_EPS))
  matrix = np.array(report["lad_generation"]["success_matrix"], dtype=float)
  assert matrix.shape == (10, 10)


def test_white_box_attacks_hurt_and_progress_is_reported(evaluated):
  _, report, lines = evaluated
  clean = report["clean"]["original"]
  white = {(r["attack"], r["epsilon"]): r for r in report["rows"] if r["setting"] == "white_box"}
  for row in report["rows"]:
    if row["setting"] == "white_box" and row["attack"] in ("pgd", "apgd", "autoattack") and row["epsilon"] == 0.3:
      assert row["original_accuracy"] < clean - 0.5
    if row["setting"] == "white_box" and row["attack"] == "autoattack":
      # AutoAttack's first attack is APGD-CE with the same budget: never weaker than it
      for name in ("original", "defended"):
        # (slack of 2 images: APGD-CE draws its random start on the subset still correct)
        assert row[f"{name}_accuracy"] <= white[("apgd", row["epsilon"])][f"{name}_accuracy"] + 2 / 30 + 1e-9
    if row["setting"] == "white_box" and row["attack"] == "jsma":
      assert row["attack_success_rate"] > 0.5
  for attack in ATTACKS:
    assert any(f"] {attack}" in line for line in lines), attack


def test_html_report_opens_without_network(evaluated):
  root, _, _ = evaluated
  with open(os.path.join(root, "evaluation", "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
  references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.I)
  assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
  assert "http://" not in page and "https://" not in page
  assert "<script" not in page.lower() and "<link" not in page.lower()
  for title in ("White-box", "Transfer", "Clean accuracy", "LAD sweep", "source and target", "Examples",
                "Gradient-masking checks", "fixed set: original's examples", "clean control",
                "(image, target) pairs"):
    assert html.escape(title) in page, title
  # targeted rows show their distinct images and their pairs apart: JSMA, 10 images, 20 pairs
  assert re.search(r"<td class='l'>JSMA</td><td>-</td><td>10</td><td>20</td>", page)
  assert re.search(r"<td class='l'>FGSM</td><td>0.1</td><td>30</td><td>-</td>", page)


def test_transfer_rows_come_from_the_black_box_model(evaluated):
  root, report, _ = evaluated
  config = small_config()
  contents = evaluate.load_workdir(root)
  blackbox = load_model(os.path.join(root, "evaluation", "models", "blackbox.keras"))
  assert blackbox.name == "black_cnn" and contents.original.name == "lenet5"
  untargeted, _ = evaluate.select_sources(contents.evaluation, config.n_per_class, config.m_per_class,
                                            10, config.seed)
  x, y = untargeted["x"], untargeted["y"]
  x_bb = evaluate.craft("fgsm", blackbox, x, y, config, eps=0.1)
  x_wb = evaluate.craft("fgsm", contents.original, x, y, config, eps=0.1)
  row = next(r for r in report["rows"] if r["attack"] == "fgsm" and r["setting"] == "transfer"
             and r["epsilon"] == 0.1)
  assert row["original_accuracy"] == pytest.approx(training.accuracy(contents.original, x_bb, y))
  assert row["blackbox_accuracy"] == pytest.approx(training.accuracy(blackbox, x_bb, y))
  # Built from the black-box model's gradients: the sign of its loss gradient, not the original's.
  import tensorflow as tf
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=blackbox(xt)))
  step = np.sign(tape.gradient(loss, xt).numpy())
  free = (x > 0.1) & (x < 0.9) & (step != 0)  # not clipped at 0 or 1
  np.testing.assert_allclose(x_bb[free], x[free] + 0.1 * step[free], atol=1e-5)
  assert np.mean(np.abs(x_bb - x_wb) > 1e-6) > 0.2
  assert row["blackbox_accuracy"] < report["models"]["blackbox"]["clean_accuracy"]


CHECKS = ("eps_sweep", "pgd_vs_fgsm", "unbounded", "zero_gradient", "more_steps", "more_restarts")


def test_sanity_checks_of_each_model_are_in_the_report(evaluated):
  root, report, _ = evaluated
  sanity = report["sanity"]
  assert sanity["n"] == 20 and sanity["eps"] == pytest.approx(0.1)  # digits' eps
  assert set(sanity["models"]) == {"original", "defended"}
  for name, checks in sanity["models"].items():
    for check in CHECKS:
      assert isinstance(checks[check]["passed"], bool), (name, check)
    assert checks["n"] == 20
  # the original is a plain trained LeNet: its gradients reach the input, and eps 1 breaks it
  assert sanity["models"]["original"]["zero_gradient"]["passed"]
  assert sanity["models"]["original"]["unbounded"]["passed"]
  assert read_json(os.path.join(root, "evaluation", "report.json"))["sanity"] == sanity


def test_robust_accuracy_plot_draws_each_models_eps_sweep(evaluated):
  root, report, _ = evaluated
  sweep = report["eps_sweep"]
  # digits' eps 0.1: clean, then 0.5x, 1x, 2x, 4x; PGD with the checks' steps on the checks' images
  assert sweep["eps"] == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.4]) and sweep["dataset_eps"] == pytest.approx(0.1)
  assert (sweep["steps"], sweep["n"]) == (5, 20)
  names = ["original", "defended"] + [f"baseline_{b}" for b in BASELINES]
  assert list(sweep["accuracy"]) == names
  for name in ("original", "defended"):  # the gradient-masking checks' own figures
    checks = report["sanity"]["models"][name]
    own = [checks["clean_accuracy"]] + list(checks["eps_sweep"]["accuracy"].values())
    assert sweep["accuracy"][name] == pytest.approx(own)
  # a control's curve: its own white-box PGD accuracy on the same images
  from lad_tf.evaluation import sanity
  config = small_config()
  contents = evaluate.load_workdir(root)
  x, y = evaluate.sanity_images(contents.evaluation, 10, config)
  control = load_model(os.path.join(root, "evaluation", "models", "baseline_clean.keras"))
  want = [training.accuracy(control, x, y)]
  want += list(sanity.accuracy_against_eps(control, x, y, 0.1, 5, config.seed).values())
  assert sweep["accuracy"]["baseline_clean"] == pytest.approx(want)
  assert want[-1] < want[0] - 0.3  # attacked itself, the control falls with eps
  # the plot: one curve of five points per model, written next to report.json
  from lad_tf.evaluation import figures, report_tables
  fig = figures.robust_accuracy_figure(report)
  curves = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
  for name in names:
    line = curves[report_tables.model_label(name)]
    assert list(line.get_xdata()) == pytest.approx(sweep["eps"])
    assert list(line.get_ydata()) == pytest.approx(sweep["accuracy"][name])
  path = os.path.join(root, "evaluation", "robust_accuracy.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 10000


def test_the_html_report_and_docs_results_name_models_and_checks_alike():
  """One naming for report.html, its plots and docs/RESULTS.md (lad_tf.evaluation.report_tables)."""
  from lad_tf.evaluation import report_tables
  names = ("original", "defended", "baseline_clean", "baseline_fgsm", "blackbox")
  assert [report_tables.model_label(n) for n in names] == [
      "original", "LAD-defended", "clean control", "FT on FGSM", "blackbox"]
  sanity = {"passed": False, "models": {"baseline_pgd": {"nonzero_gradient": {"passed": False, "detail": "0.0"},
                                                         "note": "not a check"}}}
  assert report_tables.sanity_rows(sanity) == [("FT on PGD", "nonzero_gradient", False, "0.0")]
  assert report_tables.sanity_status(sanity).startswith("some FAILED")


def test_a_failed_sanity_check_warns_by_name(evaluated, caplog):
  import tensorflow as tf
  root, _, _ = evaluated
  contents = evaluate.load_workdir(root)
  masked = lambda z: contents.original(tf.stop_gradient(z) + 0.0 * z)  # same logits, zero input gradient
  config = small_config(sanity_n=10)
  lines = []
  with caplog.at_level("WARNING", logger="lad_tf"):
    result = evaluate.sanity_checks({"original": contents.original, "defended": masked}, contents.evaluation,
                                      0.1, 10, config, lines.append)
  assert not result["passed"] and not result["models"]["defended"]["zero_gradient"]["passed"]
  assert result["models"]["original"]["zero_gradient"]["passed"]
  assert any("'zero_gradient' failed on the defended model" in r.getMessage() for r in caplog.records)
  assert any("WARNING" in line and "zero_gradient" in line for line in lines)


def test_apgd_transfer_rows_use_the_highest_loss_iterate(evaluated):
  root, report, _ = evaluated
  config = small_config()
  contents = evaluate.load_workdir(root)
  blackbox = load_model(os.path.join(root, "evaluation", "models", "blackbox.keras"))
  untargeted, _ = evaluate.select_sources(contents.evaluation, config.n_per_class, config.m_per_class,
                                            10, config.seed)
  x, y = untargeted["x"], untargeted["y"]
  from lad_tf import attacks
  highest = attacks.apgd(blackbox, x, y, 0.1, n_iter=config.apgd_iter, seed=config.seed,
                         return_highest_loss=True)
  np.testing.assert_allclose(evaluate.craft("apgd", blackbox, x, y, config, eps=0.1, transfer=True), highest, atol=1e-6)
  row = next(r for r in report["rows"] if r["attack"] == "apgd" and r["setting"] == "transfer"
             and r["epsilon"] == 0.1)
  assert row["original_accuracy"] == pytest.approx(training.accuracy(contents.original, highest, y))
  assert row["blackbox_accuracy"] == pytest.approx(training.accuracy(blackbox, highest, y))


def _copy(evaluated, tmp_path):
  """A copy of the evaluated work directory, for tests that write their own report.json."""
  import shutil
  root = str(tmp_path / "copy")
  shutil.copytree(evaluated[0], root)
  return root


def test_each_column_scores_its_own_model(evaluated):
  root, report, _ = evaluated
  config = small_config()
  contents = evaluate.load_workdir(root)
  untargeted, _ = evaluate.select_sources(contents.evaluation, config.n_per_class, config.m_per_class,
                                            10, config.seed)
  x, y = untargeted["x"], untargeted["y"]
  row = next(r for r in report["rows"] if r["attack"] == "fgsm" and r["setting"] == "white_box"
             and r["epsilon"] == 0.1)
  on_original = evaluate.craft("fgsm", contents.original, x, y, config, eps=0.1)
  on_defended = evaluate.craft("fgsm", contents.defended, x, y, config, eps=0.1)
  want = {"original_accuracy": training.accuracy(contents.original, on_original, y),
          "defended_accuracy": training.accuracy(contents.defended, on_defended, y),
          "defended_accuracy_fixed_set": training.accuracy(contents.defended, on_original, y)}
  assert {k: row[k] for k in want} == pytest.approx(want)
  # the fixture's two models differ, so a swapped column would not match
  assert want["defended_accuracy"] != pytest.approx(training.accuracy(contents.original, on_defended, y))
  assert report["clean"]["defended"] != report["clean"]["original"]


def test_clean_control_is_fine_tuned_as_the_defence_and_scored_on_lads_images(evaluated):
  root, report, _ = evaluated
  config = small_config()
  contents = evaluate.load_workdir(root)
  control = load_model(os.path.join(root, "evaluation", "models", "baseline_clean.keras"))
  # its own model: fine-tuned (weights moved off the original's), clean accuracy measured on it
  moved = [np.max(np.abs(a - b)) for a, b in zip(control.get_weights(), contents.original.get_weights())]
  assert max(moved) > 0
  assert report["clean"]["baseline_clean"] == pytest.approx(
      training.accuracy(control, contents.evaluation.x, contents.evaluation.y))
  assert report["models"]["baseline_clean"]["fine_tuned_on"] == len(contents.lad_rows)
  # trained on the LAD rows' clean sources, with the defence's epochs and seed (config.json)
  from lad_tf.evaluation import baselines
  x, x_adv, y = baselines.clean_control_examples(contents)
  index = contents.generated.index[contents.lad_rows]
  np.testing.assert_array_equal(x_adv, contents.calibration.x[index])
  np.testing.assert_array_equal(x, x_adv)
  np.testing.assert_array_equal(y, contents.calibration.y[index])
  tune = baselines.defence_fine_tune_config(baselines.fine_tune_config(
      dataclasses.replace(config, fine_tune_epochs=7, seed=5), contents.run_config), contents.run_config)
  assert (tune.epochs, tune.execution.seed) == (1, 0)
  # its fixed-set accuracy is on exactly the images the defended model's is: the original's examples
  untargeted, targeted = evaluate.select_sources(contents.evaluation, config.n_per_class, config.m_per_class,
                                                   10, config.seed)
  on_original = evaluate.craft("fgsm", contents.original, untargeted["x"], untargeted["y"], config, eps=0.1)
  row = next(r for r in report["rows"] if r["attack"] == "fgsm" and r["setting"] == "white_box"
             and r["epsilon"] == 0.1)
  assert row["baseline_clean_accuracy_fixed_set"] == pytest.approx(
      training.accuracy(control, on_original, untargeted["y"]))
  assert row["defended_accuracy_fixed_set"] == pytest.approx(
      training.accuracy(contents.defended, on_original, untargeted["y"]))


def test_rerun_reuses_the_cached_models_and_attacks_baselines(evaluated, tmp_path):
  root = _copy(evaluated, tmp_path)
  # every model of the table is attacked white-box by default (the adaptive protocol)
  assert evaluate.EvalConfig().attack_baselines
  config = small_config(attacks=("fgsm",), baselines=("fgsm", "clean"), attack_baselines=True, lad_sweep=False,
                        epsilons=(0.1,))
  report = evaluate.evaluate_workdir(root, config, progress=lambda _: None)
  assert report["models"]["blackbox"]["reused"] and report["models"]["baseline_fgsm"]["reused"]
  assert report["models"]["baseline_clean"]["reused"]
  white = next(r for r in report["rows"] if r["setting"] == "white_box")
  # each baseline attacked itself: its column is its accuracy on its own FGSM examples
  contents = evaluate.load_workdir(root)
  untargeted, _ = evaluate.select_sources(contents.evaluation, config.n_per_class, config.m_per_class,
                                            10, config.seed)
  for name in ("baseline_fgsm", "baseline_clean"):
    baseline = load_model(os.path.join(root, "evaluation", "models", f"{name}.keras"))
    own = evaluate.craft("fgsm", baseline, untargeted["x"], untargeted["y"], config, eps=0.1)
    assert white[f"{name}_accuracy"] == pytest.approx(training.accuracy(baseline, own, untargeted["y"]))


def test_select_sources_shapes():
  split = datasets.Split(np.zeros((40, 2, 2, 1), np.float32), np.repeat(np.arange(4), 10))
  untargeted, targeted = evaluate.select_sources(split, 3, 2, 4, seed=0, targets_per_image=None)
  assert len(untargeted["y"]) == 12 and np.all(np.bincount(untargeted["y"]) == 3)
  assert len(targeted["y"]) == 2 * 4 * 3  # the paper's protocol: every image towards every other class
  assert np.all(targeted["target"] != targeted["y"])
  for image in np.unique(targeted["image"]):
    rows = targeted["image"] == image
    assert sorted(targeted["target"][rows]) == [c for c in range(4) if c != targeted["y"][rows][0]]
  _, two = evaluate.select_sources(split, 3, 2, 4, seed=0, targets_per_image=2)
  assert len(two["y"]) == 16 and np.all(two["target"] != two["y"])
  assert all(len(set(two["target"][two["image"] == i])) == 2 for i in range(8))  # no repeated target
  with pytest.raises(ValueError, match="targets_per_image must be between 1 and 3"):
    evaluate.select_sources(split, 3, 2, 4, targets_per_image=4)


def test_default_targeted_rows_attack_500_distinct_images_in_as_many_pairs():
  # Fashion-MNIST's evaluation split: 10,000 test images less 50 calibration images per class
  n_eval, classes = 9500, 10
  labels = np.repeat(np.arange(classes), n_eval // classes)
  images = np.arange(n_eval, dtype=np.float32).reshape(-1, 1, 1, 1)  # each image tells its index
  config = evaluate.EvalConfig()
  _, targeted = evaluate.select_sources(datasets.Split(images, labels), config.n_per_class, config.m_per_class,
                                          classes, config.seed, config.targets_per_image)
  distinct = np.unique(targeted["x"].reshape(-1))
  assert len(distinct) >= 500
  assert evaluate.source_counts(targeted) == {"n_images": len(distinct), "n_pairs": len(targeted["y"])}
  # one target per image: no more pairs (attack time) than the 450 of the former 5 x 9 default
  assert len(targeted["y"]) == len(distinct) <= 520
  np.testing.assert_array_equal(labels[targeted["x"].reshape(-1).astype(int)], targeted["y"])
  assert np.all(targeted["target"] != targeted["y"])
  # the targets of each source class spread over all the other classes (50 images: 5 or 6 each)
  pairs = np.zeros((classes, classes), int)
  np.add.at(pairs, (targeted["y"], targeted["target"]), 1)
  off_diagonal = pairs[~np.eye(classes, dtype=bool)]
  assert off_diagonal.min() >= 5 and off_diagonal.max() <= 6


def test_missing_workdir_pieces_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.load_workdir(str(tmp_path))
  with pytest.raises(ValueError, match="unknown attacks"):
    evaluate.EvalConfig(attacks=("fgsm", "deepfool"))


def test_command_line(evaluated, tmp_path):
  root = _copy(evaluated, tmp_path)
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "pipelines.evaluate", f"--workdir={root}", "--attacks=fgsm",
       "--baselines=", "--transfer=false", "--lad_sweep=false", "--n_per_class=2", "--m_per_class=1",
       "--eps=0.2", "--sanity_n=10"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "report:" in result.stdout
  report = read_json(os.path.join(root, "evaluation", "report.json"))
  assert [(r["attack"], r["setting"], r["epsilon"]) for r in report["rows"]] == [("fgsm", "white_box", 0.2)]
  assert report["sanity"]["n"] == 10 and set(report["sanity"]["models"]) == {"original", "defended"}
