"""The robust-training benchmark's figures as Markdown, written from its committed JSON
(benchmarks/robust_<dataset>.json, `python -m pipelines.benchmark robust`): a section of
docs/RESULTS.md and the README's robust block (documents.readme), so neither holds a hand-copied figure.

The readings come from a rule, like documents.rule's: two means differ only beyond two
standard errors, counting both the sampling error of `eval_examples` test images and the spread over
seeds."""
import math
import os
import re

from lad_tf.runtime.files import read_json
from pipelines.benchmarks.robust import LAD_ROBUST_ROW
from pipelines.documents.formatting import table
from pipelines.documents.provenance import git_commit_of_file

DATASETS = ("fashion_mnist", "mnist")

# Rows in reading order: no defence, the paper and its control, the cheap single-step methods, ours,
# then the multi-step references. `nfgsm` is the ablation's first row (lad_robust with LAD's parts off).
ORDER = ("standard", "lad", "clean", "fgsm_rs", "nfgsm", "lad_robust", "pgd_at", "trades")
LABELS = {"standard": "none (the trained classifier)", "lad": "`lad` (the paper)",
          "clean": "`clean` (LAD's control)", "nfgsm": "`nfgsm` (N-FGSM alone)",
          "lad_robust": "`lad_robust` (N-FGSM + LAD's boundary-guided start)"}


def path_of(repo, dataset):
  return os.path.join(repo, "benchmarks", f"robust_{dataset}.json")


# the ablation's multi-step pairs: short_pgd=K (pgdK, pgdK+guided_start) and carry=K (carryK, ...)
PAIR = re.compile(rf"^(pgd|carry)(\d+)({re.escape(LAD_ROBUST_ROW)})?$")
PAIR_KINDS = {"pgd": "PGD-{k}", "carry": "{k} carried step(s)"}

# A separate run's rows carry its own settings after the row's name: "@S" its single steps started at
# S times their size (step_scale=S), ",Eep" it trained E epochs; e.g. carry1@0.5,15ep
VARIANT = re.compile(r"^(?P<row>[^@,]+)(?:@(?P<step_scale>[\d.]+))?(?:,(?P<epochs>\d+)ep)?$")
SETTING_TEXT = {"step_scale": ", step x{:g}", "epochs": ", {} epochs"}


def variant(name):
  """(row, suffix, {setting: value}) of a benchmark row's name: carry1@0.5,15ep gives
  ("carry1", "@0.5,15ep", {"step_scale": 0.5, "epochs": 15})."""
  found = VARIANT.match(name)
  if not found:
    return name, "", {}
  row = found.group("row")
  settings = {k: (int(v) if k == "epochs" else float(v)) for k, v in found.groupdict().items()
              if k != "row" and v is not None}
  return row, name[len(row):], settings


def pair_of(name):
  """The PAIR match of a row's name without its variant suffix, or None."""
  return PAIR.match(variant(name)[0])


# benchmark rows that `pipelines.defend` offers under another name (lad_tf.robust.methods: the same loss):
# carryK is `--defence=atta --defence_atta_steps=K`
CARRIED = re.compile(r"^carry(?P<atta_steps>\d+)$")


def defence_of(row):
  """The `--defence` name that trains a benchmark row, or None when defend has no such defence."""
  from lad_tf import defences
  row = variant(row)[0]
  name = "atta" if CARRIED.match(row) else row
  return name if name in defences.DEFENCES else None


def recipe_of(name):
  """{DefenceRecipe field: value} that defend needs, beyond the benchmark's options, to train a row: its
  variant's settings and, for carryK with K > 1, atta_steps; e.g. carry2@0.5 gives
  {"atta_steps": 2, "step_scale": 0.5}."""
  row, _, settings = variant(name)
  carried = CARRIED.match(row)
  steps = int(carried.group("atta_steps")) if carried else 1
  return {**({"atta_steps": steps} if steps != 1 else {}), **settings}


def pair_rows(bench):
  """{row: summary} of the ablation's multi-step pairs, if the benchmark ran them."""
  return {name: v for name, v in bench.get("ablation", {}).items() if pair_of(name)}


def ablation_rows(bench):
  """{row: summary} of the ablation table: the ablation without the pairs the main table shows."""
  return {name: v for name, v in bench.get("ablation", {}).items() if not pair_of(name)}


def label(name):
  pair = pair_of(name)
  if pair:
    what = PAIR_KINDS[pair.group(1)].format(k=pair.group(2))
    defence = defence_of(name)
    flags = "".join(f" --defence_{k}={v:g}" for k, v in recipe_of(name).items())
    named = f", `--defence={defence}{flags}`" if defence else ""
    how = "".join(SETTING_TEXT[k].format(v) for k, v in variant(name)[2].items())
    return (f"`{name}` ({what}" + (" + LAD's boundary-guided start" if pair.group(3) else " alone")
            + how + ("" if pair.group(3) else named) + ")")
  return LABELS.get(name, f"`{name}`")


