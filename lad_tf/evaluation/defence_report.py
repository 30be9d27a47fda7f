"""The report every defend run writes (DIR/report/report.html): the headline plot (clean and robust
accuracy, the original beside the defended model), accuracy against eps, which attack broke how many
images, the gradient-masking checks, adversarial examples, and for LAD runs the paper's figures.
One self-contained page, readable at 1200 px."""
import base64
import html
import os

import numpy as np

from lad_tf.evaluation import figures
from lad_tf.runtime.files import atomic_path

MODELS = ("original", "defended")
COLOURS = {"original": "#888888", "defended": "#2a7ab0"}
LAD_FIGURES = (("reconstructions.png", "The decoder G: test images and G(phi(x))"),
               ("success_rate.png", "LAD attack success against eps"),
               ("success_heatmap.png", "LAD success by source and target class"),
               ("transitions.png", "Decoded images as the latent crosses the boundary"),
               ("generated_examples.png", "LAD's boundary-guided examples"))


def headline(path, metrics):
  """Clean and robust accuracy of the original and the defended model, side by side, from 0 to 1."""
  plt = figures.plt
  fig, ax = plt.subplots(figsize=(6.4, 3.4))
  kinds = [("clean_accuracy", "clean"), ("robust_accuracy", _attack_name(metrics))]
  for i, model in enumerate(MODELS):
    values = [metrics[model].get(key) for key, _ in kinds]
    positions = np.arange(len(kinds)) + (i - 0.5) * 0.38
    bars = ax.bar(positions, [v or 0 for v in values], 0.36, color=COLOURS[model], label=_label(model, metrics))
    for bar, value in zip(bars, values):
      ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), "n/a" if value is None else f"{value:.1%}",
              ha="center", va="bottom", fontsize=9)
  ax.set_xticks(range(len(kinds)), [name for _, name in kinds])
  ax.set_ylim(0, 1.1)
  ax.set_ylabel("accuracy")
  ax.legend(loc="upper right", fontsize=8)
  ax.set_title(f"{metrics['dataset']}: the original and the {metrics['defence']}-defended classifier", fontsize=10)
  return figures.save(fig, path)


def eps_curve(path, sweeps, eps):
  """PGD accuracy against eps of each model, attacked itself (the gradient-masking checks' sweep)."""
  plt = figures.plt
  fig, ax = plt.subplots(figsize=(6.4, 3.4))
  for model, sweep in sweeps.items():
    points = sorted((float(k), v) for k, v in sweep.items())
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=COLOURS[model], label=model)
  ax.axvline(eps, color="#cc4444", lw=0.8, ls="--", label=f"eps {eps:g} (the report's)")
  ax.set_xlabel("L-inf eps")
  ax.set_ylabel("accuracy under PGD")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=8)
  ax.set_title("robust accuracy against eps", fontsize=10)
  return figures.save(fig, path)


def broken_by(path, robustness):
  """How many images each AutoAttack member broke, per model (clean: already misclassified)."""
  plt = figures.plt
  fig, ax = plt.subplots(figsize=(6.4, 2.4))
  order = ["clean", "apgd-ce", "apgd-t", "fab-t", "square", ""]
  colours = ["#cccccc", "#d9544d", "#f0a04b", "#8e6bbf", "#4bae8a", "#2a7ab0"]
  for row, model in enumerate(MODELS):
    counts = robustness.get(model, {}).get("broken_by", {})
    left = 0
    for key, colour in zip(order, colours):
      n = counts.get(key, 0)
      ax.barh(row, n, left=left, color=colour, label=(key or "robust") if row == 0 else None)
      left += n
  ax.set_yticks(range(len(MODELS)), MODELS)
  ax.set_xlabel(f"images ({robustness.get('examples')})")
  ax.legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45))
  ax.set_title("which attack broke each image", fontsize=10)
  return figures.save(fig, path)


