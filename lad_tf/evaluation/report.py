"""The robustness report: DIR/evaluation/report.json and a self-contained report.html.

The HTML needs nothing but the file: styles are inline, every plot is a base64 PNG drawn with
matplotlib (Agg), and there are no links, scripts or fonts to fetch. Tables follow the paper's shape
(original vs defended, white-box and transfer, the fine-tuning baselines); plots show robust accuracy
against eps (lad_tf.evaluation.figures.robust_accuracy_figure), the LAD sweep (Fig. 7), the LAD success heatmap
(source x target) and example grids.
"""
import base64
import html
import io
import os
import tempfile

import numpy as np

from lad_tf.evaluation import figures
from lad_tf.evaluation.figures import show_image
from lad_tf.evaluation.report_tables import model_label as _label, sanity_rows, sanity_status
from lad_tf.runtime.files import atomic_path, write_json

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 16px 0; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
.note { color: #555; font-size: 13px; } img { max-width: 100%; }
"""


def _fmt(value, percent=True):
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    if not np.isfinite(value):
      return "-"
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"
  return html.escape(str(value))


def _table(header, rows, left=1):
  out = ["<table><tr>"]
  out += [f"<th class='l'>{html.escape(h)}</th>" if i < left else f"<th>{html.escape(h)}</th>"
          for i, h in enumerate(header)]
  out.append("</tr>")
  for row in rows:
    out.append("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>"
                                for i, c in enumerate(row)) + "</tr>")
  out.append("</table>")
  return "\n".join(out)


def _png(fig, path=None):
  """The figure as an inline <img>; also saved as a PNG file at `path` when given (for documents
  that link the evaluation's plots, e.g. docs/RESULTS.md)."""
  import matplotlib.pyplot as plt
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
  plt.close(fig)
  if path:
    with atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
  data = base64.b64encode(buffer.getvalue()).decode("ascii")
  return f"<img alt='figure' src='data:image/png;base64,{data}'>"


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _model_names(report):
  return [name for name in report.get("models", {}) if name != "blackbox"]


def _accuracy_vs_eps(report, figure_dir=None):
  fig = figures.robust_accuracy_figure(report)
  return "" if fig is None else _png(fig, figure_dir and os.path.join(figure_dir, "accuracy_vs_eps.png"))


def _sweep_plot(report, figure_dir=None):
  sweep = report.get("lad_sweep") or []
  if not sweep:
    return ""
  plt = _plt()
  eps = [r["epsilon"] for r in sweep]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
  axes[0].plot(eps, [r["ft_clean_accuracy"] for r in sweep], marker="s", label="FT-eps (clean)")
  for name, color in (("original", "C1"), ("defended", "C2")):
    value = report["clean"].get(name)
    if value is not None:
      axes[0].axhline(value, color=color, linestyle=":", label=f"{_label(name)} (clean)")
  axes[0].set_title("clean accuracy of FT-eps models", fontsize=10)
  for key, label in (("original_lad_accuracy", "original"), ("defended_lad_accuracy", "LAD-defended"),
                     ("ft_lad_accuracy", "FT-eps")):
    axes[1].plot(eps, [np.nan if r[key] is None else r[key] for r in sweep], marker="o", label=label)
  axes[1].set_title("accuracy on held-out LAD examples", fontsize=10)
  for ax in axes:
    ax.set_xlabel("LAD eps")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _png(fig, figure_dir and os.path.join(figure_dir, "lad_sweep.png"))


def _heatmaps(report, figure_dir=None):
  gen = report.get("lad_generation") or {}
  if not gen.get("success_matrix"):
    return ""
  plt = _plt()
  names = report.get("class_names") or [str(i) for i in range(len(gen["success_matrix"]))]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
  for ax, key, title in ((axes[0], "success_matrix", "LAD success: f(x') != source"),
                         (axes[1], "targeted_matrix", "LAD reached target: f(x') == target")):
    matrix = np.array([[np.nan if v is None else v for v in row] for row in gen[key]], float)
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)))
    ax.set_yticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
  return _png(fig, figure_dir and os.path.join(figure_dir, "lad_success_heatmaps.png"))


