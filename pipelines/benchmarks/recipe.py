"""The defence users run, measured as run: `python -m pipelines.benchmark recipe --dataset=fashion_mnist
 [--set=seeds=3,rows=default|tradeoff_3,autoattack=standard,autoattack_examples=1000]`

Each row is a set of `pipelines.defend` settings (DefendConfig fields) over the dataset's defaults; the
row `default` sets none, so it is exactly the command `python -m pipelines.defend --dataset=DATASET`.
Each seed has one work directory: the classifier stage trains once and every row reuses it (the stage
cache); each row then runs the defended and robustness stages of `lad_tf.run.defend.run_defend` with its
settings. Per row and seed: clean accuracy on the whole evaluation split (the test split without the
calibration examples), AutoAttack accuracy on `autoattack_examples` of those images (the robustness
stage), PGD-40 on the same images, the defended stage's seconds and their ratio to the classifier
stage's. Each row keeps the defended stage's settings (what its fingerprint hashes):
tests/test_recipe_benchmark.py fails when those of the default row differ from what `pipelines.defend`
would use now, so the default's figures are always those of the recipe users run.
"""
import json
import os
import tempfile

import numpy as np

from pipelines.benchmarks import robust

# Candidate rows: the DefendConfig fields each sets over the dataset's defaults.
ROWS = {
    "default": {},
    "selection_balanced": {"defence_selection": "balanced"},
    "weight_averaging": {"defence_weight_averaging": 0.999},
    "tradeoff_1": {"defence_tradeoff": 1.0},
    "tradeoff_3": {"defence_tradeoff": 3.0},
    "tradeoff_6": {"defence_tradeoff": 6.0},
    "generated_half": {"defence_generated_weight": 0.5},
    "step_half": {"defence_step_scale": 0.5},
    "eps_three_quarters": {"defence_eps": 0.075},
    "eps_half": {"defence_eps": 0.05},
    "epochs_15": {"defence_epochs": 15},
    "epochs_20": {"defence_epochs": 20},
    "scratch_10": {"defence_init": "scratch", "defence_epochs": 10},
    "cyclic": {"defence_lr_schedule": "cyclic"},
    "fgsm_rs": {"defence": "fgsm_rs"},
    "trades": {"defence": "trades"},
}
FIGURES = ("clean", "autoattack", "pgd40", "defended_s", "cost_ratio")


def _rows(rows):
  names = rows.split("|") if isinstance(rows, str) else list(rows)
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    raise ValueError(f"rows: unknown {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
  return names


def _pgd40(run_dir, config, seed):
  """PGD-40 accuracy of the defended model on the robustness stage's images (same pick, same seed)."""
  from lad_tf import attacks
  from lad_tf.data import datasets
  from lad_tf.run.defend_stages import robustness_images
  from lad_tf.runtime.files import load_model
  spec = datasets.get_spec(config.dataset)
  x, y = robustness_images(config.dataset, config.data_dir, config.calibration_per_class, seed,
                           config.robust_eval_examples)
  model = load_model(os.path.join(run_dir, "defended", "model.keras"), "defended classifier")
  x_adv = attacks.pgd(model, x, y, spec.attack_eps, nb_iter=40, seed=0)
  return float(np.mean(np.argmax(model.predict(x_adv, batch_size=500, verbose=0), -1) == y))


def _measure(name, seed, dataset, data_dir, workdir, autoattack, autoattack_examples, say):
  """One row, one seed: run_defend in the seed's work directory with the row's settings."""
  from lad_tf.run.defend import run_defend
  from lad_tf.run.defend_config import DefendConfig
  from lad_tf.runtime.execution import ExecutionConfig
  from lad_tf.runtime.files import read_json
  config = DefendConfig(dataset=dataset, data_dir=data_dir, robust_eval=autoattack,
                        robust_eval_examples=autoattack_examples, report_images=0,
                        execution=ExecutionConfig(seed=seed, verbose=0), **ROWS[name])
  run_dir = os.path.join(workdir, f"seed{seed}")
  metrics = run_defend(run_dir, config, progress=say)
  stages = metrics["stages_s"]
  defended = read_json(os.path.join(run_dir, "defended", "metrics.json"))
  guard = defended.get("guard") or {}
  return {"seed": seed, "clean": metrics["defended"]["clean_accuracy"],
          "autoattack": metrics["defended"]["robust_accuracy"], "pgd40": _pgd40(run_dir, config.resolved(), seed),
          "defended_s": stages["defended"], "classifier_s": stages["classifier"],
          "cost_ratio": stages["defended"] / stages["classifier"],
          "original": metrics["original"], "selection": guard.get("selection"),
          "guard_rollbacks": guard.get("rollbacks")}, read_json(os.path.join(run_dir, "defended", "stage.json"))["settings"]


def run(dataset="fashion_mnist", n=0, seed=0, data_dir=None, seeds=3, rows="default", autoattack="standard",
        autoattack_examples=1000, workdir=None, partial=None):
  """See the module docstring. `n` overrides autoattack_examples; `seed` is the first seed. workdir: where
  the seeds' work directories live (kept: a second run reuses their classifiers); partial: a JSON written
  after every (row, seed), from which a killed run resumes."""
  say = lambda message: print(message, flush=True)
  names = _rows(rows)
  autoattack_examples = n or autoattack_examples
  workdir = workdir or os.path.join(tempfile.gettempdir(), f"lad_tf_recipe_{dataset}")
  partial = partial or os.path.join(workdir, "partial.json")
  options = {"dataset": dataset, "autoattack": autoattack, "autoattack_examples": autoattack_examples}
  found = {}
  if os.path.exists(partial):
    with open(partial) as f:
      previous = json.load(f)
    if previous["options"] == options:
      found = previous["found"]
  for s in range(seed, seed + seeds):
    for name in names:
      if any(r["seed"] == s for r in found.get(name, {}).get("seeds", [])):
        continue
      say(f"recipe benchmark: row {name}, seed {s}: {ROWS[name] or 'the defaults'}")
      figures, settings = _measure(name, s, dataset, data_dir, workdir, autoattack, autoattack_examples, say)
      row = found.setdefault(name, {"sets": ROWS[name], "settings": settings, "seeds": []})
      row["seeds"].append(figures)
      say(f"recipe benchmark: {name} seed {s}: " + ", ".join(
          f"{k} {figures[k]:.4f}" for k in FIGURES))
      os.makedirs(os.path.dirname(partial), exist_ok=True)
      with open(partial, "w") as f:
        json.dump({"options": options, "found": found}, f, indent=2, default=float)
  rows_out = {name: {"sets": row["sets"], "settings": row["settings"], **robust.summary(row["seeds"], FIGURES)}
              for name, row in found.items()}
  # data_dir: where the data came from is part of the classifier stage's fingerprint, so the test that
  # holds the default row to the command needs it
  return {**options, "data_dir": data_dir, "eps": _eps(dataset), "rows": rows_out,
          "autoattack_attack": f"AutoAttack {autoattack} (lad_tf.attacks.autoattack), the defend pipeline's "
                               f"robustness stage"}


def _eps(dataset):
  from lad_tf.data import datasets
  return datasets.get_spec(dataset).attack_eps
