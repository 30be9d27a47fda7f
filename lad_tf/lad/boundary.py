"""Attention-SVM decision boundaries in the latent space (Section III-B a).

For each pair of classes a linear SVM is fitted on attended latents z * beta(z), where the attention
beta(z) = g(softmax(tanh(K z + c))) is a learned map over the D latent units (the paper's "conv" over
a 1x1 map is this D x D dense map). The SVM's weight w is the boundary normal d, pointing from the
source class (SVM label -1) to the target class (+1).

Attention modes:
  "authors": g = exp, exactly the authors' code. Since softmax outputs sum to 1, beta lies in
             [1, e^(1/D)...e]: for D = 500 it is within about 1% of uniform.
  "budget":  g = D * (.), attention as a redistribution of a fixed budget (mean 1), so units can
             weigh up to e^2 (about 7x) more than others; still positive, so d keeps its direction.
  "none":    beta = 1, the plain linear SVM to compare against.

All unordered pairs are fitted at once (a leading pair axis in every weight), which makes fitting the
45 boundaries of ten classes one vectorised problem. The boundary (t, s) is (s, t) with w and b
negated: the hinge problem is symmetric under swapping the labels.
"""
import dataclasses
import itertools

import keras
import numpy as np
import tensorflow as tf

from lad_tf.choices import ATTENTION_MODES
from lad_tf.runtime.progress import Progress


def attention_weights(pre_activation, mode):
  """beta from the attention map's output K z + c: g(softmax(tanh(.))) over the last axis."""
  weights = tf.nn.softmax(tf.tanh(pre_activation), axis=-1)
  return tf.exp(weights) if mode == "authors" else weights * float(pre_activation.shape[-1])


class PairwiseAttentionSVM(keras.layers.Layer):
  """P binary attention-SVMs over D latent units.

  Input: latents of shape (batch, P, D) (one slice per pair). Output: SVM scores (batch, P).
  `attention(z)` gives beta with the same shape as z.
  """

  def __init__(self, num_pairs, mode="authors", **kwargs):
    super().__init__(**kwargs)
    if mode not in ATTENTION_MODES:
      raise ValueError(f"unknown attention mode '{mode}', one of {ATTENTION_MODES}")
    self.num_pairs, self.mode = num_pairs, mode

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.dim = dim
    if self.mode != "none":
      self.kernel = self.add_weight(name="attention_kernel", shape=(self.num_pairs, dim, dim),
                                    initializer=keras.initializers.GlorotUniform())
      self.attention_bias = self.add_weight(name="attention_bias", shape=(self.num_pairs, dim),
                                            initializer="zeros")
    self.w = self.add_weight(name="w", shape=(self.num_pairs, dim), initializer="zeros")
    self.b = self.add_weight(name="b", shape=(self.num_pairs,), initializer="zeros")

  def attention(self, z):
    if not self.built:
      self.build(z.shape)
    if self.mode == "none":
      return tf.ones_like(z)
    return attention_weights(tf.einsum("bpd,pde->bpe", z, self.kernel) + self.attention_bias, self.mode)

  def call(self, z):
    return tf.reduce_sum(self.attention(z) * z * self.w, axis=-1) + self.b

  def get_config(self):
    return {**super().get_config(), "num_pairs": self.num_pairs, "mode": self.mode}


class BoundaryFitter(keras.Model):
  """Fits a PairwiseAttentionSVM: loss = c * mean hinge + mean(w^2), per pair, summed over pairs."""

  def __init__(self, num_pairs, mode="authors", c=0.01, **kwargs):
    super().__init__(**kwargs)
    self.svm = PairwiseAttentionSVM(num_pairs, mode)
    self.c = c
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

  def call(self, z):
    return self.svm(z)

  @property
  def metrics(self):
    return [self.loss_tracker, self.accuracy_tracker]

  def train_step(self, data):
    z, labels = data  # (batch, P, D), (batch, P) in {-1, +1}
    with tf.GradientTape() as tape:
      scores = self.svm(z, training=True)
      hinge = tf.reduce_mean(tf.nn.relu(1.0 - labels * scores), axis=0)
      loss = tf.reduce_sum(self.c * hinge + tf.reduce_mean(tf.square(self.svm.w), axis=-1))
    grads = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply(grads, self.trainable_variables)
    self.loss_tracker.update_state(loss / self.svm.num_pairs)
    self.accuracy_tracker.update_state(tf.reduce_mean(tf.cast(labels * scores > 0, tf.float32)))
    return {m.name: m.result() for m in self.metrics}