def _example_grid(examples, lad_examples, class_names, figure_dir=None):
  """One row pair per attack (clean above, adversarial below, with the model's label), then LAD's."""
  rows = [(name, ex) for name, ex in examples.items() if len(ex["x"])]
  lad = lad_examples is not None and len(lad_examples.get("x_adv", []))
  if not rows and not lad:
    return ""
  plt = _plt()
  cols = max([len(ex["x"]) for _, ex in rows] + ([len(lad_examples["x_adv"])] if lad else [1]))
  n_rows = 2 * len(rows) + (1 if lad else 0)
  fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 1.05, n_rows * 1.2), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  name_of = lambda c: class_names[int(c)] if class_names and int(c) < len(class_names) else str(int(c))
  for r, (attack, ex) in enumerate(rows):
    eps = ex.get("epsilon")
    for c in range(len(ex["x"])):
      top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
      top.axis("on")
      bottom.axis("on")
      show_image(top, ex["x"][c])
      show_image(bottom, ex["x_adv"][c])
      top.set_title(name_of(ex["y"][c]), fontsize=6)
      caption = f"-> {name_of(ex['pred'][c])}"
      if ex.get("target") is not None:
        caption += f" (t {name_of(ex['target'][c])})"
      bottom.set_title(caption, fontsize=6)
    axes[2 * r, 0].set_ylabel("clean", fontsize=7)
    axes[2 * r + 1, 0].set_ylabel(attack.upper() + (f"\neps {eps:g}" if eps is not None else ""), fontsize=7)
  if lad:
    r = n_rows - 1
    for c in range(len(lad_examples["x_adv"])):
      ax = axes[r, c]
      ax.axis("on")
      show_image(ax, lad_examples["x_adv"][c])
      label = lad_examples.get("label")
      caption = f"{name_of(lad_examples['source'][c])}"
      caption += f"->{name_of(label[c])}" if label is not None else ""
      ax.set_title(caption + f" e{float(lad_examples['eps'][c]):g}", fontsize=6)
    axes[r, 0].set_ylabel("LAD", fontsize=7)
  fig.tight_layout()
  return _png(fig, figure_dir and os.path.join(figure_dir, "attack_examples.png"))


def _counts(row):
  """The row's distinct source images and (image, target) pairs ("-" for untargeted rows)."""
  images = row.get("n_images", row.get("n"))
  return [_fmt(images, False), _fmt(row.get("n_pairs"), False)]


def _attack_tables(report):
  names = _model_names(report)
  baselines = [n for n in names if n.startswith("baseline_")]
  parts = []
  wb = [r for r in report["rows"] if r["setting"] == "white_box"]
  if wb:
    header = ["attack", "eps", "images", "(image, target) pairs", "success on original", "original", "LAD-defended (attacked itself)",
              "LAD-defended (fixed set: original's examples)"]
    header += [f"{_label(b)} (attacked itself)" for b in baselines]
    header += [f"{_label(b)} (fixed set: original's examples)" for b in baselines]
    header += ["mean L2", "mean L0"]
    body = []
    for r in wb:
      body.append([r["attack"].upper(), _fmt(r["epsilon"], False), *_counts(r),
                   _fmt(r.get("attack_success_rate")), _fmt(r.get("original_accuracy")),
                   _fmt(r.get("defended_accuracy")), _fmt(r.get("defended_accuracy_fixed_set"))]
                  + [_fmt(r.get(f"{b}_accuracy")) for b in baselines]
                  + [_fmt(r.get(f"{b}_accuracy_fixed_set")) for b in baselines]
                  + [_fmt(r.get("mean_l2"), False), _fmt(r.get("mean_l0"), False)])
    parts.append("<h2>White-box (known) attacks: accuracy under attack (paper Tables II, V, VIII)</h2>")
    parts.append(_table(header, body))
  tr = [r for r in report["rows"] if r["setting"] == "transfer"]
  if tr:
    header = ["attack", "eps", "images", "(image, target) pairs", "black-box model", "original", "LAD-defended"]
    header += [_label(b) for b in baselines]
    body = [[r["attack"].upper(), _fmt(r["epsilon"], False), *_counts(r), _fmt(r.get("blackbox_accuracy")),
             _fmt(r.get("original_accuracy")), _fmt(r.get("defended_accuracy"))]
            + [_fmt(r.get(f"{b}_accuracy")) for b in baselines] for r in tr]
    parts.append("<h2>Transfer (unknown) attacks from the black-box model (paper Tables III, VI, IX)</h2>")
    parts.append(_table(header, body))
  return "\n".join(parts)


def _sanity_table(report):
  sanity = report.get("sanity") or {}
  if not sanity.get("models"):
    return ""
  body = [[html.escape(label), html.escape(check), "passed" if passed else "<b>FAILED</b>", html.escape(detail)]
          for label, check, passed, detail in sanity_rows(sanity)]
  return (f"<h2>Gradient-masking checks ({sanity.get('n')} images, eps {_fmt(sanity.get('eps'), False)}: "
          f"{sanity_status(sanity)})</h2>" + _table(["model", "check", "result", "figures"], body, left=4))


