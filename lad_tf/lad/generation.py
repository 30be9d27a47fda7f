"""Boundary-guided generation (Section III-B b, c): z' = z + eps * beta * d, x' = G(z').

Convention for eps. The authors use the raw SVM weight as d, so their eps scales with |w|, which
depends on the SVM's c, learning rate and epochs and on the classifier's latent scale (NOTES: |w| about
0.9 against |z| about 9.5 for one LeNet, |w| about 0.1 against |z| about 46 for ours). lad_tf's default,
`normal="relative"`, uses d = w / |w| * s where s is the mean latent norm of the calibration examples:
eps = 1 moves a latent by the length of a typical latent, whatever the model. `normal="raw"` is the
authors' convention (use the spec's `authors_eps_grid` with it).
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np

from lad_tf.errors import ArtifactNotFoundError

NORMALS = ("relative", "raw")
ROW_FIELDS = ("x_adv", "source", "target", "eps", "latent_label", "image_label", "index")
TARGETS = ("random", "nearest")


@dataclasses.dataclass
class GenerationConfig:
  eps_grid: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
  normal: str = "relative"
  target: str = "random"
  adaptive: bool = False        # also find each example's smallest crossing eps
  eps_step: float = 0.05        # adaptive: step from eps_step up to eps_max
  eps_max: float = 2.0
  seed: int = 0
  batch_size: int = 256


@dataclasses.dataclass
class GeneratedSet:
  """The LAD adversarial set: one row per (seed example, eps).

  Rows: x_adv (images G(z')), source (the seed's label), target (the boundary crossed towards), eps,
  latent_label (f_p(z')), image_label (f(G(z'))), index (the seed's row in the calibration split).
  Per seed: recon_label (f(G(z))) and, when generated adaptively, crossing_eps (nan: never crossed).
  latent_scale: the unit of eps under the relative convention.
  """
  x_adv: np.ndarray
  source: np.ndarray
  target: np.ndarray
  eps: np.ndarray
  latent_label: np.ndarray
  image_label: np.ndarray
  index: np.ndarray
  recon_label: np.ndarray
  latent_scale: float
  crossing_eps: Optional[np.ndarray] = None

  def __len__(self):
    return len(self.eps)

  def rows_at(self, eps_values):
    """Rows whose eps is one of eps_values (compared to 6 decimals)."""
    return np.flatnonzero(np.isin(np.round(self.eps, 6), np.round(np.asarray(eps_values, np.float32), 6)))

  def pair_rates(self, num_classes, eps=None):
    """(source x target) matrices of the success rate (f(x') != source) and the targeted rate
    (f(x') == target), over all eps or one eps; nan where a pair has no rows."""
    rows = np.ones(len(self), bool) if eps is None else np.isclose(self.eps, eps)
    success = np.full((num_classes, num_classes), np.nan)
    targeted = np.full((num_classes, num_classes), np.nan)
    for s in range(num_classes):
      for t in range(num_classes):
        sel = rows & (self.source == s) & (self.target == t)
        if np.any(sel):
          success[s, t] = np.mean(self.image_label[sel] != s)
          targeted[s, t] = np.mean(self.image_label[sel] == t)
    return success, targeted

  def save(self, path):
    arrays = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
    arrays["latent_scale"] = np.float32(self.latent_scale)
    np.savez_compressed(path, **arrays)

  @classmethod
  def load(cls, path, calibration_size=None):
    """Reads generated.npz; a clear error when it is missing, incomplete or does not index a
    calibration split of `calibration_size` examples."""
    import os
    if not os.path.exists(path):
      raise ArtifactNotFoundError(f"{path} is missing: run the defend pipeline's generation stage first")
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
    required = [f.name for f in dataclasses.fields(cls) if f.name != "crossing_eps"]
    missing = [k for k in required if k not in arrays]
    if missing:
      raise ValueError(f"{path} has no array(s) {missing}: it was not written by lad_tf.lad.generation")
    generated = cls(**{k: arrays[k] for k in required}, crossing_eps=arrays.get("crossing_eps"))
    generated.latent_scale = float(generated.latent_scale)
    if calibration_size is not None and len(generated) and generated.index.max() >= calibration_size:
      raise ValueError(f"{path} indexes calibration example {generated.index.max()}, but the calibration "
                       f"split has {calibration_size}: the work directory's settings do not match")
    return generated


def perturb_latents(z, beta, d, eps):
  """Moves latents along the boundary normal.

  Args:
    z: latents phi(x), shape (N, D).
    beta: attention of each latent under its (source, target) boundary, shape (N, D).
    d: boundary normal of each example, oriented from source to target, shape (N, D).
    eps: perturbation strength, a scalar or shape (N,).
  Returns:
    z + eps * beta * d, shape (N, D).
  """
  eps = np.asarray(eps, np.float32)
  if eps.ndim == 1:
    eps = eps[:, None]
  return z + eps * beta * d


def latent_scale(z):
  """Mean L2 norm of latents: the unit of eps under the "relative" convention."""
  return float(np.mean(np.linalg.norm(z, axis=-1)))


def directions(boundaries, source, target, normal="relative", scale=1.0):
  """The normal d of each example's (source, target) boundary under the chosen convention."""
  if normal not in NORMALS:
    raise ValueError(f"normal must be one of {NORMALS}, got '{normal}'")
  d = boundaries.normal(source, target).astype(np.float32)
  if normal == "relative":
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12) * scale
  return d


def choose_targets(z, source, boundaries, mode="random", seed=0):
  """A target class for each example: uniformly among the other classes (the authors' choice), or
  the class whose boundary is nearest in the attended latent space (mode "nearest")."""
  if mode not in TARGETS:
    raise ValueError(f"target must be one of {TARGETS}, got '{mode}'")
  source = np.asarray(source)
  k = boundaries.num_classes
  if mode == "random":
    offset = np.random.default_rng(seed).integers(1, k, size=len(source))
    return (source + offset) % k
  distances = np.full((len(source), k), np.inf)
  for t in range(k):
    others = source != t
    if np.any(others):
      s, tt = source[others], np.full(others.sum(), t)
      distances[others, t] = np.abs(boundaries.score(z[others], s, tt)) / np.linalg.norm(
          boundaries.normal(s, tt), axis=-1)
  return np.argmin(distances, axis=1)


def _labels(model, x, batch_size):
  return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def _prepare(phi, boundaries, x, y, config, scale=None):
  """Latents, targets, attention and oriented normals of seed examples."""
  z = phi.predict(x, batch_size=config.batch_size, verbose=0).astype(np.float32)
  target = choose_targets(z, y, boundaries, config.target, config.seed)
  beta = boundaries.attention(z, y, target)
  scale = latent_scale(z) if scale is None else scale
  return z, target, beta, directions(boundaries, y, target, config.normal, scale), scale


def sample_adversarial(phi, generator, boundaries, x, y, eps, config, scale=None):
  """One generated example per seed, each with its own eps (shape (N,)): G(z + eps * beta * d).

  Used to generate on the fly during fine-tuning; `scale` fixes the relative-eps unit (default: the
  mean latent norm of x)."""
  z, _, beta, d, _ = _prepare(phi, boundaries, x, y, config, scale)
  return generator.predict(perturb_latents(z, beta, d, eps), batch_size=config.batch_size, verbose=0)


def generate(classifier, phi, head, generator, boundaries, x, y, config, progress=None):
  """Generates the LAD adversarial set from examples (x, y).

  Args:
    classifier: f, the full model (images -> logits).
    phi, head: f split at the latent layer (lad_tf.models.split_at_latent).
    generator: G (latents -> images).
    boundaries: lad_tf.lad.boundary.Boundaries fitted on the classifier's latents.
    x, y: seed examples (the calibration split) and their labels.
    config: GenerationConfig.
    progress: optional callable(str) for progress lines.
  Returns:
    a GeneratedSet (crossing_eps only with config.adaptive).
  """
  say = progress or (lambda _: None)
  z, target, beta, d, scale = _prepare(phi, boundaries, x, y, config)
  recon_label = _labels(classifier, generator.predict(z, batch_size=config.batch_size, verbose=0),
                        config.batch_size)
  rows = {k: [] for k in ROW_FIELDS}
  for i, eps in enumerate(config.eps_grid):
    z_adv = perturb_latents(z, beta, d, eps)
    x_adv = generator.predict(z_adv, batch_size=config.batch_size, verbose=0)
    rows["x_adv"].append(x_adv.astype(np.float32))
    rows["latent_label"].append(_labels(head, z_adv, config.batch_size))
    rows["image_label"].append(_labels(classifier, x_adv, config.batch_size))
    rows["source"].append(y)
    rows["target"].append(target)
    rows["eps"].append(np.full(len(y), eps, np.float32))
    rows["index"].append(np.arange(len(y)))
    say(f"generation: eps {eps:g} ({i + 1}/{len(config.eps_grid)}): "
        f"success {np.mean(rows['image_label'][-1] != y):.3f}")
  return GeneratedSet(**{k: np.concatenate(v) for k, v in rows.items()}, recon_label=recon_label,
                      latent_scale=float(scale),
                      crossing_eps=crossing_eps(classifier, generator, z, beta, d, y, config) if config.adaptive
                      else None)


def crossing_eps(classifier, generator, z, beta, d, y, config):
  """Each example's smallest eps on the grid eps_step, 2 eps_step, ... eps_max at which f(G(z'))
  leaves the source class (nan where none does)."""
  found = np.full(len(y), np.nan, np.float32)
  steps = int(round(config.eps_max / config.eps_step))
  for k in range(1, steps + 1):
    open_ = np.isnan(found)
    if not np.any(open_):
      break
    eps = k * config.eps_step
    x_adv = generator.predict(perturb_latents(z[open_], beta[open_], d[open_], eps),
                              batch_size=config.batch_size, verbose=0)
    crossed = _labels(classifier, x_adv, config.batch_size) != y[open_]
    found[np.flatnonzero(open_)[crossed]] = eps
  return found


def summarize(generated):
  """Per-eps rates of a GeneratedSet.

  success_rate: fraction whose image label differs from the source label.
  success_rate_recon_ok: the same over sources whose reconstruction G(z) is still classified
    correctly (a generator error is then not counted as a successful attack).
  targeted_rate: fraction classified as the chosen target.
  inconsistency_rate: fraction where f_p(z') != f(G(z')), the Eq. 3 violations.
  """
  g = generated
  recon_ok = g.recon_label[g.index] == g.source
  out = {"success_rate": {}, "success_rate_recon_ok": {}, "targeted_rate": {}, "inconsistency_rate": {}}
  for eps in np.unique(g.eps):
    rows = g.eps == eps
    fooled = g.image_label[rows] != g.source[rows]
    key = f"{float(eps):g}"
    out["success_rate"][key] = float(np.mean(fooled))
    ok = recon_ok[rows]
    out["success_rate_recon_ok"][key] = float(np.mean(fooled[ok])) if np.any(ok) else float("nan")
    out["targeted_rate"][key] = float(np.mean(g.image_label[rows] == g.target[rows]))
    out["inconsistency_rate"][key] = float(np.mean(g.latent_label[rows] != g.image_label[rows]))
  out["reconstruction_accuracy"] = float(np.mean(g.recon_label == g.source[: len(g.recon_label)]))
  if g.crossing_eps is not None:
    out["crossing_eps_mean"] = float(np.nanmean(g.crossing_eps))
    out["crossing_eps_never"] = float(np.mean(np.isnan(g.crossing_eps)))
  return out