def methods_of(bench):
  """{method: summary} in ORDER, N-FGSM alone and the multi-step pairs (before pgd_at) taken from the
  ablation."""
  found = {**bench.get("methods", {})}
  if "nfgsm" in bench.get("ablation", {}):
    found["nfgsm"] = bench["ablation"]["nfgsm"]
  pairs = pair_rows(bench)
  found.update(pairs)
  order = ORDER[:ORDER.index("pgd_at")] + tuple(sorted(pairs)) + ORDER[ORDER.index("pgd_at"):]
  return {name: found[name] for name in order if name in found}


def _cell(summary, key, scale=100.0, digits=1):
  if key not in summary:
    return "-"
  mean, std = summary[key]["mean"] * scale, summary[key]["std"] * scale
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(summary.get("seeds", [])) > 1 else "")


def robust_table(methods, labelled=True):
  return table(["defence", "clean %", "AutoAttack %", "PGD-40 %", "cost (x clean training)", "seeds"],
               [[label(m) if labelled else f"`{m}`", _cell(v, "clean"), _cell(v, "autoattack"), _cell(v, "pgd40"),
                 _cell(v, "cost_ratio", 1.0), len(v.get("seeds", []))] for m, v in methods.items()])


def standard_error(summary, key, n):
  """Of a mean accuracy over seeds: the seeds' spread and each seed's sampling error on n images."""
  p, seeds = summary[key]["mean"], max(len(summary.get("seeds", [])), 1)
  sampling = p * (1 - p) / max(n, 1) / seeds
  spread = summary[key]["std"] ** 2 / max(seeds - 1, 1) if seeds > 1 else 0.0
  return math.sqrt(sampling + spread)


def compare(a, b, key, n):
  """(difference a - b, two standard errors of it)."""
  return a[key]["mean"] - b[key]["mean"], 2 * math.hypot(standard_error(a, key, n), standard_error(b, key, n))


def as_good(a, b, key, n):
  """Whether a's mean is below b's by two standard errors at most."""
  diff, two_se = compare(a, b, key, n)
  return diff >= -two_se


def _verdict(diff, two_se):
  """What a difference means by the rule: beyond two standard errors either way, or not."""
  return "helps" if diff > two_se else "hurts" if diff < -two_se else "does not help (the difference is within sampling error)"


def readings(bench):
  """Sentences on what the benchmark shows, each from the rule."""
  methods, n = methods_of(bench), bench.get("options", {}).get("eval_examples", 0)
  out = []
  if "lad_robust" in methods and "nfgsm" in methods:
    diff, two_se = compare(methods["lad_robust"], methods["nfgsm"], "autoattack", n)
    out.append(f"LAD's boundary-guided start {_verdict(diff, two_se)}: `lad_robust` {100 * diff:+.1f} AutoAttack points against "
               f"N-FGSM alone (two standard errors: {100 * two_se:.1f}).")
  for name in methods:
    pair = pair_of(name)
    base = pair and pair.group(1) + pair.group(2) + variant(name)[1]
    if pair and pair.group(3) and base in methods:
      diff, two_se = compare(methods[name], methods[base], "autoattack", n)
      k, what = pair.group(2), PAIR_KINDS[pair.group(1)].format(k=pair.group(2))
      setting = (f"With {k} projected steps instead of one" if pair.group(1) == "pgd" else
                 f"With perturbations carried over from epoch to epoch ({k} projected step(s) per batch)")
      out.append(f"{setting}, LAD's boundary-guided start {_verdict(diff, two_se)}: "
                 f"`{name}` {100 * diff:+.1f} AutoAttack points against {what} alone (two standard "
                 f"errors: {100 * two_se:.1f}).")
  if "lad" in methods and "clean" in methods:
    diff, two_se = compare(methods["lad"], methods["clean"], "autoattack", n)
    out.append(f"The paper's `lad` is {'above' if diff > two_se else 'no better than'} its clean control under "
               f"AutoAttack ({100 * methods['lad']['autoattack']['mean']:.1f}% against "
               f"{100 * methods['clean']['autoattack']['mean']:.1f}%).")
  best = best_within_budget(bench)
  if best and "pgd_at" in methods:
    diff, two_se = compare(methods[best], methods["pgd_at"], "autoattack", n)
    out.append(f"Best at most 3x the cost of clean training, of the rows measured over 3 seeds (the highest AutoAttack "
               f"accuracy; of rows within two standard errors of it, the cleaner beyond two standard errors, else the "
               f"more robust): `{defence_of(best)}`"
               + (f" (row `{best}`)" if defence_of(best) != best else "")
               + f", {100 * methods[best]['autoattack']['mean']:.1f}% "
               f"AutoAttack at {100 * methods[best]['clean']['mean']:.1f}% clean and "
               f"{methods[best]['cost_ratio']['mean']:.1f}x, {100 * diff:+.1f} points against "
               f"`pgd_at` ({100 * methods['pgd_at']['autoattack']['mean']:.1f}% at "
               f"{methods['pgd_at']['cost_ratio']['mean']:.1f}x; two standard errors {100 * two_se:.1f}).")
  return out


