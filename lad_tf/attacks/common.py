"""Helpers every attack module shares: argument checks, batching and perturbation measures.

Attacks take images as float32 NHWC arrays or tensors in [0, 1] and a `model_fn` mapping images to
logits (a Keras model or any callable). The helpers here turn what callers pass into that form with
clear errors, and run a batch function over fixed-size slices.
"""
import weakref

import numpy as np
import tensorflow as tf

CLIP_MIN = 0.0
CLIP_MAX = 1.0
RANGE_TOLERANCE = 1e-5


def as_images(x, name="x"):
  """Returns `x` as a float32 numpy array of NHWC images in [0, 1], or raises ValueError."""
  x = np.asarray(x.numpy() if isinstance(x, tf.Tensor) else x)
  if x.ndim != 4:
    raise ValueError(f"{name} must be a batch of NHWC images (4 dimensions), got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must hold floats in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
  x = x.astype(np.float32, copy=False)
  if x.size and (x.min() < CLIP_MIN - RANGE_TOLERANCE or x.max() > CLIP_MAX + RANGE_TOLERANCE):
    raise ValueError(f"{name} must lie in [0, 1], got values in [{x.min():.4g}, {x.max():.4g}]")
  return np.clip(x, CLIP_MIN, CLIP_MAX)


def as_labels(y, n, name="y", num_classes=None):
  """Returns class indices `y` (or one-hot rows) as an int64 array of length n, or raises ValueError."""
  y = np.asarray(y.numpy() if isinstance(y, tf.Tensor) else y)
  if y.ndim == 2:
    y = np.argmax(y, axis=1)
  if y.ndim != 1 or len(y) != n:
    raise ValueError(f"{name} must hold one class index per image ({n}), got shape {y.shape}")
  y = y.astype(np.int64)
  if num_classes is not None and n and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{name} must be class indices in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
  return y


def check_eps(eps, name="eps"):
  eps = float(eps)
  if not np.isfinite(eps) or eps < 0:
    raise ValueError(f"{name} must be a finite non-negative float, got {eps}")
  return eps


def check_model_fn(model_fn):
  if not callable(model_fn):
    raise TypeError(f"model_fn must be callable (images -> logits), got {type(model_fn).__name__}")
  return model_fn


def num_classes_of(model_fn, x):
  """Number of logits `model_fn` returns (one forward pass on one image)."""
  logits = model_fn(tf.constant(x[:1]))
  if len(logits.shape) != 2:
    raise ValueError(f"model_fn must return logits of shape (batch, classes), got {tuple(logits.shape)}")
  return int(logits.shape[-1])


def predict(model_fn, x, batch_size=512):
  """argmax of model_fn's logits over x, in batches (int64 numpy array)."""
  out = []
  for start in range(0, len(x), batch_size):
    out.append(np.argmax(np.asarray(model_fn(tf.constant(x[start:start + batch_size]))), axis=-1))
  return np.concatenate(out).astype(np.int64) if out else np.zeros((0,), np.int64)


def attack_labels(attack, model_fn, x, y, targeted, num_classes=None):
  """The labels an attack works with: the given targets (required when targeted), the given true
  labels, or else the model's own predictions (so untargeted attacks need no labels)."""
  if targeted and y is None:
    raise ValueError(f"{attack}: a targeted attack needs the target classes y")
  if y is None:
    y = predict(model_fn, x)
  return as_labels(y, len(x), "y", num_classes)


def run_batched(fn, arrays, batch_size, pad=False):
  """Calls fn(*slices) on consecutive slices of `arrays` and concatenates the (numpy) results.

  With pad=True the last slice is padded to batch_size by repeating its first row, so a tf.function
  behind fn sees one batch shape only (no retracing); the padding is dropped from the result.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(arrays[0])
  outputs = []
  for start in range(0, n, batch_size):
    parts = [a[start:start + batch_size] for a in arrays]
    size = len(parts[0])
    if pad and size < batch_size and n > batch_size:
      parts = [np.concatenate([p, np.repeat(p[:1], batch_size - size, axis=0)]) for p in parts]
    result = fn(*parts)
    outputs.append(np.asarray(result)[:size])
  if not outputs:
    return np.zeros_like(arrays[0])
  return np.concatenate(outputs)


def project_linf(x_adv, x, eps):
  """Clips x_adv into the L-inf ball of radius eps around x and into [0, 1] (numpy, float32)."""
  x_adv = np.clip(x_adv, x - eps, x + eps)
  return np.clip(x_adv, CLIP_MIN, CLIP_MAX).astype(np.float32)


def perturbation_norms(x, x_adv, changed_atol=1e-6):
  """Per-example L2, L-inf and L0 (number of changed input values) of x_adv - x, as numpy arrays."""
  delta = np.reshape(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64), (len(x), -1))
  return {
      "l2": np.sqrt(np.sum(delta ** 2, axis=1)),
      "linf": np.max(np.abs(delta), axis=1) if delta.shape[1] else np.zeros(len(x)),
      "l0": np.sum(np.abs(delta) > changed_atol, axis=1).astype(np.float64),
  }


_GRAPHS = weakref.WeakKeyDictionary()


def model_graph(model_fn, key, build):
  """The graph function `build(model_ref)` made for (model_fn, key), built once and then reused.

  Tracing a model inside a tf.function costs far more than running a small batch through it, and an
  evaluation calls each attack once per model and eps, so the cold call is what users wait for.
  Attacks therefore build their tf.functions with a fixed input signature (any batch size) once per
  model and image shape, and reuse them across restarts, targets, eps values and later calls. `build`
  gets a weak reference to model_fn (so the cache does not keep models alive); callables that cannot
  be weakly referenced get a fresh build each call.
  """
  try:
    ref = weakref.ref(model_fn)
    per_model = _GRAPHS.setdefault(model_fn, {})
  except TypeError:
    return build(lambda: model_fn)
  if key not in per_model:
    per_model[key] = build(ref)
  return per_model[key]


def image_spec(x):
  """TensorSpec of a batch of any size of images shaped like x[0]."""
  return tf.TensorSpec([None, *x.shape[1:]], tf.float32)
