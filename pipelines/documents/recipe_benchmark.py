"""The recipe benchmark's figures (benchmarks/recipe_<dataset>.json, `python -m pipelines.benchmark
recipe`: each row is `pipelines.defend` as users run it, with a few settings changed) as Markdown and
as a Pareto plot, clean accuracy against AutoAttack accuracy: the README's and the docs' figures for
the default defence come from here."""
import glob
import os

from lad_tf.runtime.files import read_json
from pipelines.documents.formatting import table

DATASETS = ("fashion_mnist", "mnist")
FIGURE = os.path.join("docs", "figures", "tradeoff_{dataset}.png")
# Settings tried beside the default in a cheaper setup (one seed, AutoAttack fast): their own figures.
SCREENINGS = os.path.join("benchmarks", "recipe_*_screening*.json")
SCREENING_FIGURE = "{name}.png"  # in docs/figures/, named after its benchmarks/ file
# Settings that move a defence along the trade-off, each drawn as a curve through the default row:
# {flag: its value in the default row (None: the benchmark's eps)}.
KNOBS = {"defence_tradeoff": 0.0, "defence_eps": None}


def path_of(repo, dataset):
  return os.path.join(repo, "benchmarks", f"recipe_{dataset}.json")


def committed(repo):
  """[(dataset, benchmark)] of the recipe benchmarks committed under benchmarks/."""
  found = [(d, read_json(path_of(repo, d))) for d in DATASETS]
  return [(d, bench) for d, bench in found if bench]


def flags_of(row):
  """The row's settings as `pipelines.defend` flags ('' for the default)."""
  return " ".join(f"--{k}={v:g}" if isinstance(v, float) else f"--{k}={v}" for k, v in row["sets"].items())


def _cell(row, key, scale=100.0):
  """mean ± std over the seeds, and over how many when some seeds lack the figure."""
  mean, std, n = row[key]["mean"] * scale, row[key]["std"] * scale, row[key].get("n", len(row["seeds"]))
  return (f"{mean:.1f}" + (f" ± {std:.1f}" if n > 1 else "")
          + (f" ({n} seeds)" if n < len(row["seeds"]) else ""))


def rows_table(bench):
  ordered = sorted(bench["rows"].items(), key=lambda item: (item[0] != "default", -item[1]["autoattack"]["mean"]))
  body = [[f"`{name}`" + (f" (`{flags_of(row)}`)" if row["sets"] else " (the command as it is)"),
           _cell(row, "clean"), _cell(row, "autoattack"), _cell(row, "pgd40"), _cell(row, "cost_ratio", 1.0),
           len(row["seeds"])] for name, row in ordered]
  return table(["row", "clean %", "AutoAttack %", "PGD-40 %", "defence time (x classifier's)", "seeds"], body)


def section(repo, heading="###", figures="figures/"):
  """Markdown: for each committed recipe benchmark, what it measured, its table and its figure
  (`figures`: docs/figures/ as the page links it; a page in docs/ itself: figures/)."""
  parts = []
  for dataset, bench in committed(repo):
    parts += [f"{heading} `python -m pipelines.defend --dataset={dataset}`, measured as run", "",
              f"`python -m pipelines.benchmark recipe --dataset={dataset}` "
              f"(`benchmarks/recipe_{dataset}.json`): each row is the default command with the flags shown; "
              f"clean accuracy on the whole evaluation split, {bench['autoattack_attack']} on "
              f"{bench['autoattack_examples']} of its images at eps {bench['eps']:g}, PGD-40 on the same "
              f"images; defence time is the defended stage's over the classifier stage's in the same run; "
              f"± is the standard deviation over seeds.", "", rows_table(bench), "",
              f"![clean against AutoAttack accuracy]({figures}{os.path.basename(FIGURE.format(dataset=dataset))})", ""]
  return "\n".join(parts) if parts else None


def _mean(rows, pick):
  values = [pick(r) for r in rows if pick(r) is not None]
  return sum(values) / len(values) if values else None


def headline(dataset, bench):
  """One sentence: the default command's figures beside the undefended classifier's."""
  from lad_tf import defences
  row = bench["rows"]["default"]
  seeds = row["seeds"]
  original_clean = _mean(seeds, lambda r: r["original"]["clean_accuracy"])
  original_robust = _mean(seeds, lambda r: r["original"]["robust_accuracy"])
  return (f"`python -m pipelines.defend --dataset={dataset}` (`{defences.DEFAULT_DEFENCE}`): "
          f"**{100 * row['clean']['mean']:.1f}% clean, {100 * row['autoattack']['mean']:.1f}% under "
          f"{bench['autoattack_attack'].split(' (')[0]}** at eps {bench['eps']:g} (the undefended classifier: "
          f"{100 * original_clean:.1f}% and {100 * original_robust:.1f}%), mean of {len(seeds)} seed(s), the "
          f"defence training in {row['cost_ratio']['mean']:.1f}x the classifier's time"
          + (f" (mean of {row['cost_ratio']['n']} seeds)." if "n" in row["cost_ratio"] else "."))


