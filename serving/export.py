"""Export a classifier for TensorFlow Serving: versioned, validated, then made visible atomically.

The layout on disk (what `tensorflow_model_server --model_base_path=BASE` and `serving.server`
read) is `serving.layout`'s; the check before publishing is `serving.export_check`'s. A version is written under `BASE/.tmp-<version>-*` (TF Serving ignores names that are not
integers), loaded back and checked against the Keras model, and only then renamed to
`BASE/<version>`; a failed or killed export therefore never exposes a half-written version.
"""
import datetime
import json
import logging
import os
import shutil
import tempfile

import numpy as np

# Re-exported: callers of the export read versions, cards and warmups through this module too.
from serving.export_check import TOLERANCE, VALIDATION_SAMPLES, ExportError, validate_export  # noqa: F401
from serving.layout import (ASSETS_EXTRA, CLASSES, DEFAULT_SIGNATURE, INPUT_KEY,  # noqa: F401
                            LATENT, MODEL_CARD_FILE, MODELS_CONFIG, PROBABILITIES, TMP_PREFIX,
                            WARMUP_FILE, list_versions, models_config_text, next_version,
                            read_model_card, read_warmup_requests, write_models_config)

log = logging.getLogger(__name__)

WARMUP_BATCH_SIZES = (1, 8)
INPUT_RANGE = (0.0, 1.0)


def export_classifier(model, base_path, *, sample_images, model_name="lad", model_card=None,
                      version=None):
  """Export `model` (images in [0, 1] -> logits) as `base_path/<version>`; returns that directory.

  sample_images: a few real inputs, float32 [N, H, W, C] in [0, 1]; they become the warmup
    requests and the validation batch, so they should look like production traffic.
  model_card: extra facts for `assets.extra/model_card.json` (dataset, clean_accuracy, robustness).
  version: an explicit integer version; None takes the next one after the highest present.
  Raises ExportError (nothing published) if the reloaded SavedModel disagrees with the model.
  """
  import tensorflow as tf  # Deferred: importing serving.export should not cost a TF start-up.

  images = _check_sample_images(sample_images)
  input_shape = _input_shape(model, images)
  logits = np.asarray(model(images[:1], training=False))
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(
        f"the classifier must return logits of shape [batch, classes>=2], got {logits.shape}; "
        "binary tasks use 2 logits (see docs/ARCHITECTURE.md)")
  num_classes = int(logits.shape[1])
  latent_model = _latent_model(model)

  base_path = os.path.abspath(base_path)
  os.makedirs(base_path, exist_ok=True)
  explicit = version is not None
  if explicit:
    version = int(version)
    if version < 0:
      raise ValueError(f"version must be a non-negative integer, got {version}")
    if os.path.exists(os.path.join(base_path, str(version))):
      raise FileExistsError(
          f"version {version} already exists in {base_path}; versions are immutable once "
          "served: pass version=None to take the next free one")
  else:
    version = next_version(base_path)

  tmp_dir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=base_path)
  try:
    os.chmod(tmp_dir, 0o755 & ~_umask())  # mkdtemp's 0700 would hide the version from others.
    _write_saved_model(tf, model, latent_model, input_shape, tmp_dir)
    _write_warmup(tmp_dir, model_name, images, latent_model is not None)
    report = validate_export(tmp_dir, model, images, latent_model=latent_model)
    card_facts = _card(model_name, input_shape, num_classes, latent_model, report, model_card)
    final_dir = None
    for _ in range(8):  # Another exporter may take the same version between listing and rename.
      _write_json(os.path.join(tmp_dir, ASSETS_EXTRA, MODEL_CARD_FILE),
                  {**card_facts, "version": version})
      _fsync_tree(tmp_dir)
      candidate = os.path.join(base_path, str(version))
      try:
        if os.path.exists(candidate):
          raise FileExistsError(candidate)
        os.rename(tmp_dir, candidate)
        final_dir = candidate
        break
      except OSError:
        if explicit:
          raise FileExistsError(f"version {version} appeared in {base_path} during the export")
        version = max(version + 1, next_version(base_path))
    if final_dir is None:
      raise ExportError(f"could not find a free version number in {base_path}")
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  _fsync_dir(base_path)
  write_models_config(base_path, model_name)
  log.info("exported %s version %d to %s (max |diff| %.2g)", model_name, version, final_dir,
           report["max_abs_diff"])
  return final_dir


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _check_sample_images(sample_images):
  if sample_images is None:
    raise ValueError("sample_images is required: a few real inputs [N, H, W, C] in [0, 1] "
                     "used for warmup and validation")
  images = np.asarray(sample_images)
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError(f"sample_images must be [N>=1, H, W, C], got shape {images.shape}")
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"sample_images must be float in [0, 1], got dtype {images.dtype}; "
                     "scale uint8 pixels with x / 255")
  images = images.astype(np.float32)
  if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
    raise ValueError("sample_images must be finite and in [0, 1] (the serving contract); got "
                     f"range [{np.nanmin(images):.3g}, {np.nanmax(images):.3g}]")
  return images


