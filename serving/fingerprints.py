"""Blacklight's probabilistic fingerprints of a query (Li et al., USENIX Security 2022).

A query-based attack sends long runs of images that differ by a small perturbation. Quantising
the pixels coarsely (a step well above the attack's eps) maps most of those images to the same
values; hashing every sliding window of the flattened quantised image, and keeping the largest
`top_k` distinct hashes, gives a fingerprint whose overlap with another image's fingerprint
estimates how much content the two share (a min-hash sketch). Windows are hashed by content, not
position, so a shifted copy keeps most of its hashes.

Our own vectorised implementation: a window's hash is the high half of its dot product (mod 2^64)
with fixed random odd 64-bit coefficients, so a batch of images is fingerprinted in a few numpy calls.
"""
import functools

import numpy as np

_EMPTY = np.uint32(0)  # Pads fingerprints of images with fewer distinct windows; never a hash.


@functools.lru_cache(maxsize=8)
def _coefficients(window, seed=0x5EED):
  rng = np.random.default_rng(seed)
  return rng.integers(1, 2**63, size=window, dtype=np.uint64) | np.uint64(1)


def quantise(images, step):
  """Pixels in [0, 1] -> integer bins of `step` levels of 255 (Blacklight's quantisation)."""
  flat = np.asarray(images, np.float32).reshape(len(images), -1)
  return np.floor(np.clip(flat, 0.0, 1.0) * (255.0 / step)).astype(np.uint64)


def window_hashes(images, step, window):
  """[n, positions] uint32 hashes of every sliding window of each flattened quantised image."""
  bins = quantise(images, step)
  window = min(window, bins.shape[1])
  n, length = bins.shape
  step_n, step_p = bins.strides
  views = np.lib.stride_tricks.as_strided(bins, (n, length - window + 1, window), (step_n, step_p, step_p),
                                          writeable=False)
  h = views @ _coefficients(window)  # Wraps modulo 2^64; the high half mixes every pixel.
  return (h >> np.uint64(32)).astype(np.uint32) | np.uint32(1)


def fingerprints(images, step=50, window=20, top_k=20):
  """[n, top_k] uint32: each image's `top_k` largest distinct window hashes, ascending.

  An image with fewer distinct windows is padded with 0, which no hash equals.
  """
  hashes = np.sort(window_hashes(images, step, window), axis=1)
  hashes[:, 1:][hashes[:, 1:] == hashes[:, :-1]] = _EMPTY  # Repeats count once.
  hashes.sort(axis=1)
  top = hashes[:, -top_k:]
  if top.shape[1] < top_k:  # Fewer windows than hashes kept.
    top = np.concatenate([np.full((len(top), top_k - top.shape[1]), _EMPTY, np.uint32), top], axis=1)
  return np.ascontiguousarray(top)


def shared_counts(history, fingerprint):
  """How many hashes of `fingerprint` (ascending, [top_k]) each row of `history` also holds."""
  if not len(history):
    return np.zeros(0, np.int64)
  positions = np.searchsorted(fingerprint, history)
  found = fingerprint[np.minimum(positions, len(fingerprint) - 1)] == history
  found &= history != _EMPTY
  return np.count_nonzero(found, axis=1)