@dataclasses.dataclass
class BoundaryConfig:
  """The authors' settings: c = 0.01, plain SGD lr 0.01, batch 1, 10 epochs."""
  mode: str = "authors"
  c: float = 0.01
  learning_rate: float = 0.01
  batch_size: int = 1
  epochs: int = 10
  seed: int = 0
  verbose: int = 0
  # XLA for the fit's train step: with batch 1 the attention kernel's gradient is an outer product
  # that XLA fuses into the SGD update instead of writing it out (SVHN: 45 x 4096 x 4096, 3 GB), the
  # same boundaries about 10x faster (benchmarks/svhn_speed.json); the spec decides (DatasetSpec)
  jit_compile: bool = False


@dataclasses.dataclass
class Boundaries:
  """Fitted boundaries for every unordered class pair, as numpy arrays (saved as one .npz)."""
  pairs: np.ndarray            # (P, 2): (s, t) with s < t; SVM label -1 for s, +1 for t
  w: np.ndarray                # (P, D)
  b: np.ndarray                # (P,)
  mode: str
  kernel: np.ndarray = None    # (P, D, D), None for mode "none"
  attention_bias: np.ndarray = None
  fit_accuracy: np.ndarray = None       # (P,) on the calibration latents
  heldout_accuracy: np.ndarray = None   # (P,) on latents outside the calibration split
  num_classes: int = 0

  def pair_index(self, source, target):
    """Index of the unordered pair of each (source, target) and the sign that orients it s -> t."""
    source, target = np.asarray(source), np.asarray(target)
    if np.any(source == target):
      raise ValueError("source and target classes must differ")
    lookup = np.full((self.num_classes, self.num_classes), -1)
    lookup[self.pairs[:, 0], self.pairs[:, 1]] = np.arange(len(self.pairs))
    lookup[self.pairs[:, 1], self.pairs[:, 0]] = np.arange(len(self.pairs))
    index = lookup[source, target]
    if np.any(index < 0):
      raise ValueError("no boundary fitted for some (source, target) pair")
    sign = np.where(source < target, 1.0, -1.0).astype(np.float32)
    return index, sign

  def normal(self, source, target):
    """d for each (source, target): the SVM weight oriented from source to target, shape (N, D)."""
    index, sign = self.pair_index(source, target)
    return self.w[index] * sign[:, None]

  def attention(self, z, source, target, batch_size=1024):
    """beta(z) under each example's (source, target) boundary, shape (N, D). Examples are grouped by
    boundary, one D x D kernel per group: a copy of the kernel per example (64 MB each at SVHN's
    D = 4096) ran a full-size run out of memory."""
    z = np.asarray(z, np.float32)
    if self.mode == "none":
      return np.ones_like(z)
    index, _ = self.pair_index(source, target)
    out = np.empty_like(z)
    for pair in np.unique(index):
      rows = np.flatnonzero(index == pair)
      kernel, bias = tf.constant(self.kernel[pair]), self.attention_bias[pair]
      for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out[chunk] = attention_weights(tf.matmul(z[chunk], kernel) + bias, self.mode).numpy()
    return out

  def score(self, z, source, target):
    """Signed SVM score oriented so that positive means the target's side."""
    index, sign = self.pair_index(source, target)
    beta = self.attention(z, source, target)
    return sign * (np.sum(beta * z * self.w[index], axis=-1) + self.b[index])

  def save(self, path):
    arrays = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "mode"}
    np.savez(path, mode=np.array(self.mode), **arrays)

  @classmethod
  def load(cls, path):
    with np.load(path, allow_pickle=False) as data:
      fields = {k: data[k] for k in data.files}
    fields["mode"] = str(fields["mode"])
    fields["num_classes"] = int(fields["num_classes"])
    return cls(**fields)