def _input_shape(model, images):
  """[None, H, W, C] for the signature: the model's declared input, checked against the samples."""
  declared = None
  inputs = getattr(model, "inputs", None)
  if inputs:
    if len(inputs) != 1:
      raise ValueError(f"the classifier must take one image input, it takes {len(inputs)}")
    declared = tuple(inputs[0].shape)[1:]
  sample = tuple(images.shape[1:])
  if declared is None:
    return [None, *sample]
  if len(declared) != 3:
    raise ValueError(f"the classifier input must be [batch, H, W, C], got {inputs[0].shape}")
  if any(d is not None and d != s for d, s in zip(declared, sample)):
    raise ValueError(f"sample_images are {list(sample)} per image but the model expects "
                     f"{list(declared)}")
  return [None, *declared]


def _latent_model(model):
  """x -> latent for models with a layer named `latent` (functional models only), else None."""
  try:
    layer = model.get_layer(LATENT)
  except (ValueError, AttributeError):
    return None
  try:
    import keras
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, layer.output, name="latent_encoder")
  except Exception as e:  # Subclassed models have no graph to cut; the export still works.
    log.warning("model has a `latent` layer but no functional graph (%s); "
                "exporting without the `latent` signature", e)
    return None


def _guard(tf, images):
  """In-graph input contract, so TF Serving itself refuses NaN or out-of-range pixels."""
  lo, hi = INPUT_RANGE
  checked = tf.debugging.assert_all_finite(
      images, f"`{INPUT_KEY}` contains NaN or Inf; send pixels in [{lo:g}, {hi:g}]")
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(
          checked, lo, message=f"`{INPUT_KEY}` has values below {lo:g}; send pixels in "
          f"[{lo:g}, {hi:g}] (scale uint8 with x / 255)"),
      tf.debugging.assert_less_equal(
          checked, hi, message=f"`{INPUT_KEY}` has values above {hi:g}; send pixels in "
          f"[{lo:g}, {hi:g}] (scale uint8 with x / 255)"),
  ]):
    return tf.identity(checked)


def _write_saved_model(tf, model, latent_model, input_shape, path):
  import keras

  archive = keras.export.ExportArchive()
  archive.track(model)
  spec = [tf.TensorSpec(input_shape, tf.float32, name=INPUT_KEY)]

  def serve(images):
    logits = tf.cast(model(_guard(tf, images), training=False), tf.float32)
    return {
        PROBABILITIES: tf.nn.softmax(logits, axis=-1),
        CLASSES: tf.argmax(logits, axis=-1, output_type=tf.int64),
    }

  archive.add_endpoint(DEFAULT_SIGNATURE, serve, input_signature=spec)
  if latent_model is not None:
    archive.track(latent_model)

    def latent(images):
      return {LATENT: tf.cast(latent_model(_guard(tf, images), training=False), tf.float32)}

    archive.add_endpoint(LATENT, latent, input_signature=spec)
  archive.write_out(path, verbose=False)


def _warmup_logs(model_name, images, with_latent):
  from tensorflow_serving.apis import predict_pb2
  from tensorflow_serving.apis import prediction_log_pb2
  from serving import tensors

  signatures = [DEFAULT_SIGNATURE] + ([LATENT] if with_latent else [])
  logs = []
  for signature in signatures:
    for size in sorted({min(b, len(images)) for b in WARMUP_BATCH_SIZES}):
      request = predict_pb2.PredictRequest()
      request.model_spec.name = model_name
      request.model_spec.signature_name = signature
      request.inputs[INPUT_KEY].CopyFrom(tensors.from_numpy(images[:size]))
      logs.append(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def _write_warmup(path, model_name, images, with_latent):
  import tensorflow as tf

  extra = os.path.join(path, ASSETS_EXTRA)
  os.makedirs(extra, exist_ok=True)
  with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
    for record in _warmup_logs(model_name, images, with_latent):
      writer.write(record.SerializeToString())


def _card(model_name, input_shape, num_classes, latent_model, report, model_card):
  import keras
  import tensorflow as tf

  signatures = {
      DEFAULT_SIGNATURE: {"inputs": {INPUT_KEY: {"dtype": "float32", "shape": input_shape}},
                          "outputs": {PROBABILITIES: {"dtype": "float32",
                                                      "shape": [None, num_classes]},
                                      CLASSES: {"dtype": "int64", "shape": [None]}}},
  }
  if latent_model is not None:
    signatures[LATENT] = {
        "inputs": {INPUT_KEY: {"dtype": "float32", "shape": input_shape}},
        "outputs": {LATENT: {"dtype": "float32",
                             "shape": [None, *list(latent_model.output.shape)[1:]]}}}
  facts = dict(model_card or {})
  facts.update({
      "model_name": model_name,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "num_classes": num_classes,
      "input": {"name": INPUT_KEY, "dtype": "float32", "shape": input_shape,
                "range": list(INPUT_RANGE), "out_of_range": "rejected (INVALID_ARGUMENT)"},
      "signatures": signatures,
      "validation": report,
      "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
  })
  return facts


def _write_json(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"model card value {value!r} is not JSON serialisable")


def _fsync_dir(path):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _fsync_tree(root):
  """Flush every file before the rename, so a crash cannot publish a version with empty files."""
  for directory, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(directory, name), "rb+") as f:
        os.fsync(f.fileno())
    _fsync_dir(directory)
