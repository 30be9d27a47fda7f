"""The robustness protocol's attacks and rows (Section IV-D): which examples are attacked, how each
registered attack is called with the EvalConfig's settings, and the white-box and transfer rows.

Attacks come from the registry (lad_tf.attacks.get): every attack the registry knows can run, with
EvalConfig's settings (ATTACK_OPTIONS) plus EvalConfig.attack_options. See lad_tf.run.evaluate for the
row keys and the whole protocol.
"""
import dataclasses
import logging
import time
from typing import Dict, Optional, Tuple

import numpy as np

from lad_tf import attacks as attacks_lib
from lad_tf.data import datasets
from lad_tf.errors import ConfigError
from lad_tf.runtime.training import accuracy

log = logging.getLogger("lad_tf")

ATTACK_NAMES = ("fgsm", "pgd", "jsma", "cw", "apgd", "autoattack")  # the default protocol; any registered attack runs
BASELINES = ("fgsm", "pgd", "jsma", "cw", "clean")  # clean: the control, fine-tuned on x' = x
# GA starts from an AC-GAN's noise, not from images: it needs `python -m pipelines.train_acgan
# --workdir=DIR` first and gives a white-box and a transfer row plus the "fine-tuned on GA" baseline
# (lad_tf.evaluation.sweeps.ga_rows).
LATENT_ATTACKS = ("ga",)
PAPER_EPS = 0.3