def render_html(report, examples=None, lad_examples=None, figure_dir=None):
  """The report as one self-contained HTML page (str); its plots are also saved as PNG files in
  figure_dir when given."""
  title = f"LAD robustness report: {report.get('dataset', '')}"
  parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
  n = report.get("n", {})
  parts.append(f"<p class='note'>work directory {html.escape(str(report.get('workdir', '')))}; created "
               f"{html.escape(str(report.get('created', '')))}; {n.get('untargeted', '-')} untargeted attack "
               f"images; {n.get('targeted_images', '-')} distinct targeted source images in "
               f"{n.get('targeted_pairs', n.get('targeted', '-'))} (image, target) pairs; from "
               f"{n.get('evaluation_split', '-')} evaluation images.</p>")
  models = report.get("models", {})
  body = []
  for name, info in models.items():
    body.append([html.escape(_label(name) if name != "blackbox" else "black-box model (attackers')"),
                 _fmt(info.get("clean_accuracy")), _fmt(info.get("fine_tuned_on"), False),
                 _fmt(info.get("epsilon"), False)])
  parts.append("<h2>Clean accuracy (paper Tables IV, VII, X)</h2>")
  parts.append(_table(["model", "clean accuracy", "fine-tuned on (examples)", "attack eps of its set"], body))
  parts.append(_attack_tables(report))
  parts.append(_sanity_table(report))
  plot = _accuracy_vs_eps(report, figure_dir)
  if plot:
    sweep = report["eps_sweep"]
    parts.append("<h2>Robust accuracy against eps</h2><p class='note'>Each model attacked itself (white-box "
                 f"PGD-{sweep.get('steps')}) on the {sweep.get('n')} images of the gradient-masking checks at eps "
                 f"{', '.join(f'{e:g}' for e in sweep.get('eps', []))}; crosses: the table's adaptive AutoAttack "
                 "rows.</p>" + plot)
  sweep = report.get("lad_sweep") or []
  if sweep:
    parts.append("<h2>LAD sweep: FT-eps models (paper Fig. 7)</h2>")
    parts.append(_table(["eps", "fine-tuned on", "held out", "FT-eps clean", "FT-eps on LAD",
                         "original on LAD", "LAD-defended on LAD", "defended trained on this eps"],
                        [[_fmt(r["epsilon"], False), str(r["n_fit"]), str(r["n_heldout"]),
                          _fmt(r["ft_clean_accuracy"]), _fmt(r["ft_lad_accuracy"]),
                          _fmt(r["original_lad_accuracy"]), _fmt(r["defended_lad_accuracy"]),
                          _fmt(r["defended_trained_on_this_eps"])] for r in sweep]))
    parts.append(_sweep_plot(report, figure_dir))
  heat = _heatmaps(report, figure_dir)
  if heat:
    gen = report["lad_generation"]
    parts.append(f"<h2>LAD generated set: success by source and target ({gen.get('n')} examples, eps "
                 f"{', '.join(f'{e:g}' for e in gen.get('eps_values', []))})</h2>" + heat)
  grid = _example_grid(examples or {}, lad_examples, report.get("class_names"), figure_dir)
  if grid:
    parts.append("<h2>Examples: each attack next to LAD's</h2><p class='note'>Clean images (their label) "
                 "above their adversarial versions against the original classifier (its label; t: target); "
                 "last row: LAD examples (source -&gt; the original's label, eps).</p>" + grid)
  notes = report.get("notes") or []
  if notes:
    parts.append("<h2>Protocol notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(t)}</li>"
                                                          for t in notes) + "</ul>")
  config = report.get("config")
  if config:
    import json
    parts.append("<h2>Settings</h2><pre class='note'>" + html.escape(json.dumps(config, indent=1, default=str))
                 + "</pre>")
  parts.append("</body></html>")
  return "\n".join(p for p in parts if p)


def write_report(out_dir, report, examples=None, lad_examples=None):
  """Writes out_dir/report.json (atomically), out_dir/report.html (temp file, then rename) and its
  plots as out_dir/figures/*.png."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "report.json")
  html_path = os.path.join(out_dir, "report.html")
  write_json(json_path, report)
  page = render_html(report, examples, lad_examples, figure_dir=os.path.join(out_dir, "figures"))
  fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".html")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(page)
  os.chmod(tmp, 0o644)
  os.replace(tmp, html_path)
  return json_path, html_path
