"""LAD's boundary machinery as a guide for an input-space adversary.

For each training example, with the frozen classifier's encoder phi, the decoder G and the fitted
attention-SVM boundaries (lad_tf.lad.boundary): the nearest rival class t (the boundary closest to z in
the attended latent space), its normal d (lad_tf.lad.generation's relative convention) and the image-space
direction sign(G(z + s * beta * d) - G(z)). Taking the difference of two decodes cancels the decoder's
reconstruction error: only what moving toward the boundary changes remains. Computed once, before
training (the decoder and boundaries belong to the original classifier and only steer the start).
"""
import numpy as np

from lad_tf.lad import generation
from lad_tf.models import split_at_latent


def features(classifier, generator, boundaries, x, y, strength=0.5, decoded_eps=(0.1, 0.2, 0.3),
             latent_layer="latent", seed=0, batch_size=256, need=("guide", "target", "decoded"),
             threshold=0.0):
  """Per-example extras for lad_tf.robust.losses.LadRobustLoss.

  Args:
    classifier: the trained classifier whose latent space the boundaries were fitted in.
    generator: G, latents -> images in [0, 1].
    boundaries: lad_tf.lad.boundary.Boundaries of that classifier.
    x, y: training images (float32 NHWC in [0, 1]) and labels.
    strength: how far along d the guide looks, in units of the mean latent norm.
    decoded_eps: LAD's eps values (same unit) for the decoded on-manifold examples, drawn per example
      with random targets (the paper's Eq. 4 examples).
    latent_layer: the classifier's latent layer.
    seed: seed of the random eps and targets of the decoded examples.
    batch_size: prediction batch size.
    need: which of "guide", "target", "decoded" to compute.
    threshold: pixels whose decode changes by at most this get no guide (0: random sign there).
  Returns:
    dict: "guide" int8 (N, H, W, C) in {-1, 0, 1}; "target" int64 (N,); "decoded" float32 images.
  """
  unknown = set(need) - {"guide", "target", "decoded"}
  if unknown:
    raise ValueError(f"unknown features {sorted(unknown)}; choose from guide, target, decoded")
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
  phi, _ = split_at_latent(classifier, latent_layer)
  z = phi.predict(x, batch_size=batch_size, verbose=0).astype(np.float32)
  scale = generation.latent_scale(z)
  out = {}
  if "guide" in need or "target" in need:
    target = generation.choose_targets(z, y, boundaries, "nearest")
    out["target"] = target.astype(np.int64)
    if "guide" in need:
      beta = boundaries.attention(z, y, target)
      d = generation.directions(boundaries, y, target, "relative", scale)
      moved = generator.predict(generation.perturb_latents(z, beta, d, strength), batch_size=batch_size,
                                verbose=0)
      base = generator.predict(z, batch_size=batch_size, verbose=0)
      diff = moved - base
      out["guide"] = (np.sign(diff) * (np.abs(diff) > threshold)).astype(np.int8)
  if "decoded" in need:
    rng = np.random.default_rng(seed)
    eps = rng.choice(np.asarray(decoded_eps, np.float32), size=len(y))
    config = generation.GenerationConfig(target="random", seed=seed, batch_size=batch_size)
    out["decoded"] = generation.sample_adversarial(phi, generator, boundaries, x, y, eps, config,
                                                   scale).astype(np.float32)
  return out