def readme_block(repo):
  """The README's results block: each committed benchmark's headline, table and figure."""
  found = committed(repo)
  if not found:
    return None
  parts = [""]
  for dataset, bench in found:
    parts += [f"- {headline(dataset, bench)}", "", rows_table(bench), "",
              f"![clean against AutoAttack accuracy]({FIGURE.format(dataset=dataset)})", ""]
  return "\n".join(parts)


def knob_curve(rows, knob, default):
  """[(knob's value, row name)] of the rows that set nothing but `knob` (the default row: `default`), by value."""
  return sorted((row["sets"].get(knob, default), name) for name, row in rows.items() if set(row["sets"]) <= {knob})


def screening_section(repo, name, figures="figures/"):
  """Markdown: a screening file's table (benchmarks/NAME) and its figure."""
  bench = read_json(os.path.join(repo, "benchmarks", name))
  figure = SCREENING_FIGURE.format(name=os.path.splitext(name)[0])
  return "\n".join([rows_table(bench), "", f"![clean against {bench['autoattack']} AutoAttack accuracy]({figures}{figure})"])


def pareto_figure(bench, path, undefended=True):
  """Clean accuracy (x) against AutoAttack accuracy (y) of every row; the marker's area grows with
  the row's cost; the rows no other row beats on both axes are joined by a dashed line, each knob's
  settings (KNOBS) by a solid one; `undefended` adds the undefended classifier's point."""
  from lad_tf.evaluation import figures
  plt = figures.plt
  rows = bench["rows"]
  points = {name: (100 * r["clean"]["mean"], 100 * r["autoattack"]["mean"], r["cost_ratio"]["mean"])
            for name, r in rows.items()}
  fig, ax = plt.subplots(figsize=(7, 5))
  labels = {}  # rows at the same point share one label
  for name, (clean, robust, cost) in points.items():
    ax.scatter([clean], [robust], s=60 * cost, alpha=0.6, color="tab:red" if name == "default" else "tab:blue")
    labels.setdefault((round(clean, 1), round(robust, 1)), []).append(name)
  for (clean, robust), names in labels.items():
    ax.annotate(", ".join(names), (clean, robust), textcoords="offset points", xytext=(6, 4), fontsize=8)
  seeds = rows["default"]["seeds"] if "default" in rows else []
  original = (_mean(seeds, lambda r: r["original"]["clean_accuracy"]), _mean(seeds, lambda r: r["original"]["robust_accuracy"]))
  if undefended and None not in original:
    ax.scatter([100 * original[0]], [100 * original[1]], s=60, color="grey", marker="x")
    ax.annotate("undefended", (100 * original[0], 100 * original[1]), textcoords="offset points", xytext=(-60, 6),
                fontsize=8)
  front = sorted((p[0], p[1]) for n, p in points.items()
                 if not any(q[0] >= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points.values()))
  if len(front) > 1:
    ax.plot(*zip(*front), color="grey", linewidth=1, linestyle="--", label="not beaten on both axes")
  for (knob, default), color in zip(KNOBS.items(), ("tab:green", "tab:purple")):
    curve = knob_curve(rows, knob, bench["eps"] if default is None else default)
    if len(curve) > 1:
      ax.plot([points[n][0] for _, n in curve], [points[n][1] for _, n in curve], color=color, linewidth=1.5,
              label=f"--{knob} = " + ", ".join(f"{v:g}" for v, _ in curve))
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower left", fontsize=8)
  ax.set_xlabel("clean accuracy %")
  ax.set_ylabel(f"AutoAttack {bench.get('autoattack', 'standard')} accuracy % (eps {bench['eps']:g}, "
                f"{bench['autoattack_examples']} images)")
  ax.set_title(f"{bench['dataset']}: the defend command's rows (marker area: defence time)")
  ax.grid(alpha=0.3)
  return figures.save(fig, path)


def write_figures(repo):
  """Draws each committed benchmark's Pareto figure, and each screening file's; returns their paths."""
  paths = [pareto_figure(bench, os.path.join(repo, FIGURE.format(dataset=d))) for d, bench in committed(repo)]
  for found in sorted(glob.glob(os.path.join(repo, SCREENINGS))):
    figure = SCREENING_FIGURE.format(name=os.path.splitext(os.path.basename(found))[0])
    paths.append(pareto_figure(read_json(found), os.path.join(repo, "docs", "figures", figure), undefended=False))
  return paths
