"""GA: the generative (unrestricted) adversarial attack of Song et al. (2018), the paper's ref [17].

Instead of perturbing a given image, GA searches the noise input z of a class-conditional AC-GAN
(lad_tf.models.acgan) for an image of a source class s that the attacked classifier f labels otherwise.
Per try, from a random start z0 ~ N(0, I) and with x = G(z, s):

  loss(z) = CE(f(x), t)                                 targeted: f should say t
            [or  min over c != s of CE(f(x), c)]        untargeted: f should say anything but s
          + lambda1 * mean_i relu(|z_i - z0_i| - eps_box)  soft box: z stays near z0
          + lambda2 * CE(aux(G(z, s)), s)              the AC-GAN's auxiliary classifier keeps s

minimised by gradient steps with annealed Gaussian noise (z <- z - lr * grad - n_k,
n_k ~ N(0, noise_std^2 / (1 + k)^noise_decay)). A try counts (is kept) when f says the target (any
class but s when untargeted) and the auxiliary classifier still says s. With `pixel_eps` > 0, Song et
al.'s noise-augmented variant also optimises a bounded pixel perturbation, x = clip(G(z, s) +
pixel_eps * tanh(q), 0, 1), with normalised-gradient steps on q; as in their code the auxiliary
classifier judges G(z, s) without it.

Defaults follow Song et al.'s code (lambda1 = lambda2 = 100, eps_box 0.1, 1000 steps, noise variance
0.01 / (1 + k)^0.55, plain gradient descent whose per-try step equals theirs at their batch size 64),
except that each try's loss is its own (so results do not depend on the batch size) and a try that
succeeds at some step keeps its last successful image even if later steps wander off (their code only
checks the last step).

`generative_attack` runs the search; `make_ga_set` builds an evaluation set over all classes;
`ga_transfer_set`, `transfer_accuracy`, `accuracy_over_tries` (the fine-tuned-on-GA baseline: lad_tf.evaluation.sweeps)
serve the evaluation protocol (the white-box row, the paper's Table III transfer row and Table IV's
"fine-tuned on GA" baseline).
"""
import logging
import os

import numpy as np
import tensorflow as tf

from lad_tf.attacks import common
from lad_tf.runtime import files

log = logging.getLogger("lad_tf")

SONG_BATCH = 64  # Song et al. averaged the loss over 64 tries with SGD lr 1: lr 1/64 per try


def _as_classes(value, n, name, num_classes):
  value = np.asarray(value)
  if value.ndim == 0:
    value = np.full(n, int(value))
  value = common.as_labels(value, n, name, num_classes)
  return value


