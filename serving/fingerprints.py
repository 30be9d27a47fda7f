"""Blacklight's probabilistic fingerprints of a query (Li et al., USENIX Security 2022).

A query-based attack sends long runs of images that differ by a small perturbation. Quantising
the pixels coarsely (a step well above the attack's eps) maps most of those images to the same
values; hashing every sliding window of the flattened quantised image, and keeping the largest
`top_k` distinct hashes, gives a fingerprint whose overlap with another image's fingerprint
estimates how much content the two share (a min-hash sketch). Windows are hashed by content, not
position, so a shifted copy keeps most of its hashes.

Our own vectorised implementation. A window's hash is a polynomial hash of its bins,
sum_j (b[i+j] + 1) a^j mod 2^64 for a fixed random odd `a`, computed for every window at once from
one prefix sum (a window's sum is the difference of two prefix sums, scaled by a^-i, which exists
since `a` is odd), then mixed so that its high 32 bits order windows like a random permutation. The
`top_k` largest distinct come from a partial partition, not a full sort. The detector stores a
fingerprint as a 512-bit set (`sketches`: bit h mod 512 for each hash h), and the number of bits two
sets share, a popcount of their AND, stands for the hashes they share: a client's whole history is
compared with a new query in three contiguous numpy passes, with no gather.
"""
import functools

import numpy as np

_EMPTY = np.uint32(0)  # Pads fingerprints of images with fewer distinct windows.
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Odd: multiplying by it permutes the 64-bit values.
_S31, _S32 = np.uint64(31), np.uint64(32)
SKETCH_BITS = 512  # A fingerprint as the detector stores it: a set of hash bits (see sketches).
SKETCH_WORDS = SKETCH_BITS // 64


@functools.lru_cache(maxsize=8)
def _powers(length, seed=0x5EED):
  """(a^t, a^-t) for t < length, mod 2^64, for a random odd multiplier a."""
  a = int(np.random.default_rng(seed).integers(1, 2**62)) * 2 + 1
  inverse = pow(a, -1, 2**64)
  up = np.ones(length, np.uint64)
  down = np.ones(length, np.uint64)
  up[1:] = np.cumprod(np.full(length - 1, a, np.uint64))  # Integer products wrap modulo 2^64.
  down[1:] = np.cumprod(np.full(length - 1, inverse, np.uint64))
  return up, down


def quantise(images, step):
  """Pixels in [0, 1] -> integer bins of `step` levels of 255 (Blacklight's quantisation)."""
  top = np.float32(255.0 / step)
  flat = np.multiply(np.asarray(images, np.float32).reshape(len(images), -1), top)
  np.maximum(flat, 0.0, out=flat)
  np.minimum(flat, top, out=flat)
  return flat.astype(np.uint64)  # Truncation is the floor for values >= 0.


def window_hashes(images, step, window):
  """[n, positions] uint32 hashes of every sliding window of each flattened quantised image (a hash
  of 0, one window in 2^32, counts as none)."""
  bins = quantise(images, step)
  n, length = bins.shape
  window = min(window, length)
  positions = length - window + 1
  up, down = _powers(length)
  np.multiply(bins, up, out=bins)
  np.add(bins, up, out=bins)  # (bin + 1) a^t: a blank window hashes like any other.
  prefix = np.add.accumulate(bins, axis=1)  # Wraps modulo 2^64, which the difference undoes.
  sums = np.empty((n, positions), np.uint64)
  sums[:, 0] = prefix[:, window - 1]
  np.subtract(prefix[:, window:], prefix[:, :positions - 1], out=sums[:, 1:])
  np.multiply(sums, down[:positions], out=sums)  # The window at i: sum_j (bins[i + j] + 1) a^j, any i.
  np.bitwise_xor(sums, np.right_shift(sums, _S31), out=sums)
  np.multiply(sums, _MIX, out=sums)
  return np.right_shift(sums, _S32, out=sums).astype(np.uint32)


def _top_distinct(hashes, top_k):
  """[n, top_k] ascending: each row's `top_k` largest distinct values, padded in front with 0."""
  hashes = np.sort(hashes, axis=1)
  hashes[:, 1:][hashes[:, 1:] == hashes[:, :-1]] = _EMPTY  # Repeats count once.
  hashes.sort(axis=1)
  if hashes.shape[1] < top_k:  # Fewer windows than hashes kept.
    pad = np.full((len(hashes), top_k - hashes.shape[1]), _EMPTY, np.uint32)
    return np.concatenate([pad, hashes], axis=1)
  return hashes[:, -top_k:].copy()


def fingerprints(images, step=96, window=16, top_k=20):
  """[n, top_k] uint32: each image's `top_k` largest distinct window hashes, ascending.

  An image with fewer distinct windows is padded in front with 0.
  """
  hashes = window_hashes(images, step, window)
  candidates = 4 * top_k  # The largest values, repeats included: usually enough distinct ones.
  if hashes.shape[1] <= candidates:
    return _top_distinct(hashes, top_k)
  top = _top_distinct(np.partition(hashes, hashes.shape[1] - candidates, axis=1)[:, -candidates:], top_k)
  if not top[:, 0].all():  # Too many repeats among some image's candidates: look at all its windows.
    short = np.flatnonzero(top[:, 0] == _EMPTY)
    top[short] = _top_distinct(hashes[short], top_k)
  return top


def sketches(fingerprints_):
  """[n, SKETCH_WORDS] uint64: each fingerprint as a set of SKETCH_BITS bits, bit h mod SKETCH_BITS
  set for each of its hashes h (0 pads none). Two queries share about as many bits as hashes."""
  fps = np.asarray(fingerprints_)
  bits = np.where(fps == _EMPTY, SKETCH_BITS, fps & np.uint32(SKETCH_BITS - 1))  # Pads: a spare word.
  members = np.zeros((len(fps), SKETCH_BITS + 64), bool)
  np.put_along_axis(members, bits.astype(np.intp), True, axis=1)
  return np.packbits(members, axis=1, bitorder="little").view(np.uint64)[:, :SKETCH_WORDS]


def shared_bits(history, sketch):
  """[queries]: the bits each column of `history` ([SKETCH_WORDS, queries] uint64, one sketch per
  column, as the detector stores them) shares with `sketch` ([SKETCH_WORDS])."""
  return np.bitwise_count(history & sketch[:, None]).sum(axis=0, dtype=np.uint8)


def shared_counts(history, fingerprint):
  """How many bits the sketch of each row of `history` ([n, top_k] fingerprints) shares with the
  sketch of `fingerprint` ([top_k]): about how many hashes they share."""
  if not len(history):
    return np.zeros(0, np.uint8)
  return shared_bits(sketches(history).T, sketches(np.asarray(fingerprint)[None])[0])
