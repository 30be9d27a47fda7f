"""The paper's robustness protocol (Section IV-D) over a work directory.

Rows (one per attack, setting and eps; see `Row` keys in `attack_rows`):
- white_box ("known" attacks): each attack gets the full model it is scored on. Untargeted FGSM,
  PGD, APGD-CE and AutoAttack (version: EvalConfig.attack_options["autoattack"]) run on
  `n_per_class` evaluation images per class at every eps of `epsilons` (default: the paper's 0.3 as
  printed, plus the field's usual eps of the dataset, DatasetSpec.attack_eps); targeted JSMA and
  CW-L2 run on `m_per_class` images per class (50: 500 distinct images where the split has them),
  each towards `targets_per_image` other classes (default 1, spread evenly over the other classes;
  None: every other class, the paper's 50 per class x 9 = 4,500 pairs). Every row reports `n` (the
  attacked examples), `n_images` (distinct source images) and `n_pairs` ((image, target) pairs of
  targeted rows; None for untargeted ones).
  `original_accuracy` is the original classifier on its own adversarial examples.
  `defended_accuracy` is the LAD-defended classifier on adversarial examples crafted against the
  defended classifier itself (an adaptive white-box attack: the honest figure), and
  `defended_accuracy_fixed_set` the defended classifier on the original's adversarial examples
  (the paper's Table II protocol, where the attacked set is fixed). Baselines likewise:
  `baseline_<name>_accuracy_fixed_set` always, `baseline_<name>_accuracy` (attacked themselves)
  with EvalConfig.attack_baselines (the default; None without it).
- transfer ("unknown" attacks): a differently built classifier (DatasetSpec.blackbox, "black_cnn"),
  trained independently on the training split, is attacked; its adversarial examples are fed to
  the original, the defended and the baseline classifiers (Table III). APGD returns its highest-loss
  iterate there (protocol.TRANSFER_OPTIONS), not the first misclassified one.
GA (EvalConfig.attacks containing "ga", after `python -m pipelines.train_acgan --workdir=DIR`;
lad_tf.evaluation.sweeps.ga_rows): a white-box row (GA against the original, every other model scored on its
examples, the defended model and, with attack_baselines, each baseline attacked itself; accuracies
over the tries) and a transfer row (the black-box model's kept GA examples), both with the
fine-tuned-on-GA baseline `baseline_ga` among the models.
Baselines (Tables IV, VII, X): the original classifier fine-tuned with the same Eq. 4 trainer
(lad_tf.lad.fine_tuning.fine_tune) on FGSM, PGD, JSMA and CW examples crafted against it from the same
calibration sources, as many as the LAD fine-tuning set has (JSMA / CW towards LAD's targets); and the
control `baseline_clean`: the original fine-tuned exactly as the defence was (its epochs, seed and
rows) on x' = x, so a gain the control shares is fine-tuning's, not LAD's.
LAD sweep (Fig. 7): one FT-eps model per eps of generated.npz, fine-tuned on the LAD examples of half
the calibration sources; clean accuracy, and accuracy on the LAD examples of the other half.
Accuracies count the source (true) label as correct, for targeted attacks too; every accuracy is
measured on the evaluation part of the test split (calibration examples excluded).
Sanity ("sanity"): lad_tf.evaluation.sanity's gradient-masking checks of the original and the defended model on
EvalConfig.sanity_n evaluation images at the dataset's eps; a failed check is logged as a warning.
Eps sweep ("eps_sweep", protocol.eps_sweep): every model's white-box PGD accuracy (attacked itself)
on those images at eps 0, 0.5x, 1x, 2x and 4x the dataset's eps, drawn by
lad_tf.evaluation.figures.robust_accuracy into DIR/evaluation/robust_accuracy.png and the HTML report.
"""
import dataclasses
import logging
import os
import time

import numpy as np

from lad_tf.data import datasets
from lad_tf.evaluation import baselines, figures, sweeps
from lad_tf.lad import fine_tuning
from lad_tf.evaluation.protocol import (ATTACK_NAMES, ATTACK_OPTIONS, BASELINES, LATENT_ATTACKS, PAPER_EPS,  # noqa: F401
                             EvalConfig, attack_rows, craft, eps_sweep, sanity_checks, sanity_images, select_sources,
                             source_counts)
from lad_tf.runtime.training import accuracy
from lad_tf.run.workdir import WorkDir

log = logging.getLogger("lad_tf")


@dataclasses.dataclass
class WorkdirContents:
  spec: datasets.DatasetSpec
  data: datasets.Dataset
  calibration: datasets.Split
  evaluation: datasets.Split
  original: object
  defended: object
  generated: object       # lad_tf.lad.generation.GeneratedSet; None after a robust defence
  run_config: dict        # DIR/config.json ("full" holds the defend settings)
  lad_rows: np.ndarray    # rows of generated.npz the defended model was fine-tuned on