def generative_attack(model_fn, generator, aux_fn, source, target=None, *, num_steps=1000, num=None,
                      noise=None, eps_box=0.1, lambda1=100.0, lambda2=100.0, learning_rate=1.0 / SONG_BATCH,
                      noise_std=0.1, noise_decay=0.55, pixel_eps=0.0, pixel_learning_rate=1.0,
                      batch_size=256, seed=0, progress=None, log_every=100):
  """Searches the AC-GAN's noise input for adversarial images of the source classes.

  Args:
    model_fn: the attacked classifier, a callable mapping a float32 NHWC batch in [0, 1] to logits
      (e.g. a Keras model); gradients flow through it (white box).
    generator: the AC-GAN generator, called as generator([z, labels], training=False) with z of shape
      (batch, noise_dim) float32 and labels (batch,) int32, returning images in [0, 1]
      (lad_tf.models.acgan.ACGAN.generator).
    aux_fn: the AC-GAN's auxiliary classifier, a callable images -> class logits
      (lad_tf.models.acgan.ACGAN.aux_fn).
    source: source class of each try: an int (then `num` tries) or a 1-D array of class indices.
    target: None for the untargeted attack (any class but the source), or the target class of each
      try (an int or a 1-D array; each target must differ from its source).
    num_steps: gradient steps per try (Song et al. and the paper: 1000).
    num: number of tries when `source` is an int (ignored otherwise).
    noise: start points z0, float32 (tries, noise_dim); None draws them from N(0, I) with `seed`.
    eps_box: half-width of the box around z0 inside which the soft box term is zero.
    lambda1: weight of the soft box term (100).
    lambda2: weight of the auxiliary classifier's cross-entropy towards the source (100).
    learning_rate: gradient step size per try (default 1/64: Song et al.'s lr 1 on a batch mean of 64).
    noise_std: standard deviation of the noise added to z at the first step (Song et al.: 0.1).
    noise_decay: the noise variance decays as 1 / (1 + step)^noise_decay (0.55).
    pixel_eps: bound of the optional additive pixel perturbation (Song et al.'s noise-augmented
      attack used 0.1); 0 (default) switches it off.
    pixel_learning_rate: step of the pixel perturbation's pre-tanh variable along its L2-normalised
      gradient (per try).
    batch_size: tries searched at once.
    seed: seeds z0 (when `noise` is None) and the gradient noise; the same seed gives the same result.
    progress: optional callable taking one progress line (e.g. logging.info); None logs to "lad_tf".
    log_every: steps between progress lines (0: only one line per batch).
  Returns:
    (images, success_mask): float32 numpy images (tries, H, W, C) in [0, 1] (each successful try's
    last successful image, otherwise its final image) and a bool mask of the tries that fooled
    model_fn (said the target, or not the source when untargeted) while aux_fn still said the source.
  """
  common.check_model_fn(model_fn)
  targeted = target is not None
  n, source, target, noise, image_shape = _tries(model_fn, generator, aux_fn, source, target, num, noise,
                                                 num_steps, batch_size, pixel_eps, eps_box, seed)
  if n == 0:
    return np.zeros((0, *image_shape), np.float32), np.zeros((0,), bool)
  say = progress or log.info
  images_of, step, final = _search_graphs(model_fn, generator, aux_fn, targeted, eps_box, lambda1, lambda2,
                                          learning_rate, pixel_eps, pixel_learning_rate)
  size = min(batch_size, n)
  batches = int(np.ceil(n / size))
  images, success = [], []
  for b, start in enumerate(range(0, n, size)):
    rows = np.arange(start, min(start + size, n))
    pad = np.concatenate([rows, np.repeat(rows[:1], size - len(rows))])  # one shape: no retracing
    z0 = tf.constant(noise[pad])
    src, tgt = tf.constant(source[pad], tf.int32), tf.constant(target[pad], tf.int32)
    z, q = z0, tf.zeros((size, *image_shape), tf.float32)
    kept, ever = tf.zeros((size, *image_shape), tf.float32), tf.zeros((size,), tf.bool)
    for k in range(num_steps):
      sigma = tf.constant(noise_std / (1.0 + k) ** (noise_decay / 2.0), tf.float32)
      z, q, kept, ever, loss = step(z, q, z0, src, tgt, sigma, tf.constant([seed, b * num_steps + k], tf.int64),
                                    kept, ever)
      if log_every and (k + 1) % log_every == 0 and k + 1 < num_steps:
        say(f"ga batch {b + 1}/{batches} step {k + 1}/{num_steps}: loss {float(loss):.4f}, "
            f"succeeded so far {int(tf.reduce_sum(tf.cast(ever[:len(rows)], tf.int32)))}/{len(rows)}")
    kept, ever = final(z, q, src, tgt, kept, ever)
    _, x_last = images_of(z, q, src)
    ever = ever.numpy()[:len(rows)]
    images.append(np.where(ever[:, None, None, None], kept.numpy()[:len(rows)], x_last.numpy()[:len(rows)]))
    success.append(ever)
    say(f"ga batch {b + 1}/{batches}: {int(ever.sum())}/{len(rows)} tries kept "
        f"({'targeted' if targeted else 'untargeted'}, {num_steps} steps)")
  return np.clip(np.concatenate(images), 0.0, 1.0).astype(np.float32), np.concatenate(success)


def _tries(model_fn, generator, aux_fn, source, target, num, noise, num_steps, batch_size, pixel_eps, eps_box,
           seed):
  """generative_attack's arguments checked and spelled out per try: (n, source, target (-1 each when
  untargeted), start noise, image shape)."""
  if not callable(aux_fn):
    raise TypeError(f"aux_fn must be callable (images -> logits), got {type(aux_fn).__name__}")
  if num_steps < 1:
    raise ValueError(f"generative_attack: num_steps must be >= 1, got {num_steps}")
  if batch_size < 1:
    raise ValueError(f"generative_attack: batch_size must be >= 1, got {batch_size}")
  if pixel_eps < 0 or eps_box < 0:
    raise ValueError(f"generative_attack: pixel_eps and eps_box must be >= 0, got {pixel_eps}, {eps_box}")
  noise_dim = int(generator.inputs[0].shape[-1])
  num_classes = int(aux_fn(generator([tf.zeros((1, noise_dim)), tf.zeros((1,), tf.int32)],
                                     training=False)).shape[-1])
  if np.ndim(source) == 0:
    if num is None:
      raise ValueError("generative_attack: pass `num` (the number of tries) with a single source class")
    n = int(num)
  else:
    n = len(source)
  source = _as_classes(source, n, "source", num_classes)
  targeted = target is not None
  if targeted:
    target = _as_classes(target, n, "target", num_classes)
    if np.any(target == source):
      raise ValueError("generative_attack: a target equals its source class; pass target=None for the "
                       "untargeted attack")
  else:
    target = np.full(n, -1, np.int64)
  if noise is None:
    noise = np.random.default_rng(seed).standard_normal((n, noise_dim)).astype(np.float32)
  noise = np.asarray(noise, np.float32)
  if noise.shape != (n, noise_dim):
    raise ValueError(f"generative_attack: noise must have shape ({n}, {noise_dim}), got {noise.shape}")
  image_shape = tuple(int(v) for v in generator.output_shape[1:])
  return n, source, target, noise, image_shape


