"""The detection sweep's figure (benchmarks/detection_sweep.json, `python -m pipelines.benchmark
detection_sweep`): for every parameter setting, the benign clients it flags against how many queries
an attack run sends before it is flagged, with the goals' corner shaded and the defaults marked."""
import os

from lad_tf.runtime.files import read_json

BENCHMARK = os.path.join("benchmarks", "detection_sweep.json")
FIGURE = os.path.join("docs", "figures", "detection_sweep.png")
SWEPT = ("quantization_step", "window_size", "match_threshold", "neighbours_to_flag")


def sweep_figure(bench, path):
  """x: benign clients flagged (symlog); y: the slower attack's median queries to detection; colour:
  the share of Square runs detected."""
  from lad_tf.evaluation import figures
  from serving import config
  plt = figures.plt
  defaults = config.DetectionConfig()
  attacks = [a for a in ("square", "hopskipjump") if a in bench["rows"][0]]
  rows = [r for r in bench["rows"] if all(r[a]["median_queries"] is not None for a in attacks)]
  clients = bench["benign_clients"]
  x = [r["benign_flagged_share"] * clients for r in rows]
  y = [max(r[a]["median_queries"] for a in attacks) for r in rows]
  share = [100 * min(r[a]["detected_share"] for a in attacks) for r in rows]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  goals = bench["goals"]
  ax.fill_between([-0.5, goals["benign_flagged_share"] * clients], 0, goals["median_queries_to_detection"],
                  color="tab:green", alpha=0.15, label=f"the goals: a median of <= {goals['median_queries_to_detection']} "
                  f"queries, <= {goals['benign_flagged_share']:.1%} of clients flagged")
  dots = ax.scatter(x, y, c=share, cmap="viridis", s=22, alpha=0.8)
  for r, xi, yi in zip(rows, x, y):
    if all(r[k] == getattr(defaults, k) for k in SWEPT):
      ax.scatter([xi], [yi], s=140, facecolors="none", edgecolors="tab:red", linewidths=1.5, label="the defaults")
  fig.colorbar(dots, ax=ax, label="runs detected % (the worse attack)")
  ax.set_xscale("symlog", linthresh=1)
  ax.set_ylim(0, max(y) + 2)
  ax.set_xlabel(f"benign clients flagged (of {clients:,})")
  ax.set_ylabel("median queries to detection (the slower attack)")
  ax.set_title(f"Query detection on {bench['dataset']}, eps {bench['eps']:g}: {len(bench['rows'])} parameter settings",
               fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center right")
  return figures.save(fig, path)


def write_figures(repo):
  """Draws the committed sweep's figure; returns [its path] ([] when no sweep is committed)."""
  bench = read_json(os.path.join(repo, BENCHMARK))
  return [sweep_figure(bench, os.path.join(repo, FIGURE))] if bench else []
