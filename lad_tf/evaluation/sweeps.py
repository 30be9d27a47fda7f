"""The evaluation's sweeps: the LAD sweep (Fig. 7: one FT-eps model per eps), the LAD generation
summary (source x target rates and fooling examples for the report) and the GA rows (white-box on
every model of the table, transfer from the black-box model) with the fine-tuned-on-GA baseline."""
import dataclasses
import logging
import time

import numpy as np

from lad_tf.attacks import ga
from lad_tf.evaluation.baselines import CACHE
from lad_tf.lad import fine_tuning
from lad_tf.evaluation.protocol import white_box_columns
from lad_tf.runtime.training import accuracy

log = logging.getLogger("lad_tf")


def lad_sweep(work, contents, config, fine_tune_config, progress=None):
  """Fig. 7: FT-eps models (fine-tuned on the LAD examples of one eps, from half the calibration
  sources) with their clean accuracy and their accuracy on the other half's LAD examples at that eps,
  next to the original's and the defended model's."""
  say = progress or log.info
  gen = contents.generated
  eps_all = np.unique(np.round(gen.eps, 6))
  eps_values = eps_all if config.sweep_eps is None else [e for e in eps_all if np.any(
      np.isclose(e, np.array(config.sweep_eps, np.float32), atol=1e-6))]
  sources = np.unique(gen.index)
  rng = np.random.default_rng(config.seed)
  fit_sources = np.sort(rng.choice(sources, size=len(sources) // 2, replace=False))
  fit = np.isin(gen.index, fit_sources)
  defended_eps = np.unique(np.round(gen.eps[contents.lad_rows], 6))
  out = []
  for j, eps in enumerate(eps_values):
    at = np.isclose(gen.eps, eps, atol=1e-6)
    fit_rows, held_rows = np.flatnonzero(at & fit), np.flatnonzero(at & ~fit)
    say(f"evaluate: LAD sweep [{j + 1}/{len(eps_values)}] FT-{eps:g}: fine-tuning on {len(fit_rows)} examples")
    idx = gen.index[fit_rows]
    model, _ = work.cached_model(
        CACHE, f"ft_eps_{eps:g}", {"eps": float(eps), "rows": len(fit_rows), "seed": config.seed,
                                   "fine_tune": dataclasses.asdict(fine_tune_config),
                                   "original": work.stage_fingerprint("classifier"),
                                   "generation": work.stage_fingerprint("generation")},
        lambda: fine_tuning.fine_tune(contents.original, contents.calibration.x[idx], gen.x_adv[fit_rows],
                                  contents.calibration.y[idx], fine_tune_config))
    held_x, held_y = gen.x_adv[held_rows], gen.source[held_rows]
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
  g = generated
  matrix, targeted = g.pair_rates(num_classes)
  # Fooling examples first (those the original labels other than the source), then the others.
  order = np.random.default_rng(0).permutation(len(g))
  fooled = g.image_label[order] != g.source[order]
  pick = np.concatenate([order[fooled], order[~fooled]])[:examples]
  lad_examples = {"x_adv": g.x_adv[pick], "source": g.source[pick], "target": g.target[pick],
                  "eps": g.eps[pick], "label": g.image_label[pick]}
  summary = {"success_matrix": matrix.tolist(), "targeted_matrix": targeted.tolist(),
             "eps_values": [float(e) for e in np.unique(g.eps)], "n": int(len(g))}
  return summary, lad_examples


def ga_rows(acgan, contents, attacked, blackbox, config, tune, say):
  """GA (Song et al.): the fine-tuned-on-GA baseline, a white-box row and a transfer row.

  Each GA run makes config.ga_per_class tries per source class with config.ga_steps steps (plus
  EvalConfig.attack_options["ga"], passed to generative_attack). The models of the GA rows are
  `attacked` (original, defended, the baselines) and the GA baseline.
  white_box: GA against the original (seed config.seed + 1: other start points than the baseline's
    fine-tuning set, config.seed); every other model is scored on the original's examples
    (`*_accuracy_fixed_set`), and, as in the other white-box rows, GA attacks the defended model
    itself (and each baseline with config.attack_baselines) from the same start points
    (`*_accuracy`). Accuracies are over the tries (ga.accuracy_over_tries): a try breaks a model when
    the AC-GAN's auxiliary classifier still reads the source class and the model says otherwise, so
    `original_accuracy` is 1 - GA's success rate against it and `n` is the number of tries.
  transfer: the kept GA examples made against the black-box model (the paper's Table III), accuracy
    of every model with respect to their source class; `n` is the number of kept examples. None
    without a black-box model.
  Returns {"rows": [...], "baseline_clean_accuracy": float, "baseline": info for report["models"]}.
  """
  options = {"num_steps": config.ga_steps, **config.attack_options.get("ga", {})}
  tuned, tuned_set = ga_fine_tuned(contents.original, acgan, contents.calibration, config.ga_per_class,
                                  config=tune, seed=config.seed, **options)
  baseline_clean = accuracy(tuned, contents.evaluation.x, contents.evaluation.y)
  say(f"evaluate: ga baseline: fine-tuned on {int(tuned_set['kept'].sum())} GA examples, clean accuracy "
      f"{baseline_clean:.4f}")
  models = {**attacked, "baseline_ga": tuned}
  rows = []

  start = time.time()
  say(f"evaluate: ga: {config.ga_per_class} tries per class, {config.ga_steps} steps, white-box on original")
  crafted = lambda model: ga.make_ga_set(model, acgan, config.ga_per_class, seed=config.seed + 1, **options)
  own = crafted(contents.original)
  tries = int(len(own["kept"]))
  row = {"attack": "ga", "setting": "white_box", "epsilon": None, "n": tries, "n_images": tries, "n_pairs": None,
         "targeted": False, "tries": tries, "n_kept": int(np.sum(own["kept"])),
         "attack_success_rate": float(own["success_rate"]), "original_accuracy": 1.0 - float(own["success_rate"])}
  fixed = ga.accuracy_over_tries({name: m for name, m in models.items() if name != "original"}, own)
  white_box_columns(row, models, config, lambda name, _: fixed[name],
                    lambda _, model: 1.0 - float(crafted(model)["success_rate"]), "ga", start, say)
  rows.append(row)

  if blackbox is None:
    say("evaluate: ga transfer row skipped: it needs the black-box model (--transfer)")
  else:
    start = time.time()
    say(f"evaluate: ga: {config.ga_per_class} tries per class against the black-box model")
    ga_set = ga.ga_transfer_set(blackbox, acgan, config.ga_per_class, seed=config.seed, **options)
    on_set = ga.transfer_accuracy(models, ga_set)
    kept = int(np.sum(ga_set["kept"]))
    rows.append({"attack": "ga", "setting": "transfer", "epsilon": None, "n": kept, "n_images": kept,
                 "n_pairs": None, "targeted": False, "tries": int(ga_set["tries"]),
                 "blackbox_success_rate": float(ga_set["success_rate"]),
                 **{f"{name}_accuracy": value for name, value in on_set.items()},
                 "seconds": time.time() - start})
    say(f"evaluate: ga transfer: {ga_set['success_rate']:.3f} of tries fooled the black-box model; "
        f"original {on_set['original']:.3f}, defended {on_set['defended']:.3f}")
  return {"rows": rows, "baseline_clean_accuracy": baseline_clean,
          "baseline": {"fine_tuned_on": int(tuned_set["kept"].sum()), "clean_accuracy": baseline_clean}}


def fine_tune_pairs(ga_set, clean, seed=0):
  """Pairs each kept GA example with a clean example of its source class, for fine_tuning.fine_tune.

  GA examples are generated from noise, so unlike FGSM / PGD / LAD examples they have no clean
  counterpart; Eq. 4 needs one, so each is paired with a clean example of its source class drawn at
  random (with `seed`) from `clean` (a Split, e.g. the calibration or training data).
  Returns (x, x_adv, y) ready for lad_tf.lad.fine_tuning.fine_tune(classifier, x, x_adv, y, config).
  """
  mask = ga_set["kept"]
  x_adv, y = ga_set["x_adv"][mask], ga_set["source"][mask].astype(np.int64)
  rng = np.random.default_rng(seed)
  x = np.zeros_like(x_adv)
  for c in np.unique(y):
    members = np.flatnonzero(clean.y == c)
    if len(members) == 0:
      raise ValueError(f"fine_tune_pairs: the clean data has no example of class {c}")
    rows = np.flatnonzero(y == c)
    x[rows] = clean.x[rng.choice(members, size=len(rows), replace=True)]
  return x, x_adv, y


def ga_fine_tuned(classifier, acgan, clean, n_per_class, config=None, targeted=False, seed=0,
                  state_dir=None, **attack_kwargs):
  """The Table IV baseline "fine-tuned on GA": GA against `classifier` itself, then Eq. 4 fine-tuning.

  Args:
    classifier: the original classifier (Keras model, logits); left unchanged.
    acgan: ACGAN or its folder.
    clean: Split the clean partners come from (see fine_tune_pairs).
    n_per_class: GA tries per source class.
    config: lad_tf.lad.fine_tuning.FineTuneConfig (None: its defaults).
    targeted, seed, **attack_kwargs: as in lad_tf.attacks.ga.make_ga_set.
    state_dir: per-epoch backups of the fine-tuning (None: none).
  Returns:
    (the fine-tuned copy of classifier, the GA set it was tuned on).
  """
  ga_set = ga.make_ga_set(classifier, acgan, n_per_class, targeted=targeted, seed=seed, **attack_kwargs)
  if not ga_set["kept"].any():
    raise ValueError("ga_fine_tuned: no GA try succeeded against the classifier; raise num_steps or "
                     "n_per_class")
  x, x_adv, y = fine_tune_pairs(ga_set, clean, seed)
  tuned = fine_tuning.fine_tune(classifier, x, x_adv, y, config or fine_tuning.FineTuneConfig(), state_dir=state_dir)
  return tuned, ga_set