def _search_graphs(model_fn, generator, aux_fn, targeted, eps_box, lambda1, lambda2, learning_rate, pixel_eps,
                   pixel_learning_rate):
  """The search's compiled pieces: images of (z, q), one gradient step of every try, the final check."""
  use_pixels = pixel_eps > 0

  def images_of(z, q, src):
    clean = generator([z, src], training=False)
    if not use_pixels:
      return clean, clean
    return clean, tf.clip_by_value(clean + pixel_eps * tf.tanh(q), 0.0, 1.0)

  def outcome(logits, aux_logits, src, tgt):
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    fooled = tf.equal(pred, tgt) if targeted else tf.not_equal(pred, src)
    return tf.logical_and(fooled, tf.equal(tf.argmax(aux_logits, axis=-1, output_type=tf.int32), src))

  @tf.function
  def step(z, q, z0, src, tgt, sigma, noise_seed, kept, ever):
    with tf.GradientTape() as tape:
      tape.watch([z, q])
      clean, x = images_of(z, q, src)
      logits = tf.cast(model_fn(x), tf.float32)
      aux_logits = tf.cast(aux_fn(clean), tf.float32)
      log_probs = tf.nn.log_softmax(logits)
      if targeted:
        adv = -tf.gather(log_probs, tgt, batch_dims=1)
      else:
        others = tf.where(tf.one_hot(src, tf.shape(logits)[-1]) > 0, -np.inf, log_probs)
        adv = -tf.reduce_max(others, axis=-1)
      box = tf.reduce_mean(tf.nn.relu(tf.abs(z - z0) - eps_box), axis=-1)
      keep = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=src, logits=aux_logits)
      losses = adv + lambda1 * box + lambda2 * keep
      total = tf.reduce_sum(losses)
    grad_z, grad_q = tape.gradient(total, [z, q])
    ok = outcome(logits, aux_logits, src, tgt)
    kept = tf.where(ok[:, None, None, None], x, kept)
    ever = tf.logical_or(ever, ok)
    z = z - learning_rate * grad_z + sigma * tf.random.stateless_normal(tf.shape(z), noise_seed)
    if use_pixels:
      norm = tf.sqrt(tf.reduce_sum(tf.square(grad_q), axis=[1, 2, 3], keepdims=True)) + 1e-12
      q = q - pixel_learning_rate * grad_q / norm
    return z, q, kept, ever, tf.reduce_mean(losses)

  @tf.function
  def final(z, q, src, tgt, kept, ever):
    clean, x = images_of(z, q, src)
    ok = outcome(model_fn(x), aux_fn(clean), src, tgt)
    return tf.where(ok[:, None, None, None], x, kept), tf.logical_or(ever, ok)

  return images_of, step, final


# -- evaluation sets ------------------------------------------------------------------------------
def _load_acgan(acgan):
  if isinstance(acgan, (str, os.PathLike)):
    from lad_tf.models.acgan import ACGAN  # pylint: disable=import-outside-toplevel
    return ACGAN.load(os.fspath(acgan))
  return acgan


def _load_model(model):
  if isinstance(model, (str, os.PathLike)):
    import keras  # pylint: disable=import-outside-toplevel
    return keras.models.load_model(os.fspath(model), compile=False)
  return model


