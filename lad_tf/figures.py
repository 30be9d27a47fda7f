"""The paper's figures as PNG files (matplotlib, no display needed)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def show_image(ax, image):
  """Draws one [0, 1] image (grey or RGB) without ticks."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def _save(fig, path):
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
  return _save(fig, path)


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
  return _save(fig, path)


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
  return _save(fig, path)


def transitions(path, strips, eps_values, labels, class_names, title="transition across eps"):
  """Fig. 6: each row one example across increasing eps, with the classifier's label above."""
  rows, cols = len(strips), len(eps_values)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.95, rows * 1.15), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      show_image(axes[r, c], strips[r][c])
      axes[r, c].set_title(f"{eps_values[c]:g}: {class_names[labels[r][c]]}", fontsize=6)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


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
  return _save(fig, path)


def accuracy_bars(path, accuracies, title="clean accuracy"):
  """Original vs defended clean accuracy."""
  fig, ax = plt.subplots(figsize=(3.6, 2.8))
  names = list(accuracies)
  values = [accuracies[k] for k in names]
  ax.bar(names, values, color=["#888888", "#2a7ab0"][: len(names)])
  low = max(0.0, min(values) - 0.05)
  ax.set_ylim(low, 1.0)
  for i, v in enumerate(values):
    ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
  ax.set_title(title, fontsize=9)
  return _save(fig, path)
