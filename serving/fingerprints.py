"""Blacklight's probabilistic fingerprints of a query (Li et al., USENIX Security 2022).

A query-based attack sends long runs of images that differ by a small perturbation. Quantising
the pixels coarsely (a step well above the attack's eps) maps most of those images to the same
values; hashing every sliding window of the flattened quantised image, and keeping the largest
`top_k` distinct hashes, gives a fingerprint whose overlap with another image's fingerprint
estimates how much content the two share (a min-hash sketch). Windows are hashed by content, not
position, so a shifted copy keeps most of its hashes.

Our own vectorised implementation: a window's hash is a multiply-xorshift mix of its dot product
with fixed odd 64-bit coefficients, so a batch of images is fingerprinted in a few numpy calls.
"""
import functools

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
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
  views = np.lib.stride_tricks.sliding_window_view(bins, window, axis=1)
  with np.errstate(over="ignore"):
    h = views @ _coefficients(window)  # Wraps modulo 2^64, as a hash may.
    h ^= h >> np.uint64(31)
    h *= _MIX
    h ^= h >> np.uint64(29)
  return (h >> np.uint64(32)).astype(np.uint32) | np.uint32(1)


def fingerprints(images, step=50, window=20, top_k=20):
  """[n, top_k] uint32: each image's `top_k` largest distinct window hashes, ascending.

  An image with fewer distinct windows is padded with 0, which no hash equals.
  """
  hashes = np.sort(window_hashes(images, step, window), axis=1)
  out = np.full((len(hashes), top_k), _EMPTY, np.uint32)
  for i, row in enumerate(hashes):
    distinct = row[np.concatenate(([True], row[1:] != row[:-1]))]
    kept = distinct[-top_k:]
    out[i, top_k - len(kept):] = kept
  return out


def shared_counts(history, fingerprint):
  """How many hashes of `fingerprint` (ascending, [top_k]) each row of `history` also holds."""
  if not len(history):
    return np.zeros(0, np.int64)
  positions = np.searchsorted(fingerprint, history)
  found = fingerprint[np.minimum(positions, len(fingerprint) - 1)] == history
  found &= history != _EMPTY
  return np.count_nonzero(found, axis=1)