def write(out_dir, metrics, checks, eps, examples=None, lad_figure_dir=None, class_names=None):
  """Writes out_dir/report.html (and its figures beside it); returns the page's path. `eps`: the
  dataset's attack eps (the checks' and AutoAttack's)."""
  parts = [_section("Clean and robust accuracy", _image(headline(os.path.join(out_dir, "headline.png"), metrics)),
                    _headline_note(metrics))]
  if checks:
    sweeps = {model: {"0": c["clean_accuracy"], **c["eps_sweep"]["accuracy"]} for model, c in checks.items()}
    parts.append(_section("Robust accuracy against eps", _image(eps_curve(os.path.join(out_dir, "eps.png"), sweeps, eps)),
                          f"PGD-20 on {next(iter(checks.values()))['n']} evaluation images, each model attacked itself."))
  if metrics.get("robust_evaluation"):
    parts.append(_section("What broke each image", _image(broken_by(os.path.join(out_dir, "broken_by.png"), {
        **metrics["robust_evaluation"], **metrics.get("robust_broken_by", {})})), ""))
  if checks:
    parts.append(_section("Gradient-masking checks", _checks_table(checks),
                          "A robust accuracy is trusted only when every check passes (docs: evaluation)."))
  if examples is not None and len(examples["x"]):
    grid = _examples_grid(os.path.join(out_dir, "examples.png"), examples, class_names)
    parts.append(_section("Adversarial examples against the defended model", _image(grid),
                          "Top: clean images (true class); bottom: AutoAttack's image (the model's answer)."))
  if lad_figure_dir:
    shown = [(name, caption) for name, caption in LAD_FIGURES if os.path.exists(os.path.join(lad_figure_dir, name))]
    if shown:
      parts.append("<h2>The paper's figures (LAD)</h2>" + "".join(
          f"<figure>{_image(os.path.join(lad_figure_dir, name))}<figcaption>{html.escape(caption)}</figcaption></figure>"
          for name, caption in shown))
  page = os.path.join(out_dir, "report.html")
  with atomic_path(page) as tmp:
    with open(tmp, "w") as f:
      f.write(_PAGE.format(title=html.escape(f"lad_tf: {metrics['defence']} on {metrics['dataset']}"),
                           body="\n".join(parts)))
  return page


def _attack_name(metrics):
  evaluation = metrics.get("robust_evaluation") or {}
  return f"AutoAttack {evaluation.get('version', '')} eps {evaluation.get('eps', 0):g}".strip() if evaluation else "robust"


def _label(model, metrics):
  return "original" if model == "original" else f"defended ({metrics['defence']})"


def _headline_note(metrics):
  evaluation = metrics.get("robust_evaluation") or {}
  if not evaluation:
    return "Robust accuracy was not measured (--autoattack=none)."
  return (f"{evaluation.get('attack', 'AutoAttack')} at eps {evaluation.get('eps'):g}, white-box on each model itself, on "
          f"the same {evaluation.get('examples')} evaluation images (never used for training or calibration).")


def _checks_table(checks):
  names = [k for k, v in next(iter(checks.values())).items() if isinstance(v, dict) and "passed" in v]
  head = "<tr><th>check</th>" + "".join(f"<th>{m}</th>" for m in checks) + "</tr>"
  rows = "".join(
      f"<tr><td>{html.escape(name)}</td>" + "".join(
          f"<td class='{'ok' if c[name]['passed'] else 'fail'}' title='{html.escape(c[name]['detail'])}'>"
          f"{'passed' if c[name]['passed'] else 'FAILED'}</td>" for c in checks.values()) + "</tr>"
      for name in names)
  return f"<table>{head}{rows}</table>"


def _examples_grid(path, examples, class_names):
  names = class_names or [str(i) for i in range(int(max(examples["y"].max(), examples["pred"].max())) + 1)]
  n = min(8, len(examples["x"]))
  images = np.concatenate([examples["x"][:n], examples["x_adv"][:n]])
  captions = [names[int(c)] for c in examples["y"][:n]] + [f"-> {names[int(c)]}" for c in examples["pred"][:n]]
  return figures.image_grid(path, images, captions, cols=n)


def _image(path):
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  return f"<img src='data:image/png;base64,{data}' alt='{html.escape(os.path.basename(path))}'>"


def _section(title, content, note):
  return f"<h2>{html.escape(title)}</h2>{content}" + (f"<p class='note'>{html.escape(note)}</p>" if note else "")


_PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}}
img{{max-width:100%;height:auto}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}
.ok{{color:#1a7f37}} .fail{{color:#c62828;font-weight:bold}} .note{{color:#555;font-size:90%}}
figure{{margin:1em 0}}</style></head><body><h1>{title}</h1>
{body}</body></html>"""
