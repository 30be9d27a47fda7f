"""The evaluation's sweeps: the LAD sweep (Fig. 7: one FT-eps model per eps), the LAD generation
summary (source x target rates and fooling examples for the report) and the GA transfer row with its
fine-tuned-on-GA baseline."""
import dataclasses
import logging

import numpy as np

from lad_tf import defence
from lad_tf.auxiliary_models import CACHE
from lad_tf.training import accuracy

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
        lambda: defence.fine_tune(contents.original, contents.calibration.x[idx], gen.x_adv[fit_rows],
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


def ga_rows(workdir, contents, blackbox, config, tune, say):
  """GA (Song et al.): a transfer row from the black-box model and the GA fine-tuning baseline.

  Returns None (and says why) when there is no black-box model; a missing DIR/acgan is an
  ArtifactNotFoundError, raised by evaluate_workdir before any attack runs."""
  from lad_tf.attacks import ga
  from lad_tf.models.acgan import ACGAN
  if blackbox is None:
    say("evaluate: ga skipped: its rows are transfer rows and need the black-box model (--transfer)")
    return None
  acgan = ACGAN.load(workdir)
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
