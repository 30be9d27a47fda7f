"""The paper's robustness protocol (Section IV-D) over a work directory.

Rows (one per attack, setting and eps; see `Row` keys in `attack_rows`):
- white_box ("known" attacks): each attack gets the full model it is scored on. Untargeted FGSM,
  PGD and APGD-CE run on `n_per_class` evaluation images per class at every eps of `epsilons`
  (default: the paper's 0.3 as printed, plus the field's usual eps of the dataset,
  DatasetSpec.attack_eps); targeted JSMA and CW-L2 run on `m_per_class` images per class, each
  towards every other class (the paper: 50 per class x 9 = 4,500).
  `original_accuracy` is the original classifier on its own adversarial examples.
  `defended_accuracy` is the LAD-defended classifier on adversarial examples crafted against the
  defended classifier itself (an adaptive white-box attack: the honest figure), and
  `defended_accuracy_fixed_set` the defended classifier on the original's adversarial examples
  (the paper's Table II protocol, where the attacked set is fixed). Baselines likewise:
  `baseline_<name>_accuracy_fixed_set` always, `baseline_<name>_accuracy` (attacked themselves)
  with EvalConfig.attack_baselines (None otherwise).
- transfer ("unknown" attacks): a differently built classifier (DatasetSpec.blackbox, "black_cnn"),
  trained independently on the training split, is attacked; its adversarial examples are fed to
  the original, the defended and the baseline classifiers (Table III).
Baselines (Tables IV, VII, X): the original classifier fine-tuned with the same Eq. 4 trainer
(lad_tf.defence.fine_tune) on FGSM, PGD, JSMA and CW examples crafted against it from the same
calibration sources, as many as the LAD fine-tuning set has (JSMA / CW towards LAD's targets).
LAD sweep (Fig. 7): one FT-eps model per eps of generated.npz, fine-tuned on the LAD examples of half
the calibration sources; clean accuracy, and accuracy on the LAD examples of the other half.
Accuracies count the source (true) label as correct, for targeted attacks too; every accuracy is
measured on the evaluation part of the test split (calibration examples excluded).
"""
import dataclasses
import json
import logging
import os
import time
from typing import Optional, Tuple

import numpy as np

from lad_tf import attacks as attacks_lib
from lad_tf import datasets
from lad_tf.errors import ArtifactNotFoundError, ConfigError
from lad_tf.workdir import read_json

log = logging.getLogger("lad_tf")

ATTACK_NAMES = ("fgsm", "pgd", "jsma", "cw", "apgd")
UNTARGETED = ("fgsm", "pgd", "apgd")
TARGETED = ("jsma", "cw")
BASELINES = ("fgsm", "pgd", "jsma", "cw")
# GA starts from an AC-GAN's noise, not from images: it needs `python -m pipelines.train_acgan
# --workdir=DIR` first and gives transfer rows plus the "fine-tuned on GA" clean-accuracy baseline.
LATENT_ATTACKS = ("ga",)
PAPER_EPS = 0.3