def load_workdir(workdir):
  """Reads what the evaluation needs from a defend work directory through lad_tf.run.workdir.WorkDir
  (the reader the pipeline uses): the same errors for the same missing or inconsistent files."""
  work = WorkDir(workdir)
  run_config = work.run_config()
  for key in ("dataset", "calibration_per_class", "seed"):
    if key not in run_config:
      raise ValueError(f"{work.path('config.json')} has no '{key}': cannot rebuild the calibration split")
  spec = datasets.get_spec(run_config["dataset"])
  data = datasets.load(spec, data_dir=run_config.get("data_dir"))
  calibration, evaluation = datasets.calibration_split(data.test, int(run_config["calibration_per_class"]),
                                                       int(run_config["seed"]))
  full = run_config.get("full", {}) or {}
  if not work.done("generation"):  # a robust defence trained on the training split: no generated set
    generated, lad_rows = None, np.arange(0)
  else:
    generated = work.generated(len(calibration))
    mode = full.get("fine_tune_mode", "mix")
    if mode == "on_the_fly":  # fine-tuned on fresh training examples: every row is held out alike
      lad_rows = np.arange(len(generated))
    else:
      lad_rows = fine_tuning.fine_tuning_rows(generated, mode, full.get("fine_tune_eps") or np.unique(generated.eps))
  return WorkdirContents(spec, data, calibration, evaluation, work.model("classifier"), work.model("defended"),
                         generated, run_config, lad_rows)


def _nan_to_none(value):
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  return value


def evaluate_workdir(workdir, config=None, progress=None):
  """Runs the protocol on a defend work directory; writes DIR/evaluation/report.{json,html}.

  Args:
    workdir: the work directory of `python -m pipelines.defend` (classifier/, defended/,
      generation/generated.npz, config.json).
    config: EvalConfig (None: the defaults).
    progress: callable(str) for progress lines (default: the "lad_tf" logger at INFO).
  Returns:
    The report as written to report.json (dict with "rows", "clean", "models", "lad_sweep", "sanity"
    (the gradient-masking checks of the original and the defended model), "eps_sweep" (every model's
    accuracy against eps), ...).
  """
  from lad_tf.evaluation import report as report_lib
  config = config or EvalConfig()
  say = progress or log.info
  started = time.time()
  work = WorkDir(workdir)
  if "ga" in config.attacks and os.path.exists(work.path("config.json")):
    from lad_tf.models.acgan import ACGAN
    ACGAN.files(workdir)  # fail now, not after the other attacks
  contents = load_workdir(workdir)
  spec = contents.spec
  eps = config.epsilons if config.epsilons is not None else (PAPER_EPS, spec.attack_eps)
  config = dataclasses.replace(config, epsilons=tuple(sorted({round(float(e), 6) for e in eps})))
  out_dir = os.path.join(workdir, "evaluation")
  tune = baselines.fine_tune_config(config, contents.run_config)
  if contents.generated is None:
    say(f"evaluate: the {contents.run_config.get('full', {}).get('defence', 'robust')} defence trained on the "
        f"training split and made no LAD set: LAD's rows (the LAD sweep, the Eq. 4 baselines and control, "
        f"GA's fine-tuned baseline) are skipped")
    config = dataclasses.replace(config, baselines=(), lad_sweep=False,
                                 attacks=tuple(a for a in config.attacks if a != "ga"))
  say(f"evaluate: {spec.name}, {len(contents.evaluation)} evaluation examples, attacks "
      f"{', '.join(config.attacks)}, eps {', '.join(f'{e:g}' for e in config.epsilons)}")
  models = _Models(work, contents, config, tune, say)

  start = time.time()
  sanity = sanity_checks(models.attacked, contents.evaluation, spec.attack_eps, spec.num_classes, config, progress)
  sweep_of_eps = eps_sweep(models.attacked, contents.evaluation, spec.attack_eps, spec.num_classes, config,
                           sanity, say)
  models.timings["sanity"] = time.time() - start
  rows, examples, sources = _attack_rows(workdir, contents, models, config, tune, say)
  sweep = []
  if config.lad_sweep:
    start = time.time()
    sweep = sweeps.lad_sweep(work, contents, config, tune, say)
    models.timings["lad_sweep"] = time.time() - start
  generation_summary, lad_examples = (sweeps.lad_generation_summary(contents.generated, spec.num_classes)
                                      if contents.generated is not None else ({}, None))
  models.timings["total"] = time.time() - started

  report = _nan_to_none({
      "dataset": spec.name,
      "class_names": list(spec.class_names),
      "workdir": os.path.abspath(workdir),
      "created": time.strftime("%Y-%m-%d %H:%M:%S"),
      "config": {**dataclasses.asdict(config), "fine_tune": dataclasses.asdict(tune),
                 "baseline_eps": models.baseline_eps},
      "n": {"untargeted": int(len(sources[0]["y"])), "targeted": int(len(sources[1]["y"])),
            "targeted_images": source_counts(sources[1])["n_images"],
            "targeted_pairs": source_counts(sources[1])["n_pairs"],
            "evaluation_split": int(len(contents.evaluation))},
      "models": models.info,
      "clean": models.clean,
      "rows": rows,
      "lad_sweep": sweep,
      "sanity": sanity,
      "eps_sweep": sweep_of_eps,
      "lad_generation": generation_summary,
      "timings_s": models.timings,
      "notes": NOTES,
  })
  report_lib.write_report(out_dir, report, examples=examples, lad_examples=lad_examples)
  if report["eps_sweep"]:
    figures.robust_accuracy(os.path.join(out_dir, "robust_accuracy.png"), report)
  say(f"evaluate: report written to {out_dir}/report.json and report.html "
      f"({models.timings['total']:.0f} s)")
  return report