def _pair_tensors(z, y, pairs, n):
  """(2n, P, D) latents and (2n, P) labels: per pair, n of class s (-1) then n of class t (+1)."""
  by_class = {c: z[y == c][:n] for c in np.unique(y)}
  latents = np.stack([np.concatenate([by_class[s], by_class[t]]) for s, t in pairs], axis=1)
  labels = np.concatenate([-np.ones(n), np.ones(n)]).astype(np.float32)
  return latents.astype(np.float32), np.repeat(labels[:, None], len(pairs), axis=1)


def _accuracy(svm_scores_fn, z, y, pairs, cap):
  accuracies = []
  for p, (s, t) in enumerate(pairs):
    zs, zt = z[y == s][:cap], z[y == t][:cap]
    if len(zs) == 0 or len(zt) == 0:
      accuracies.append(np.nan)
      continue
    scores_s, scores_t = svm_scores_fn(zs, p), svm_scores_fn(zt, p)
    accuracies.append(float((np.sum(scores_s < 0) + np.sum(scores_t > 0)) / (len(zs) + len(zt))))
  return np.array(accuracies, np.float32)


def compiled_fitter(num_pairs, config=BoundaryConfig()):
  """A BoundaryFitter for `num_pairs` pairs, compiled with config's optimizer (plain SGD)."""
  fitter = BoundaryFitter(num_pairs, config.mode, config.c)
  fitter.compile(optimizer=keras.optimizers.SGD(config.learning_rate), jit_compile=config.jit_compile)
  return fitter


def fit_boundaries(z, y, num_classes, config=BoundaryConfig(), heldout=None, heldout_cap=200):
  """Fits one attention-SVM per unordered class pair on latents z (N, D) with labels y.

  Args:
    z: latents of the calibration examples, phi(x).
    y: their labels; every class should have the same count (a stratified sample), else the smallest
      count is used for every pair.
    num_classes: number of classes.
    config: BoundaryConfig.
    heldout: optional (z, y) outside the calibration split, for each boundary's held-out accuracy.
    heldout_cap: at most this many held-out examples per class.
  Returns:
    Boundaries.
  """
  keras.utils.set_random_seed(config.seed)
  z = np.asarray(z, np.float32)
  counts = np.bincount(y, minlength=num_classes)
  if np.any(counts == 0):
    raise ValueError(f"every class needs calibration examples; counts per class: {counts.tolist()}")
  n = int(counts.min())
  pairs = np.array(list(itertools.combinations(range(num_classes), 2)), np.int64)
  latents, labels = _pair_tensors(z, y, pairs, n)
  fitter = compiled_fitter(len(pairs), config)
  fitter.fit(latents, labels, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
             verbose=config.verbose, callbacks=[Progress(f"boundaries ({config.mode})", batch_size=config.batch_size)])
  svm = fitter.svm
  result = Boundaries(
      pairs=pairs, w=svm.w.numpy(), b=svm.b.numpy(), mode=config.mode, num_classes=num_classes,
      kernel=svm.kernel.numpy() if config.mode != "none" else None,
      attention_bias=svm.attention_bias.numpy() if config.mode != "none" else None)
  scores_fn = lambda zz, p: result.score(zz, np.full(len(zz), pairs[p][0]), np.full(len(zz), pairs[p][1]))
  result.fit_accuracy = _accuracy(scores_fn, z, y, pairs, n)
  if heldout is not None:
    result.heldout_accuracy = _accuracy(scores_fn, np.asarray(heldout[0], np.float32), heldout[1], pairs,
                                        heldout_cap)
  return result