@dataclasses.dataclass
class EvalConfig:
  """What `evaluate_workdir` runs. Defaults are sized for 2 CPU cores (minutes, not hours)."""
  attacks: Tuple[str, ...] = ATTACK_NAMES
  n_per_class: int = 50            # untargeted sources per class (the paper: 450)
  m_per_class: int = 50            # targeted source images per class (the paper: 50)
  targets_per_image: Optional[int] = 1  # targets per targeted source (None: every other class, the
                                        # paper's m x C x (C - 1) pairs; 1: as many pairs as images)
  epsilons: Optional[Tuple[float, ...]] = None  # None: (0.3 as printed in the paper, spec.attack_eps)
  transfer: bool = True
  blackbox_epochs: int = 3
  blackbox_train_examples: Optional[int] = 10000  # stratified subset of the train split (None: all)
  blackbox_batch_size: Optional[int] = None      # None: the spec's classifier batch size
  baselines: Tuple[str, ...] = BASELINES
  baseline_eps: Optional[float] = None   # eps of the FGSM / PGD fine-tuning examples (None: spec's)
  attack_baselines: bool = True          # attack each baseline white-box too (adaptive); False: only
                                         # the fixed-set columns for baselines (cheaper, weaker)
  lad_sweep: bool = True
  sweep_eps: Optional[Tuple[float, ...]] = None  # None: every eps in generated.npz
  fine_tune_epochs: Optional[int] = None  # None: as the defended model (config.json), else 10
  pgd_iter: int = 40
  apgd_iter: int = 100
  apgd_restarts: int = 1
  jsma_theta: float = 1.0
  jsma_gamma: float = 0.1
  cw_binary_steps: int = 4
  cw_iterations: int = 30
  cw_learning_rate: float = 0.1
  cw_initial_const: float = 0.01
  examples_per_attack: int = 8
  ga_per_class: int = 50           # GA tries per source class (the paper: 450)
  ga_steps: int = 1000             # latent-search steps per try (Song et al.: 1000)
  attack_options: Dict[str, dict] = dataclasses.field(default_factory=dict)  # name -> extra kwargs
  sanity_n: int = 200              # images of the gradient-masking checks and the eps sweep (0: skip both)
  sanity_options: Dict[str, object] = dataclasses.field(default_factory=dict)  # gradient_masking_checks kwargs
  seed: int = 0

  def __post_init__(self):
    unknown = sorted(set(self.attacks) - set(attacks_lib.REGISTRY) - set(LATENT_ATTACKS))
    if unknown:
      raise ConfigError(f"unknown attacks {unknown}; known: "
                       f"{', '.join(sorted(attacks_lib.REGISTRY) + list(LATENT_ATTACKS))}")
    unknown = sorted(set(self.baselines) - set(BASELINES))
    if unknown:
      raise ConfigError(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
    if self.n_per_class < 1 or self.m_per_class < 1:
      raise ConfigError("n_per_class and m_per_class must be >= 1")
    if self.targets_per_image is not None and self.targets_per_image < 1:
      raise ConfigError(f"targets_per_image must be >= 1 (None: every other class), got {self.targets_per_image}")
    if self.sanity_n < 0:
      raise ConfigError(f"sanity_n must be >= 0 (0 skips the gradient-masking checks), got {self.sanity_n}")


# -- sources and attacks -------------------------------------------------------------------------

def select_sources(split, n_per_class, m_per_class, num_classes, seed=0, targets_per_image=1):
  """Attack sources drawn from `split` (the evaluation part of the test set).

  Returns (untargeted, targeted): untargeted = dict(x, y) with n_per_class images per class;
  targeted = dict(x, y, target, image) with m_per_class images per class (fewer where the split has
  fewer), each towards `targets_per_image` other classes (None: every other class). Targets are
  drawn without repeats per image and spread evenly over the other classes within each source class;
  `image` is the row's source image in the targeted set (0 .. distinct images - 1), so the number of
  distinct images and of (image, target) pairs can be told apart.
  """
  k = num_classes - 1 if targets_per_image is None else int(targets_per_image)
  if not 1 <= k <= num_classes - 1:
    raise ConfigError(f"targets_per_image must be between 1 and {num_classes - 1} (the other classes) "
                      f"for {num_classes} classes, got {targets_per_image}")
  u = datasets.stratified_indices(split.y, n_per_class, seed)
  t = datasets.stratified_indices(split.y, m_per_class, seed + 1)
  ys = split.y[t]
  rng = np.random.default_rng(seed + 1)
  offsets = np.zeros((len(t), k), np.int64)  # target = (label + offset) % C, offset in 1 .. C - 1
  for label in np.unique(ys):
    rows = np.flatnonzero(ys == label)
    # each image takes k consecutive offsets of one shuffled cycle through 1 .. C - 1: every other
    # class is a target about equally often, and no image gets the same target twice
    cycle = rng.permutation(np.arange(1, num_classes))
    start = rng.integers(num_classes - 1)
    for j, row in enumerate(rows):
      offsets[row] = cycle[(start + j * k + np.arange(k)) % (num_classes - 1)]
  targets = (ys[:, None] + offsets) % num_classes
  rows = np.repeat(np.arange(len(t)), k)
  return ({"x": split.x[u], "y": split.y[u]},
          {"x": split.x[t][rows], "y": ys[rows], "target": targets.reshape(-1), "image": rows})


def source_counts(src):
  """Distinct source images and attacked (image, target) pairs of a source set (pairs: None when
  untargeted)."""
  if "target" not in src:
    return {"n_images": int(len(src["y"])), "n_pairs": None}
  return {"n_images": int(len(np.unique(src["image"]))), "n_pairs": int(len(src["y"]))}


# EvalConfig's settings of each registered attack (an attack missing here runs with its defaults;
# EvalConfig.attack_options adds or overrides keyword arguments by attack name)
ATTACK_OPTIONS = {
    "pgd": lambda c: {"nb_iter": c.pgd_iter, "seed": c.seed},
    "apgd": lambda c: {"n_iter": c.apgd_iter, "n_restarts": c.apgd_restarts, "seed": c.seed},
    "autoattack": lambda c: {"seed": c.seed},  # version: attack_options["autoattack"] (default "standard")
    "jsma": lambda c: {"theta": c.jsma_theta, "gamma": c.jsma_gamma},
    "cw": lambda c: {"binary_search_steps": c.cw_binary_steps, "max_iterations": c.cw_iterations,
                     "learning_rate": c.cw_learning_rate, "initial_const": c.cw_initial_const},
}


# Extra settings of an attack whose examples are fed to models other than the one it was crafted on
# (the transfer rows): APGD's first misclassified iterate sits on the crafting model's boundary and
# flips back on any other model, its highest-loss iterate does not.
TRANSFER_OPTIONS = {"apgd": {"return_highest_loss": True}}


def is_targeted(attack):
  return attacks_lib.get(attack).targeted


def craft(attack, model, x, y, config, eps=None, target=None, transfer=False):
  """Adversarial examples of the registered `attack` against `model` (images -> logits) with
  config's settings: eps-bounded attacks need eps and use the true labels y; targeted ones need
  target (and use it as their y). transfer=True adds TRANSFER_OPTIONS (examples meant for other
  models)."""
  spec = attacks_lib.get(attack)
  if spec.targeted and target is None:
    raise ValueError(f"{attack} needs target classes")
  options = {**ATTACK_OPTIONS.get(attack, lambda c: {})(config),
             **(TRANSFER_OPTIONS.get(attack, {}) if transfer else {}), **config.attack_options.get(attack, {})}
  return spec(model, x, target if spec.targeted else y, eps if spec.bounded else None, **options)



def white_box_columns(row, models, config, fixed_set, attacked_itself, label, start, say):
  """Fills a white-box row's columns for every model but the original: `fixed_set(name, model)`, its
  accuracy on the original's examples (the paper's protocol), and `attacked_itself(name, model)`, its
  accuracy when the attack targets it (the defended model always; the baselines with
  config.attack_baselines, else None); then the row's seconds since `start`, and progress lines
  through `say`."""
  for name, model in models.items():
    if name == "original":
      continue
    row[f"{name}_accuracy_fixed_set"] = fixed_set(name, model)
    if name == "defended" or config.attack_baselines:
      say(f"evaluate: {label}: white-box on {name}")
      row[f"{name}_accuracy"] = attacked_itself(name, model)
    else:
      row[f"{name}_accuracy"] = None
  row["seconds"] = time.time() - start
  say(f"evaluate: {label.split('] ')[-1]} white-box: original {row['original_accuracy']:.3f}, defended "
      f"{row['defended_accuracy']:.3f} (on the original's examples {row['defended_accuracy_fixed_set']:.3f})")

def attack_stats(model, x, x_adv, y, target):
  """Success of an attack on the model it was crafted on, and the size of its successful
  perturbations: success means reaching the target (targeted) or flipping a correctly classified
  example (untargeted); mean L2 / L0 are over the successful examples (nan if none)."""
  pred = attacks_lib.predict(model, x_adv)
  if target is not None:
    success = pred == target
    rate = float(np.mean(success)) if len(x) else float("nan")
  else:
    correct = attacks_lib.predict(model, x) == y
    success = correct & (pred != y)
    rate = float(np.sum(success) / max(1, np.sum(correct)))
  norms = attacks_lib.perturbation_norms(x, x_adv)
  mean = lambda v: float(np.mean(v[success])) if np.any(success) else float("nan")
  return {"attack_success_rate": rate, "mean_l2": mean(norms["l2"]), "mean_l0": mean(norms["l0"]),
          "max_linf": float(np.max(norms["linf"])) if len(x) else 0.0}


def attack_rows(attacked, sources, config, blackbox=None, progress=None):
  """The white-box and transfer rows of the protocol.

  Args:
    attacked: dict name -> model, with "original" and "defended" first, then baselines
      ("baseline_fgsm", ...); every model returns logits.
    sources: (untargeted, targeted) from select_sources.
    config: EvalConfig (attacks, epsilons must be resolved: a tuple).
    blackbox: the independently trained model the transfer attacks are crafted on (None: none).
    progress: callable(str) for progress lines.
  Returns:
    (rows, examples): rows as described in the module docstring; examples maps attack name to a
    dict of a few clean / adversarial images (white-box, against the original) for the report.
  """
  say = progress or log.info
  untargeted, targeted = sources
  rows, examples = [], {}
  jobs = []
  for attack in config.attacks:
    for eps in (config.epsilons if attacks_lib.get(attack).bounded else (None,)):
      jobs.append((attack, eps))
  for i, (attack, eps) in enumerate(jobs):
    src = targeted if is_targeted(attack) else untargeted
    x, y, target = src["x"], src["y"], src.get("target")
    label = f"{attack}" + (f" eps={eps:g}" if eps is not None else "")
    # White box: each model against its own examples (and the original's, the paper's fixed set).
    start = time.time()
    say(f"evaluate: [{i + 1}/{len(jobs)}] {label}: white-box on original ({len(x)} examples)")
    x_adv = craft(attack, attacked["original"], x, y, config, eps, target)
    row = {"attack": attack, "setting": "white_box", "epsilon": eps, "n": int(len(x)), **source_counts(src),
           "targeted": target is not None,
           "original_accuracy": accuracy(attacked["original"], x_adv, y),
           **attack_stats(attacked["original"], x, x_adv, y, target)}
    if attack not in examples or (eps is not None and eps != PAPER_EPS):
      pick = np.unique(np.linspace(0, len(x) - 1, min(config.examples_per_attack, len(x))).astype(int))
      examples[attack] = {"x": x[pick], "x_adv": x_adv[pick], "y": y[pick],
                          "pred": attacks_lib.predict(attacked["original"], x_adv[pick]),
                          "target": None if target is None else target[pick], "epsilon": eps}
    white_box_columns(row, attacked, config, lambda _, model: accuracy(model, x_adv, y),
                      lambda _, model: accuracy(model, craft(attack, model, x, y, config, eps, target), y),
                      f"[{i + 1}/{len(jobs)}] {label}", start, say)
    rows.append(row)
    # Transfer: the black-box model's examples, fed to every model.
    if blackbox is not None:
      start = time.time()
      say(f"evaluate: [{i + 1}/{len(jobs)}] {label}: transfer from the black-box model")
      x_bb = craft(attack, blackbox, x, y, config, eps, target, transfer=True)
      row = {"attack": attack, "setting": "transfer", "epsilon": eps, "n": int(len(x)), **source_counts(src),
             "targeted": target is not None,
             "blackbox_accuracy": accuracy(blackbox, x_bb, y),
             **attack_stats(blackbox, x, x_bb, y, target)}
      for name, model in attacked.items():
        row[f"{name}_accuracy"] = accuracy(model, x_bb, y)
      row["seconds"] = time.time() - start
      rows.append(row)
      say(f"evaluate: {label} transfer: original {row['original_accuracy']:.3f}, defended "
          f"{row['defended_accuracy']:.3f}")
  return rows, examples


SANITY_MODELS = ("original", "defended")


def sanity_images(split, num_classes, config):
  """The config.sanity_n stratified images (x, y) of the gradient-masking checks and the eps sweep."""
  per_class = max(1, config.sanity_n // num_classes)
  pick = datasets.stratified_indices(split.y, per_class, config.seed + 2)
  return split.x[pick], split.y[pick]


def sanity_checks(attacked, split, eps, num_classes, config, progress=None):
  """The gradient-masking checks (lad_tf.evaluation.sanity.gradient_masking_checks) of the original and the
  defended model on config.sanity_n stratified images of `split` at the dataset's eps; each failed
  check is logged as a warning that names it and the model.

  Returns {"n", "eps", "passed", "models": {name: checks}} for report.json's "sanity" ({} when
  config.sanity_n is 0).
  """
  from lad_tf.evaluation import sanity
  say = progress or log.info
  if config.sanity_n == 0:
    return {}
  x, y = sanity_images(split, num_classes, config)
  results = {}
  for name in SANITY_MODELS:
    if name not in attacked:
      continue
    say(f"evaluate: gradient-masking checks on {name} ({len(x)} images, eps {eps:g})")
    checks = sanity.gradient_masking_checks(attacked[name], x, y, eps, seed=config.seed, warn=False,
                                            **config.sanity_options)
    for check, result in checks.items():
      if isinstance(result, dict) and not result["passed"]:
        log.warning("gradient-masking check '%s' failed on the %s model: %s", check, name, result["detail"])
        if progress is not None:
          say(f"evaluate: WARNING: gradient-masking check '{check}' failed on the {name} model: {result['detail']}")
    results[name] = checks
  return {"n": int(len(x)), "eps": float(eps), "passed": all(r["passed"] for r in results.values()),
          "models": results}


def eps_sweep(attacked, split, eps, num_classes, config, sanity=None, progress=None):
  """White-box PGD accuracy against eps of every model of the table (original, defended, the
  baselines and the clean control), each attacked itself, on the gradient-masking checks' images:
  eps 0 (clean) and sanity.sweep_eps(eps) (0.5x, 1x, 2x, 4x the dataset's eps), with the checks'
  PGD steps. Models the checks ran on (`sanity`, from sanity_checks) reuse their figures.

  Returns {"attack": "pgd", "steps", "n", "dataset_eps", "eps": [...], "accuracy": {name: [...]}} for
  report.json's "eps_sweep" ({} when config.sanity_n is 0).
  """
  from lad_tf.evaluation import sanity as sanity_lib
  say = progress or log.info
  if config.sanity_n == 0:
    return {}
  steps = int(config.sanity_options.get("pgd_steps", sanity_lib.PGD_STEPS))
  batch_size = int(config.sanity_options.get("batch_size", 512))
  x, y = sanity_images(split, num_classes, config)
  checked = (sanity or {}).get("models", {})
  points = sanity_lib.sweep_eps(eps)
  curves = {}
  for name, model in attacked.items():
    if name in checked:
      figures = checked[name]["eps_sweep"]["accuracy"]
      curves[name] = [checked[name]["clean_accuracy"]] + [figures[f"{e:.4g}"] for e in points]
      continue
    say(f"evaluate: accuracy against eps of {name} (PGD-{steps}, {len(x)} images)")
    figures = sanity_lib.accuracy_against_eps(model, x, y, eps, steps, config.seed, batch_size)
    curves[name] = [accuracy(model, x, y)] + list(figures.values())
  return {"attack": "pgd", "steps": steps, "n": int(len(x)), "dataset_eps": float(eps),
          "eps": [0.0] + [float(e) for e in points],
          "accuracy": curves}


def attack_settings(config):
  keys = ("pgd_iter", "apgd_iter", "apgd_restarts", "jsma_theta", "jsma_gamma", "cw_binary_steps",
          "cw_iterations", "cw_learning_rate", "cw_initial_const", "seed")
  return {k: getattr(config, k) for k in keys}
