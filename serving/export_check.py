"""The check an export must pass before it is published: the reloaded SavedModel against Keras.

Signature names, input/output names, dtypes and shapes, the probabilities and classes on sample
batches, the latent values, the warmup records, and the in-graph guard refusing NaN and
out-of-range pixels. Anything off raises `ExportError`, and the export publishes nothing.
"""
import numpy as np

from serving.layout import CLASSES, DEFAULT_SIGNATURE, INPUT_KEY, LATENT, PROBABILITIES
from serving.layout import read_warmup_requests

TOLERANCE = 1e-5
# How many sample images the validation compares (the rest are not needed for a 1e-5 check).
VALIDATION_SAMPLES = 32


class ExportError(RuntimeError):
  """The exported SavedModel does not behave like the Keras model; nothing was published."""


def validate_export(path, model, images, *, latent_model=None):
  """Reload the SavedModel at `path` and check it against the Keras model; returns the figures.

  Checks signature names, input/output names, dtypes and shapes, the probabilities (max abs
  difference <= TOLERANCE) and classes on sample batches, the latent values, the warmup records,
  and that the in-graph guard refuses NaN and out-of-range pixels. Raises ExportError.
  """
  import tensorflow as tf
  from serving import tensors

  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:
    raise ExportError(f"the SavedModel at {path} does not load: {e}") from e
  _check_signatures(tf, loaded, model, images, latent_model)
  batch = images[:VALIDATION_SAMPLES]
  max_diff, latent_diff = _check_outputs(tf, loaded, model, batch, latent_model)
  serve = loaded.signatures[DEFAULT_SIGNATURE]

  warmups = read_warmup_requests(path)
  for record in warmups:
    request = record.predict_log.request
    fn = loaded.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
    inputs = {k: tf.constant(tensors.to_numpy(v)) for k, v in request.inputs.items()}
    fn(**inputs)

  probe = batch[:1].copy()
  for label, bad_value in (("NaN", np.nan), ("out-of-range", 2.0)):
    probe.flat[0] = bad_value
    try:
      serve(**{INPUT_KEY: tf.constant(probe)})
    except tf.errors.InvalidArgumentError:
      continue
    raise ExportError(f"the exported graph accepted a {label} pixel; the input guard is missing")

  return {"max_abs_diff": max_diff, "latent_max_abs_diff": latent_diff,
          "num_samples": int(len(batch)), "warmup_records": len(warmups),
          "tolerance": TOLERANCE}


def _check_signatures(tf, loaded, model, images, latent_model):
  """Signature names; the input's name, dtype and shape; the outputs' names, dtypes and shapes."""
  expected = {DEFAULT_SIGNATURE} | ({LATENT} if latent_model is not None else set())
  found = set(loaded.signatures.keys())
  if found != expected:
    raise ExportError(f"signatures are {sorted(found)}, expected {sorted(expected)}")

  height_width_channels = list(images.shape[1:])
  logits_probe = np.asarray(model(images[:1], training=False))
  num_classes = logits_probe.shape[1]
  want_outputs = {
      DEFAULT_SIGNATURE: {PROBABILITIES: (tf.float32, [None, num_classes]),
                          CLASSES: (tf.int64, [None])},
  }
  if latent_model is not None:
    latent_dims = list(latent_model.output.shape)[1:]
    want_outputs[LATENT] = {LATENT: (tf.float32, [None, *latent_dims])}
  for name, fn in loaded.signatures.items():
    args, kwargs = fn.structured_input_signature
    if args or set(kwargs) != {INPUT_KEY}:
      raise ExportError(f"signature {name} takes {sorted(kwargs)}, expected [{INPUT_KEY!r}]")
    spec = kwargs[INPUT_KEY]
    if spec.dtype != tf.float32 or spec.shape.rank != 4 or spec.shape[0] is not None:
      raise ExportError(f"signature {name} input is {spec}, expected float32 [batch, H, W, C]")
    if any(d is not None and d != s for d, s in zip(spec.shape[1:], height_width_channels)):
      raise ExportError(f"signature {name} input shape {spec.shape} does not fit the samples")
    outputs = fn.structured_outputs
    if set(outputs) != set(want_outputs[name]):
      raise ExportError(f"signature {name} outputs {sorted(outputs)}, "
                        f"expected {sorted(want_outputs[name])}")
    for key, (dtype, shape) in want_outputs[name].items():
      got = outputs[key]
      if got.dtype != dtype or got.shape.as_list() != shape:
        raise ExportError(f"signature {name} output {key} is {got.dtype.name} {got.shape}, "
                          f"expected {dtype.name} {shape}")


def _check_outputs(tf, loaded, model, batch, latent_model):
  """Probabilities and classes on one image and on the batch, then the latents; the largest gaps."""
  serve = loaded.signatures[DEFAULT_SIGNATURE]
  max_diff = 0.0
  for sample in (batch[:1], batch):
    got = serve(**{INPUT_KEY: tf.constant(sample)})
    keras_logits = np.asarray(model(sample, training=False), dtype=np.float32)
    want_p = tf.nn.softmax(keras_logits, axis=-1).numpy()
    got_p = got[PROBABILITIES].numpy()
    diff = float(np.max(np.abs(got_p - want_p)))
    max_diff = max(max_diff, diff)
    if not diff <= TOLERANCE:
      raise ExportError(f"served probabilities differ from the Keras model by {diff:.3g} "
                        f"(> {TOLERANCE:g}); refusing to publish")
    top2 = np.sort(keras_logits, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > TOLERANCE  # Near-ties may legitimately flip.
    mismatched = (got[CLASSES].numpy() != keras_logits.argmax(-1)) & clear
    if mismatched.any():
      raise ExportError(f"served classes differ from the Keras argmax on {int(mismatched.sum())}"
                        " of the sample images; refusing to publish")
  latent_diff = None
  if latent_model is not None:
    got_z = loaded.signatures[LATENT](**{INPUT_KEY: tf.constant(batch)})[LATENT].numpy()
    want_z = np.asarray(latent_model(batch, training=False), dtype=np.float32)
    latent_diff = float(np.max(np.abs(got_z - want_z)))
    scale = max(1.0, float(np.max(np.abs(want_z))))  # Latents are not bounded like probabilities.
    if not latent_diff <= TOLERANCE * scale:
      raise ExportError(f"served latents differ from the Keras model by {latent_diff:.3g}")
  return max_diff, latent_diff