class _Models:
  """The models the evaluation attacks (original, defended, the baselines and the control), the
  black-box model of the transfer rows, and each one's clean accuracy."""

  def __init__(self, work, contents, config, tune, say):
    spec = contents.spec
    self.attacked = {"original": contents.original, "defended": contents.defended}
    self.info = {"original": {}, "defended": {"fine_tuned_on": int(len(contents.lad_rows))}}
    self.baseline_eps = config.baseline_eps if config.baseline_eps is not None else spec.attack_eps
    trained, info, self.timings = baselines.train_baselines(work, contents, config, tune, self.baseline_eps, say)
    self.attacked.update(trained)
    self.info.update(info)
    self.blackbox = None
    if config.transfer:
      start = time.time()
      self.blackbox, self.info["blackbox"] = baselines.blackbox_model(work, contents, config, say)
      self.timings["blackbox"] = time.time() - start
    self.clean = {}
    for name, model in self.attacked.items():
      self.clean[name] = accuracy(model, contents.evaluation.x, contents.evaluation.y)
      self.info[name]["clean_accuracy"] = self.clean[name]
    say("evaluate: clean accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in self.clean.items()))


def _attack_rows(workdir, contents, models, config, tune, say):
  """The attack rows (image attacks on every model, white-box and transfer; GA's when asked), the
  examples the report shows, and the attacked sources."""
  spec = contents.spec
  start = time.time()
  sources = select_sources(contents.evaluation, config.n_per_class, config.m_per_class, spec.num_classes,
                           config.seed, config.targets_per_image)
  image_attacks = tuple(a for a in config.attacks if a not in LATENT_ATTACKS)
  rows, examples = attack_rows(models.attacked, sources, dataclasses.replace(config, attacks=image_attacks),
                               models.blackbox, say)
  models.timings["attacks"] = time.time() - start
  if "ga" in config.attacks:
    start = time.time()
    from lad_tf.models.acgan import ACGAN
    ga_result = sweeps.ga_rows(ACGAN.load(workdir), contents, models.attacked, models.blackbox, config, tune, say)
    rows.extend(ga_result["rows"])
    models.clean["baseline_ga"] = ga_result["baseline_clean_accuracy"]
    models.info["baseline_ga"] = ga_result["baseline"]
    models.timings["ga"] = time.time() - start
  return rows, examples, sources


NOTES = [
    "Accuracies are on the evaluation part of the test split (calibration examples excluded); for "
    "targeted attacks (JSMA, CW) the source label counts as correct.",
    "white_box: defended_accuracy / baseline_*_accuracy attack that model itself (adaptive: the honest "
    "figure); *_accuracy_fixed_set score it on the original classifier's adversarial examples (the "
    "paper's Table II fixed-set protocol).",
    "baseline_clean is the control: the original fine-tuned exactly as the defence was, on the clean "
    "images (x' = x); a fixed-set gain it shares comes from fine-tuning, not from LAD's examples.",
    "ga (when run): white_box counts a GA try as broken for a model when the AC-GAN's auxiliary classifier "
    "still reads the source class and the model says otherwise (accuracy over the tries; n = tries); the "
    "ga transfer row scores the black-box model's kept GA examples (n = kept) against their source class.",
    "n_images counts distinct source images, n_pairs the (image, target) pairs of targeted rows.",
    "transfer: adversarial examples crafted on an independently trained black-box model of another "
    "architecture, fed to every model (the paper's Table III).",
    "epsilon 0.3 is the paper's value as printed; the dataset's usual eps gives the extra rows.",
    "attack_success_rate is on the model the examples were crafted on (reaching the target, or "
    "flipping a correctly classified image); mean_l2 / mean_l0 are over the successful examples.",
    "LAD sweep: FT-eps models are fine-tuned on half the calibration sources; LAD accuracies are on "
    "the other half. The defended model was fine-tuned on all calibration sources, so its LAD "
    "accuracy at its own eps is not held out (defended_trained_on_this_eps).",
]