def best_within_budget(bench, budget=3.0, min_seeds=3):
  """The row whose defence `pipelines.defend` should apply (defence_of gives its name): of the rows
  defend can train, measured over at least `min_seeds` seeds (the benchmark's goals are 3-seed means),
  robust ones costing at most `budget` times clean training and protecting as well as the best of them
  (AutoAttack within two standard errors), the one most accurate on clean inputs; and of those as
  accurate as it (clean within two standard errors), the one most robust. So a difference within
  sampling error never decides. None without such a row."""
  methods, n = methods_of(bench), bench.get("options", {}).get("eval_examples", 0)
  cheap = {m: v for m, v in methods.items() if defence_of(m) not in (None, "lad", "clean")
           and len(v.get("seeds", [])) >= min_seeds and v.get("cost_ratio", {}).get("mean", math.inf) <= budget}
  if not cheap:
    return None

  def best_by(key, rows):  # rows as good as the best of them on key: below it by two standard errors at most
    top = max((cheap[m] for m in rows), key=lambda v: v[key]["mean"])
    return [m for m in rows if as_good(cheap[m], top, key, n)]

  return max(best_by("clean", best_by("autoattack", cheap)), key=lambda m: cheap[m]["autoattack"]["mean"])


def ensemble_share(bench):
  """How many images FAB-T and Square broke after APGD-CE and APGD-T, over the robust methods' runs."""
  later = total = 0
  for summary in methods_of(bench).values():
    for seed in summary.get("seeds", []):
      broken = seed.get("broken_by") or {}
      later += broken.get("fab-t", 0) + broken.get("square", 0)
      total += sum(v for k, v in broken.items() if k != "clean")
  return later, total


def _schedule(options):
  """How the methods trained, e.g. "fine-tuned for 10 epochs (Adam, rate 0.001)"."""
  how = "trained from scratch" if options.get("init") == "scratch" else "fine-tuned"
  rate = options.get("learning_rate")
  cyclic = options.get("lr_schedule") == "cyclic"
  return (f"{how} for {options.get('epochs')} epochs"
          + (f" (Adam, {'one-cycle rate peaking at' if cyclic else 'rate'} {rate:g})" if rate else ""))


def describe(bench, repo, dataset):
  o = bench.get("options", {})
  later, total = ensemble_share(bench)
  return (f"`python -m pipelines.benchmark robust --dataset={dataset}` (`benchmarks/robust_{dataset}.json`, "
          f"committed in {git_commit_of_file(repo, f'benchmarks/robust_{dataset}.json')}): {o.get('model')} "
          f"({bench.get('parameters')} parameters) {_schedule(o)} on "
          f"{o.get('train_examples')} training images, eps {bench.get('eps')}, scored on "
          f"{o.get('eval_examples')} test images outside the calibration split; AutoAttack % is per image the "
          f"worst of {o.get('autoattack_attack', 'AutoAttack')}; cost: training wall time over clean "
          f"training's in the same seed; ± is the standard deviation over seeds."
          + (f" Of the {total} images the ensemble broke, FAB-T and Square broke {later} that APGD-CE and "
             f"APGD-T had left." if total else "")
          + (f" Status: {bench['status'].rstrip('.')}." if bench.get("status") else ""))


def committed(repo):
  """(dataset, benchmark) for each committed benchmarks/robust_<dataset>.json with methods."""
  for dataset in DATASETS:
    bench = read_json(path_of(repo, dataset))
    if bench and "methods" in bench:
      yield dataset, bench


def _figures(bench, repo, dataset):
  """What the section and the README block both show: how it was measured, the table, the readings."""
  return (["", describe(bench, repo, dataset), "", robust_table(methods_of(bench)), ""]
          + [f"- {s}" for s in readings(bench)])


def section(repo):
  """docs/RESULTS.md's robust-training section (empty when no benchmark is committed)."""
  parts = []
  for dataset, bench in committed(repo):
    parts += ["", f"### Robust training methods compared, {dataset}", "",
              "An ablation in the benchmark's own, shorter setup (not the defend command's; for that, see "
              "the section above):"] + _figures(bench, repo, dataset)
    ablation = ablation_rows(bench)
    if ablation:
      parts += ["", "Ablation of `lad_robust`, its parts added one at a time (`+guided_start` is the default "
                "`lad_robust`; each row keeps the parts above it):", "", robust_table(ablation, labelled=False)]
  return "\n".join(parts)


def readme_block(repo):
  """The README's robust block: the first committed benchmark's table and readings."""
  from lad_tf import defences
  for dataset, bench in committed(repo):
    return "\n".join(_figures(bench, repo, dataset)
                     + [f"- `python -m pipelines.defend` applies `{defences.DEFAULT_DEFENCE}` unless told "
                        f"otherwise (`lad_tf.defences.DEFAULT_DEFENCE`).", ""])
  return None