def make_ga_set(model_fn, acgan, n_per_class, targeted=False, seed=0, **attack_kwargs):
  """Runs GA from every class of `acgan`: n_per_class tries per source class.

  Args:
    model_fn: the attacked classifier (callable images -> logits, or a path to a .keras model).
    acgan: a lad_tf.models.acgan.ACGAN, or its folder (DIR/acgan or the work directory DIR).
    n_per_class: tries per source class.
    targeted: False (the paper's Table III protocol): any class but the source; True: each try gets
      a target drawn uniformly from the other classes.
    seed: seeds the targets, the start points and the search noise.
    **attack_kwargs: passed to generative_attack (num_steps, eps_box, lambda1, lambda2, pixel_eps,
      batch_size, progress, ...).
  Returns:
    dict of numpy arrays over all tries: x_adv (images), source, target (-1 when untargeted), kept
    (bool: fooled model_fn with the auxiliary classifier still saying the source), prediction
    (model_fn's label of x_adv), aux_prediction (the auxiliary classifier's label of x_adv), and
    success_rate (a float: the share of kept tries).
  """
  acgan = _load_acgan(acgan)
  model_fn = _load_model(model_fn)
  k = acgan.num_classes
  source = np.repeat(np.arange(k), n_per_class).astype(np.int64)
  rng = np.random.default_rng(seed)
  target = None
  if targeted:
    target = (source + rng.integers(1, k, size=len(source))) % k
  x_adv, kept = generative_attack(model_fn, acgan.generator, acgan.aux_fn, source, target, seed=seed,
                                  **attack_kwargs)
  return {"x_adv": x_adv, "source": source,
          "target": np.full(len(source), -1, np.int64) if target is None else target.astype(np.int64),
          "kept": kept, "prediction": common.predict(model_fn, x_adv),
          "aux_prediction": common.predict(acgan.aux_fn, x_adv),
          "success_rate": float(np.mean(kept)) if len(kept) else 0.0}


def kept_only(ga_set):
  """The rows of a GA set whose attack succeeded (arrays filtered by `kept`; scalars unchanged)."""
  mask = ga_set["kept"]
  return {key: (value[mask] if isinstance(value, np.ndarray) and value.shape[:1] == mask.shape else value)
          for key, value in ga_set.items()}


def ga_transfer_set(blackbox, acgan, n_per_class, targeted=False, seed=0, **attack_kwargs):
  """GA examples made against `blackbox` (the paper's "black CNN"), for transfer rows.

  Runs make_ga_set against `blackbox` and keeps the successful tries only. Returns that set (see
  make_ga_set) plus "tries" (the number of tries) and "success_rate" (kept / tries, against the
  black box). Feed it to transfer_accuracy with the original and defended classifiers.
  """
  full = make_ga_set(blackbox, acgan, n_per_class, targeted=targeted, seed=seed, **attack_kwargs)
  out = kept_only(full)
  out["tries"] = len(full["kept"])
  return out


def transfer_accuracy(models, ga_set, batch_size=512):
  """Accuracy of each model on a GA set's kept examples with respect to their source class.

  Args:
    models: dict name -> classifier (callable images -> logits, or a path to a .keras model).
    ga_set: from ga_transfer_set (or make_ga_set; only rows with kept=True count).
  Returns:
    dict name -> accuracy (nan when the set has no kept example).
  """
  mask = ga_set["kept"]
  x, y = ga_set["x_adv"][mask], ga_set["source"][mask]
  out = {}
  for name, model in models.items():
    model = _load_model(model)
    out[name] = float(np.mean(common.predict(model, x, batch_size) == y)) if len(y) else float("nan")
  return out


def accuracy_over_tries(models, ga_set, batch_size=512):
  """Accuracy of each model over every try of a GA set (from make_ga_set, not kept_only): a try
  counts against a model when the auxiliary classifier reads its image as the source class (a valid
  example of it) and the model labels it otherwise.

  On the model the set was crafted on this is 1 - success_rate (with pixel_eps 0, where both judge
  the same image); on any other model it is that model's accuracy on the examples crafted against
  the first one (the fixed-set protocol), over the same tries, so the two compare directly.

  Args:
    models: dict name -> classifier (callable images -> logits, or a path to a .keras model).
    ga_set: make_ga_set's result (x_adv, source, aux_prediction over all tries).
    batch_size: images per prediction batch.
  Returns:
    dict name -> accuracy (nan when the set has no try).
  """
  source = ga_set["source"]
  valid = ga_set["aux_prediction"] == source
  out = {}
  for name, model in models.items():
    fooled = common.predict(_load_model(model), ga_set["x_adv"], batch_size) != source
    out[name] = float(1.0 - np.mean(valid & fooled)) if len(source) else float("nan")
  return out


def save_set(path, ga_set):
  """Writes a GA set as .npz (atomically)."""
  with files.atomic_path(path) as tmp:
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in ga_set.items()})
  return path


def load_set(path):
  with np.load(path) as data:
    return {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}
