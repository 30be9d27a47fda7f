"""The paper's figures as PNG files (matplotlib, no display needed)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lad_tf.evaluation.report_tables import model_label  # noqa: E402


def show_image(ax, image):
  """Draws one [0, 1] image (grey or RGB) without ticks."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def save(fig, path):
  """Writes `fig` to `path` (PNG) atomically and closes it; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def reconstructions(path, originals, reconstructed, title="originals (top) and G(phi(x)) (bottom)"):
  """Fig. 3: originals above their reconstructions."""
  n = len(originals)
  fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.1))
  for i in range(n):
    show_image(axes[0, i], originals[i])
    show_image(axes[1, i], reconstructed[i])
  fig.suptitle(title, fontsize=9)
  return save(fig, path)


def success_curve(path, summary, title="LAD attack success rate"):
  """Fig. 5 (left): success rate against eps, raw and over correctly reconstructed sources."""
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for key, label in (("success_rate", "all sources"), ("success_rate_recon_ok", "reconstruction correct"),
                     ("targeted_rate", "reached the target"), ("inconsistency_rate", "Eq. 3 inconsistent")):
    eps = [float(e) for e in summary[key]]
    ax.plot(eps, list(summary[key].values()), marker="o", label=label)
  ax.set_xlabel("eps")
  ax.set_ylabel("rate")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def success_heatmap(path, matrix, class_names, title="success rate, source x target"):
  """Fig. 5 (right): success rate per (source, target) pair."""
  fig, ax = plt.subplots(figsize=(4.6, 4))
  im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
  ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
  ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
  ax.set_xlabel("target")
  ax.set_ylabel("source")
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def transitions(path, strips, eps_values, labels, class_names, title="transition across eps"):
  """Fig. 6: each row one example across increasing eps, with the classifier's label above."""
  rows, cols = len(strips), len(eps_values)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.95, rows * 1.15), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      show_image(axes[r, c], strips[r][c])
      axes[r, c].set_title(f"{eps_values[c]:g}: {class_names[labels[r][c]]}", fontsize=6)
  fig.suptitle(title, fontsize=9)
  return save(fig, path)


def image_grid(path, images, captions, cols=10, title=""):
  """Fig. 4: a grid of generated examples with captions."""
  rows = int(np.ceil(len(images) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i < len(images):
      show_image(ax, images[i])
      ax.set_title(captions[i], fontsize=6)
    else:
      ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=9)
  return save(fig, path)


def robust_accuracy_figure(report):
  """Accuracy against eps of every model of an evaluation report (report["eps_sweep"]: white-box PGD,
  each model attacked itself, at eps 0 and 0.5-4x the dataset's eps), with the report's adaptive
  AutoAttack rows as crosses at their eps. Returns the matplotlib figure (None without a sweep)."""
  sweep = report.get("eps_sweep") or {}
  if not sweep.get("accuracy"):
    return None
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  eps = sweep["eps"]
  auto = sorted((r for r in report.get("rows", []) if r["attack"] == "autoattack" and r["setting"] == "white_box"
                 and r.get("epsilon") is not None), key=lambda r: r["epsilon"])
  order = sorted(sweep["accuracy"], key=lambda n: (n != "original", n != "defended", n))  # JSON sorts keys
  for j, name in enumerate(order):
    values = sweep["accuracy"][name]
    style = "-" if name in ("original", "defended") else "--"  # the controls dashed, markers apart
    ax.plot(eps, [np.nan if v is None else v for v in values], style, marker="os^vDP*h"[j % 8],
            markersize=6 - 0.5 * (j % 4), color=f"C{j}", label=model_label(name), alpha=0.85)
    points = [(r["epsilon"], r.get(f"{name}_accuracy")) for r in auto if r.get(f"{name}_accuracy") is not None]
    if points:
      ax.plot(*zip(*points), linestyle="none", marker="x", markersize=8, color=f"C{j}")
  if auto:
    ax.plot([], [], linestyle="none", marker="x", color="k", label="AutoAttack (table rows)")
  if sweep.get("dataset_eps") is not None:
    ax.axvline(sweep["dataset_eps"], color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("eps (L-inf); dotted: the dataset's eps")
  ax.set_ylabel("accuracy under attack")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(f"white-box PGD-{sweep.get('steps')} on each model itself ({sweep.get('n')} images)", fontsize=9)
  return fig


def robust_accuracy(path, report):
  """Writes robust_accuracy_figure(report) as a PNG; returns the path (None without a sweep)."""
  fig = robust_accuracy_figure(report)
  return None if fig is None else save(fig, path)