@dataclasses.dataclass
class EvalConfig:
  """What `evaluate_workdir` runs. Defaults are sized for 2 CPU cores (minutes, not hours)."""
  attacks: Tuple[str, ...] = ATTACK_NAMES
  n_per_class: int = 50            # untargeted sources per class (the paper: 450)
  m_per_class: int = 5             # targeted sources per class, x every other class (the paper: 50)
  epsilons: Optional[Tuple[float, ...]] = None  # None: (0.3 as printed in the paper, spec.attack_eps)
  transfer: bool = True
  blackbox_epochs: int = 3
  blackbox_train_examples: Optional[int] = 10000  # stratified subset of the train split (None: all)
  blackbox_batch_size: Optional[int] = None      # None: the spec's classifier batch size
  baselines: Tuple[str, ...] = BASELINES
  baseline_eps: Optional[float] = None   # eps of the FGSM / PGD fine-tuning examples (None: spec's)
  attack_baselines: bool = False         # also attack each baseline white-box (adaptive; 4x cost)
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
  seed: int = 0

  def __post_init__(self):
    unknown = sorted(set(self.attacks) - set(ATTACK_NAMES) - set(LATENT_ATTACKS))
    if unknown:
      raise ConfigError(f"unknown attacks {unknown}; known: {', '.join(ATTACK_NAMES + LATENT_ATTACKS)}")
    unknown = sorted(set(self.baselines) - set(BASELINES))
    if unknown:
      raise ConfigError(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
    if self.n_per_class < 1 or self.m_per_class < 1:
      raise ConfigError("n_per_class and m_per_class must be >= 1")


# -- sources and attacks -------------------------------------------------------------------------

def select_sources(split, n_per_class, m_per_class, num_classes, seed=0):
  """Attack sources drawn from `split` (the evaluation part of the test set).

  Returns (untargeted, targeted): untargeted = dict(x, y) with n_per_class images per class;
  targeted = dict(x, y, target) with m_per_class images per class, each repeated towards every
  other class (m * C * (C - 1) rows).
  """
  u = datasets.stratified_indices(split.y, n_per_class, seed)
  t = datasets.stratified_indices(split.y, m_per_class, seed + 1)
  ys = split.y[t]
  targets = np.array([[c for c in range(num_classes) if c != label] for label in ys], np.int64)
  rows = np.repeat(np.arange(len(t)), num_classes - 1)
  return ({"x": split.x[u], "y": split.y[u]},
          {"x": split.x[t][rows], "y": ys[rows], "target": targets.reshape(-1)})


def craft(attack, model, x, y, config, eps=None, target=None):
  """Adversarial examples of `attack` against `model` (images -> logits) with config's settings.

  Untargeted attacks (fgsm, pgd, apgd) need eps and use the true labels y; targeted ones (jsma, cw)
  need target.
  """
  if attack in UNTARGETED and eps is None:
    raise ValueError(f"{attack} needs an eps")
  if attack in TARGETED and target is None:
    raise ValueError(f"{attack} needs target classes")
  if attack == "fgsm":
    return attacks_lib.fgsm(model, x, eps, y)
  if attack == "pgd":
    return attacks_lib.pgd(model, x, eps, y, nb_iter=config.pgd_iter, seed=config.seed)
  if attack == "apgd":
    return attacks_lib.apgd(model, x, y, eps, n_iter=config.apgd_iter, n_restarts=config.apgd_restarts,
                            seed=config.seed)
  if attack == "jsma":
    return attacks_lib.jsma(model, x, target, theta=config.jsma_theta, gamma=config.jsma_gamma)
  if attack == "cw":
    return attacks_lib.carlini_wagner_l2(
        model, x, target, targeted=True, binary_search_steps=config.cw_binary_steps,
        max_iterations=config.cw_iterations, learning_rate=config.cw_learning_rate,
        initial_const=config.cw_initial_const)
  raise ValueError(f"unknown attack '{attack}'; known: {', '.join(ATTACK_NAMES)}")


def accuracy(model, x, y):
  """Fraction of x that `model` labels y (numpy)."""
  if len(x) == 0:
    return float("nan")
  return float(np.mean(attacks_lib.predict(model, x) == y))


def _attack_stats(model, x, x_adv, y, target):
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
    for eps in (config.epsilons if attack in UNTARGETED else (None,)):
      jobs.append((attack, eps))
  for i, (attack, eps) in enumerate(jobs):
    src = untargeted if attack in UNTARGETED else targeted
    x, y, target = src["x"], src["y"], src.get("target")
    label = f"{attack}" + (f" eps={eps:g}" if eps is not None else "")
    # White box: each model against its own examples (and the original's, the paper's fixed set).
    start = time.time()
    say(f"evaluate: [{i + 1}/{len(jobs)}] {label}: white-box on original ({len(x)} examples)")
    x_adv = craft(attack, attacked["original"], x, y, config, eps, target)
    row = {"attack": attack, "setting": "white_box", "epsilon": eps, "n": int(len(x)),
           "targeted": target is not None,
           "original_accuracy": accuracy(attacked["original"], x_adv, y),
           **_attack_stats(attacked["original"], x, x_adv, y, target)}
    if attack not in examples or (eps is not None and eps != PAPER_EPS):
      pick = np.unique(np.linspace(0, len(x) - 1, min(config.examples_per_attack, len(x))).astype(int))
      examples[attack] = {"x": x[pick], "x_adv": x_adv[pick], "y": y[pick],
                          "pred": attacks_lib.predict(attacked["original"], x_adv[pick]),
                          "target": None if target is None else target[pick], "epsilon": eps}
    for name, model in attacked.items():
      if name == "original":
        continue
      row[f"{name}_accuracy_fixed_set"] = accuracy(model, x_adv, y)
      if name == "defended" or config.attack_baselines:
        say(f"evaluate: [{i + 1}/{len(jobs)}] {label}: white-box on {name}")
        own = craft(attack, model, x, y, config, eps, target)
        row[f"{name}_accuracy"] = accuracy(model, own, y)
      else:
        row[f"{name}_accuracy"] = None
    row["seconds"] = time.time() - start
    rows.append(row)
    say(f"evaluate: {label} white-box: original {row['original_accuracy']:.3f}, defended "
        f"{row['defended_accuracy']:.3f} (on the original's examples {row['defended_accuracy_fixed_set']:.3f})")
    # Transfer: the black-box model's examples, fed to every model.
    if blackbox is not None:
      start = time.time()
      say(f"evaluate: [{i + 1}/{len(jobs)}] {label}: transfer from the black-box model")
      x_bb = craft(attack, blackbox, x, y, config, eps, target)
      row = {"attack": attack, "setting": "transfer", "epsilon": eps, "n": int(len(x)),
             "targeted": target is not None,
             "blackbox_accuracy": accuracy(blackbox, x_bb, y),
             **_attack_stats(blackbox, x, x_bb, y, target)}
      for name, model in attacked.items():
        row[f"{name}_accuracy"] = accuracy(model, x_bb, y)
      row["seconds"] = time.time() - start
      rows.append(row)
      say(f"evaluate: {label} transfer: original {row['original_accuracy']:.3f}, defended "
          f"{row['defended_accuracy']:.3f}")
  return rows, examples


# -- the work directory ----------------------------------------------------------------------------

@dataclasses.dataclass
class WorkdirContents:
  spec: datasets.DatasetSpec
  data: datasets.Dataset
  calibration: datasets.Split
  evaluation: datasets.Split
  original: object
  defended: object
  generated: dict
  run_config: dict        # DIR/config.json ("full" holds the defend settings, when written)
  lad_rows: np.ndarray    # rows of generated.npz the defended model was fine-tuned on


def _load_model(path):
  import keras
  if not os.path.exists(path):
    raise ArtifactNotFoundError(f"{path} is missing: run `python -m pipelines.defend` on this work "
                            f"directory first")
  return keras.models.load_model(path, compile=False)


def load_workdir(workdir):
  """Reads what the evaluation needs from a defend work directory (see docs/ARCHITECTURE.md)."""
  config_path = os.path.join(workdir, "config.json")
  run_config = read_json(config_path)
  if run_config is None:
    raise ArtifactNotFoundError(f"{config_path} is missing: is {workdir} a defend work directory? Run "
                                f"`python -m pipelines.defend --workdir={workdir}` first")
  metrics = read_json(os.path.join(workdir, "metrics.json"), {})
  name = run_config.get("dataset") or metrics.get("dataset")
  if not name:
    raise ValueError(f"neither {config_path} nor metrics.json names the dataset")
  for key in ("calibration_per_class", "seed"):
    if key not in run_config:
      raise ValueError(f"{config_path} has no '{key}': cannot rebuild the calibration split")
  spec = datasets.get_spec(name)
  data = datasets.load(name, data_dir=run_config.get("data_dir"))
  calibration, evaluation = datasets.calibration_split(data.test, int(run_config["calibration_per_class"]),
                                                       int(run_config["seed"]))
  gen_path = os.path.join(workdir, "generation", "generated.npz")
  if not os.path.exists(gen_path):
    raise ArtifactNotFoundError(f"{gen_path} is missing: run the defend pipeline's generation stage first")
  with np.load(gen_path, allow_pickle=False) as f:
    generated = {k: f[k] for k in f.files}
  for key in ("x_adv", "source", "target", "eps", "index"):
    if key not in generated:
      raise ValueError(f"{gen_path} has no array '{key}'")
  if len(generated["index"]) and generated["index"].max() >= len(calibration):
    raise ValueError(f"{gen_path} indexes calibration example {generated['index'].max()}, but the "
                     f"calibration split has {len(calibration)}: config.json does not match")
  full = run_config.get("full", {}) or {}
  mode = full.get("fine_tune_mode", "mix")
  eps = full.get("fine_tune_eps")
  lad_rows = np.arange(len(generated["eps"]))
  if eps and mode in ("mix", "eps"):
    chosen = eps if mode == "mix" else eps[:1]
    lad_rows = np.flatnonzero(np.isin(np.round(generated["eps"], 6), np.round(np.array(chosen, np.float32), 6)))
    if len(lad_rows) == 0:
      lad_rows = np.arange(len(generated["eps"]))
  return WorkdirContents(spec, data, calibration, evaluation,
                         _load_model(os.path.join(workdir, "classifier", "model.keras")),
                         _load_model(os.path.join(workdir, "defended", "model.keras")),
                         generated, run_config, lad_rows)


class _ModelCache:
  """Auxiliary models of the evaluation (black box, baselines, FT-eps) kept in DIR/evaluation/models
  with the settings that made them, so a re-run with the same settings reuses them."""

  def __init__(self, folder):
    self.folder = folder

  def get(self, name, settings, build):
    import keras
    os.makedirs(self.folder, exist_ok=True)
    path = os.path.join(self.folder, f"{name}.keras")
    meta_path = os.path.join(self.folder, f"{name}.json")
    settings = json.loads(json.dumps(settings, default=str))
    if os.path.exists(path) and read_json(meta_path) == settings:
      return keras.models.load_model(path, compile=False), True
    model = build()
    tmp = os.path.join(self.folder, f".tmp-{name}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    from lad_tf.workdir import write_json
    write_json(meta_path, settings)
    return model, False


def _fine_tune_config(config, contents):
  from lad_tf import defence
  full = contents.run_config.get("full", {}) or {}
  epochs = config.fine_tune_epochs or full.get("fine_tune_epochs") or defence.FineTuneConfig().epochs
  return defence.FineTuneConfig(epochs=int(epochs), seed=config.seed, verbose=0)


def recalibrate_batch_norm(model, x, batch=2000):
  """Sets every BatchNormalization layer's moving statistics to those of `x` (one forward pass in
  training mode with momentum 0; "precise BN"). After short trainings the moving variance still
  carries its initial value 1 (momentum 0.99 needs ~1,000 steps to forget it), which ruins inference."""
  import keras
  def walk(layer):
    for sub in getattr(layer, "layers", []):
      yield sub
      yield from walk(sub)

  layers = [l for l in walk(model) if isinstance(l, keras.layers.BatchNormalization)]
  if not layers:
    return model
  saved = [l.momentum for l in layers]
  for layer in layers:
    layer.momentum = 0.0
  try:
    model(x[:batch], training=True)
  finally:
    for layer, momentum in zip(layers, saved):
      layer.momentum = momentum
  return model


def train_blackbox(spec, train, epochs, seed=0, examples=None, batch_size=None):
  """The attackers' model: DatasetSpec.blackbox built fresh and trained on the training split (a
  stratified subset of `examples` images when given), then its BatchNorm statistics re-estimated."""
  import tempfile
  import keras
  from lad_tf import models, training
  if examples and examples < len(train):
    per_class = int(np.ceil(examples / spec.num_classes))
    train = train.take(datasets.stratified_indices(train.y, per_class, seed + 1))
  keras.utils.set_random_seed(seed + 1)
  model = models.build_classifier(spec.blackbox, spec.image_shape, spec.num_classes)
  with tempfile.TemporaryDirectory() as state:
    training.train_classifier(model, train, train.take(np.arange(min(len(train), 500))),
                              training.TrainConfig(epochs=epochs, seed=seed + 1, verbose=0,
                                                   batch_size=batch_size or spec.classifier_batch_size),
                              state)
  rng = np.random.default_rng(seed + 1)
  recalibrate_batch_norm(model, train.x[rng.permutation(len(train))[:2000]])
  return model


def baseline_examples(attack, original, calibration, generated, rows, config, eps):
  """FGSM / PGD / JSMA / CW examples crafted against `original` from the LAD fine-tuning sources.

  Each generated row's source (calibration.x[index]) gets one example; JSMA and CW aim at the row's
  LAD target. Identical (source, target) pairs are crafted once. Returns (x, x_adv, y).
  """
  index, target = generated["index"][rows], generated["target"][rows]
  pairs, inverse = np.unique(np.stack([index, target], axis=1), axis=0, return_inverse=True)
  inverse = np.reshape(inverse, -1)
  x, y = calibration.x[pairs[:, 0]], calibration.y[pairs[:, 0]]
  x_adv = craft(attack, original, x, y, config, eps=eps if attack in UNTARGETED else None,
                target=pairs[:, 1] if attack in TARGETED else None)
  return x[inverse], x_adv[inverse], y[inverse]


def lad_sweep(contents, config, fine_tune_config, cache, progress=None):
  """Fig. 7: FT-eps models (fine-tuned on the LAD examples of one eps, from half the calibration
  sources) with their clean accuracy and their accuracy on the other half's LAD examples at that eps,
  next to the original's and the defended model's."""
  from lad_tf import defence
  say = progress or log.info
  gen = contents.generated
  eps_all = np.unique(np.round(gen["eps"], 6))
  eps_values = eps_all if config.sweep_eps is None else [e for e in eps_all if np.any(
      np.isclose(e, np.array(config.sweep_eps, np.float32), atol=1e-6))]
  sources = np.unique(gen["index"])
  rng = np.random.default_rng(config.seed)
  fit_sources = np.sort(rng.choice(sources, size=len(sources) // 2, replace=False))
  fit = np.isin(gen["index"], fit_sources)
  defended_eps = np.unique(np.round(gen["eps"][contents.lad_rows], 6))
  out = []
  for j, eps in enumerate(eps_values):
    at = np.isclose(gen["eps"], eps, atol=1e-6)
    fit_rows, held_rows = np.flatnonzero(at & fit), np.flatnonzero(at & ~fit)
    say(f"evaluate: LAD sweep [{j + 1}/{len(eps_values)}] FT-{eps:g}: fine-tuning on {len(fit_rows)} examples")
    idx = gen["index"][fit_rows]
    model, _ = cache.get(
        f"ft_eps_{eps:g}", {"eps": float(eps), "rows": len(fit_rows), "seed": config.seed,
                           "fine_tune": dataclasses.asdict(fine_tune_config)},
        lambda: defence.fine_tune(contents.original, contents.calibration.x[idx], gen["x_adv"][fit_rows],
                                  contents.calibration.y[idx], fine_tune_config))
    held_x, held_y = gen["x_adv"][held_rows], gen["source"][held_rows]
    out.append({
        "epsilon": float(eps), "n_fit": int(len(fit_rows)), "n_heldout": int(len(held_rows)),
        "ft_clean_accuracy": accuracy(model, contents.evaluation.x, contents.evaluation.y),
        "ft_lad_accuracy": accuracy(model, held_x, held_y),
        "original_lad_accuracy": accuracy(contents.original, held_x, held_y),
        "defended_lad_accuracy": accuracy(contents.defended, held_x, held_y),
        "defended_trained_on_this_eps": bool(np.any(np.isclose(defended_eps, eps, atol=1e-6))),
    })
  return out


def lad_generation_summary(generated, num_classes, examples=10):
  """Source x target success (f(x') != source) and targeted (f(x') == target) rates of the LAD set,
  over all eps, plus a few fooling examples for the report."""
  matrix = np.full((num_classes, num_classes), np.nan)
  targeted = np.full((num_classes, num_classes), np.nan)
  has_label = "image_label" in generated
  for s in range(num_classes):
    for t in range(num_classes):
      sel = (generated["source"] == s) & (generated["target"] == t)
      if has_label and np.any(sel):
        matrix[s, t] = np.mean(generated["image_label"][sel] != s)
        targeted[s, t] = np.mean(generated["image_label"][sel] == t)
  # Fooling examples first (those the original labels other than the source), then the others.
  rng = np.random.default_rng(0)
  order = rng.permutation(len(generated["source"]))
  if has_label:
    fooled = generated["image_label"][order] != generated["source"][order]
    order = np.concatenate([order[fooled], order[~fooled]])
  pick = order[:examples]
  lad_examples = {"x_adv": generated["x_adv"][pick], "source": generated["source"][pick],
                  "target": generated["target"][pick], "eps": generated["eps"][pick],
                  "label": generated["image_label"][pick] if has_label else None}
  summary = {"success_matrix": matrix.tolist(), "targeted_matrix": targeted.tolist(),
             "eps_values": [float(e) for e in np.unique(generated["eps"])],
             "n": int(len(generated["source"]))}
  return summary, lad_examples


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
    The report as written to report.json (dict with "rows", "clean", "baselines", "lad_sweep", ...).
  """
  from lad_tf import defence, report as report_lib
  config = config or EvalConfig()
  say = progress or log.info
  started = time.time()
  timings = {}
  if "ga" in config.attacks and os.path.exists(os.path.join(workdir, "config.json")):
    from lad_tf.models.acgan import ACGAN
    ACGAN.files(workdir)  # fail now, not after the other attacks
  contents = load_workdir(workdir)
  spec = contents.spec
  eps = config.epsilons if config.epsilons is not None else (PAPER_EPS, spec.attack_eps)
  config = dataclasses.replace(config, epsilons=tuple(sorted({round(float(e), 6) for e in eps})))
  out_dir = os.path.join(workdir, "evaluation")
  cache = _ModelCache(os.path.join(out_dir, "models"))
  tune = _fine_tune_config(config, contents)
  say(f"evaluate: {spec.name}, {len(contents.evaluation)} evaluation examples, attacks "
      f"{', '.join(config.attacks)}, eps {', '.join(f'{e:g}' for e in config.epsilons)}")

  attacked = {"original": contents.original, "defended": contents.defended}
  models_info = {"original": {}, "defended": {"fine_tuned_on": int(len(contents.lad_rows))}}
  baseline_eps = config.baseline_eps if config.baseline_eps is not None else spec.attack_eps
  for name in config.baselines:
    start = time.time()
    say(f"evaluate: baseline: fine-tuning the original on {len(contents.lad_rows)} {name} examples")

    def build(name=name):
      x, x_adv, y = baseline_examples(name, contents.original, contents.calibration,
                                      contents.generated, contents.lad_rows, config, baseline_eps)
      return defence.fine_tune(contents.original, x, x_adv, y, tune)

    settings = {"attack": name, "rows": int(len(contents.lad_rows)), "eps": baseline_eps,
                "fine_tune": dataclasses.asdict(tune), "config": _attack_settings(config)}
    attacked[f"baseline_{name}"], reused = cache.get(f"baseline_{name}", settings, build)
    models_info[f"baseline_{name}"] = {"fine_tuned_on": int(len(contents.lad_rows)),
                                       "epsilon": baseline_eps if name in UNTARGETED else None,
                                       "reused": reused}
    timings[f"baseline_{name}"] = time.time() - start

  blackbox = None
  if config.transfer:
    start = time.time()
    say(f"evaluate: black-box model: training {spec.blackbox} for {config.blackbox_epochs} epochs")
    bb_settings = {"architecture": spec.blackbox, "epochs": config.blackbox_epochs, "seed": config.seed,
                   "examples": config.blackbox_train_examples, "batch_size": config.blackbox_batch_size}
    blackbox, reused = cache.get("blackbox", bb_settings, lambda: train_blackbox(
        spec, contents.data.train, config.blackbox_epochs, config.seed, config.blackbox_train_examples,
        config.blackbox_batch_size))
    models_info["blackbox"] = {"architecture": spec.blackbox, "epochs": config.blackbox_epochs,
                               "reused": reused,
                               "clean_accuracy": accuracy(blackbox, contents.evaluation.x,
                                                          contents.evaluation.y)}
    timings["blackbox"] = time.time() - start

  clean = {}
  for name, model in attacked.items():
    clean[name] = accuracy(model, contents.evaluation.x, contents.evaluation.y)
    models_info[name]["clean_accuracy"] = clean[name]
  say("evaluate: clean accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in clean.items()))

  start = time.time()
  sources = select_sources(contents.evaluation, config.n_per_class, config.m_per_class, spec.num_classes,
                           config.seed)
  image_attacks = tuple(a for a in config.attacks if a not in LATENT_ATTACKS)
  rows, examples = attack_rows(attacked, sources, dataclasses.replace(config, attacks=image_attacks),
                               blackbox, say)
  timings["attacks"] = time.time() - start
  if "ga" in config.attacks:
    start = time.time()
    ga_result = ga_rows(workdir, contents, blackbox, config, tune, say)
    if ga_result:
      rows.append(ga_result["row"])
      clean["baseline_ga"] = ga_result["baseline_clean_accuracy"]
      models_info["baseline_ga"] = ga_result["baseline"]
    timings["ga"] = time.time() - start

  sweep = []
  if config.lad_sweep:
    start = time.time()
    sweep = lad_sweep(contents, config, tune, cache, say)
    timings["lad_sweep"] = time.time() - start
  generation_summary, lad_examples = lad_generation_summary(contents.generated, spec.num_classes)
  timings["total"] = time.time() - started

  report = _nan_to_none({
      "dataset": spec.name,
      "class_names": list(spec.class_names),
      "workdir": os.path.abspath(workdir),
      "created": time.strftime("%Y-%m-%d %H:%M:%S"),
      "config": {**dataclasses.asdict(config), "fine_tune": dataclasses.asdict(tune),
                 "baseline_eps": baseline_eps},
      "n": {"untargeted": int(len(sources[0]["y"])), "targeted": int(len(sources[1]["y"])),
            "evaluation_split": int(len(contents.evaluation))},
      "models": models_info,
      "clean": clean,
      "rows": rows,
      "lad_sweep": sweep,
      "lad_generation": generation_summary,
      "timings_s": timings,
      "notes": NOTES,
  })
  report_lib.write_report(out_dir, report, examples=examples, lad_examples=lad_examples)
  say(f"evaluate: report written to {out_dir}/report.json and report.html "
      f"({timings['total']:.0f} s)")
  return report


def ga_rows(workdir, contents, blackbox, config, tune, say):
  """GA (Song et al.): a transfer row from the black-box model and the GA fine-tuning baseline.

  Returns None (and says why) when DIR/acgan is missing or there is no black-box model."""
  from lad_tf.attacks import ga
  from lad_tf.models.acgan import ACGAN
  try:
    acgan = ACGAN.load(workdir)
  except FileNotFoundError as e:
    say(f"evaluate: ga skipped: {e}")
    return None
  if blackbox is None:
    say("evaluate: ga skipped: its rows are transfer rows and need the black-box model (--transfer)")
    return None
  say(f"evaluate: ga: {config.ga_per_class} tries per class, {config.ga_steps} steps, against the "
      f"black-box model")
  ga_set = ga.ga_transfer_set(blackbox, acgan, config.ga_per_class, seed=config.seed,
                              num_steps=config.ga_steps)
  accuracy_on_set = ga.transfer_accuracy({"original": contents.original, "defended": contents.defended},
                                         ga_set)
  say(f"evaluate: ga: {ga_set['success_rate']:.3f} of tries fooled the black-box model; "
      f"original {accuracy_on_set['original']:.3f}, defended {accuracy_on_set['defended']:.3f}")
  tuned, tuned_set = ga.ga_fine_tuned(contents.original, acgan, contents.calibration, config.ga_per_class,
                                      config=tune, seed=config.seed, num_steps=config.ga_steps)
  baseline_clean = accuracy(tuned, contents.evaluation.x, contents.evaluation.y)
  say(f"evaluate: ga baseline: fine-tuned on {int(tuned_set['kept'].sum())} GA examples, clean accuracy "
      f"{baseline_clean:.4f}")
  row = {"attack": "ga", "setting": "transfer", "epsilon": None, "n": int(np.sum(ga_set["kept"])),
         "tries": int(ga_set["tries"]), "blackbox_success_rate": float(ga_set["success_rate"]),
         "original_accuracy": accuracy_on_set["original"], "defended_accuracy": accuracy_on_set["defended"]}
  return {"row": row, "baseline_clean_accuracy": baseline_clean,
          "baseline": {"fine_tuned_on": int(tuned_set["kept"].sum()), "clean_accuracy": baseline_clean}}


def _attack_settings(config):
  keys = ("pgd_iter", "apgd_iter", "apgd_restarts", "jsma_theta", "jsma_gamma", "cw_binary_steps",
          "cw_iterations", "cw_learning_rate", "cw_initial_const", "seed")
  return {k: getattr(config, k) for k in keys}


NOTES = [
    "Accuracies are on the evaluation part of the test split (calibration examples excluded); for "
    "targeted attacks (JSMA, CW) the source label counts as correct.",
    "white_box: defended_accuracy / baseline_*_accuracy attack that model itself (adaptive); "
    "*_accuracy_fixed_set score it on the original classifier's adversarial examples (the paper's "
    "Table II protocol).",
    "transfer: adversarial examples crafted on an independently trained black-box model of another "
    "architecture, fed to every model (the paper's Table III).",
    "epsilon 0.3 is the paper's value as printed; the dataset's usual eps gives the extra rows.",
    "attack_success_rate is on the model the examples were crafted on (reaching the target, or "
    "flipping a correctly classified image); mean_l2 / mean_l0 are over the successful examples.",
    "LAD sweep: FT-eps models are fine-tuned on half the calibration sources; LAD accuracies are on "
    "the other half. The defended model was fine-tuned on all calibration sources, so its LAD "
    "accuracy at its own eps is not held out (defended_trained_on_this_eps).",
]
