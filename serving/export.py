"""Export a classifier for TensorFlow Serving: versioned, validated, then made visible atomically.

Layout (what `tensorflow_model_server --model_base_path=BASE` and `serving.server` read):
```
BASE/models.config                          text proto for --model_config_file
BASE/<version>/saved_model.pb, variables/   signatures `serving_default` (+ `latent`)
BASE/<version>/assets.extra/tf_serving_warmup_requests   TFRecord of PredictionLog
BASE/<version>/assets.extra/model_card.json              dataset, accuracy, robustness, ...
```
A version is written under `BASE/.tmp-<version>-*` (TF Serving ignores names that are not
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

log = logging.getLogger(__name__)

INPUT_KEY = "images"
PROBABILITIES = "probabilities"
CLASSES = "classes"
LATENT = "latent"
DEFAULT_SIGNATURE = "serving_default"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_CARD_FILE = "model_card.json"
MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-"
TOLERANCE = 1e-5
# How many sample images the validation compares (the rest are not needed for a 1e-5 check).
VALIDATION_SAMPLES = 32
WARMUP_BATCH_SIZES = (1, 8)
INPUT_RANGE = (0.0, 1.0)


class ExportError(RuntimeError):
  """The exported SavedModel does not behave like the Keras model; nothing was published."""


_INT64_MAX = (1 << 63) - 1


def list_versions(base_path):
  """Integer version directories under `base_path`, ascending (what TF Serving would see)."""
  if not os.path.isdir(base_path):
    return []
  versions = []
  for name in os.listdir(base_path):
    # As TF Serving: ASCII digits only ('²'.isdigit() is True) and within int64.
    if (name.isascii() and name.isdigit() and int(name) <= _INT64_MAX
        and os.path.isdir(os.path.join(base_path, name))):
      versions.append(int(name))
  return sorted(versions)


def next_version(base_path):
  versions = list_versions(base_path)
  return versions[-1] + 1 if versions else 1


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


def read_warmup_requests(version_dir):
  """The PredictionLog records of a version's warmup file ([] when it has none)."""
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  path = os.path.join(version_dir, ASSETS_EXTRA, WARMUP_FILE)
  if not os.path.exists(path):
    return []
  logs = []
  for record in tf.data.TFRecordDataset(path):
    logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
  return logs


def read_model_card(version_dir):
  path = os.path.join(version_dir, ASSETS_EXTRA, MODEL_CARD_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


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

  serve = loaded.signatures[DEFAULT_SIGNATURE]
  batch = images[:VALIDATION_SAMPLES]
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


def models_config_text(entries):
  """A ModelServerConfig text proto for `--model_config_file`; entries are (name, base_path)."""
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  config = model_server_config_pb2.ModelServerConfig()
  for name, base_path in entries:
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = os.path.abspath(base_path)
    entry.model_platform = "tensorflow"
  return text_format.MessageToString(config)


def write_models_config(base_path, model_name, path=None):
  """Write `models.config` (default: next to the versions); returns its path."""
  path = path or os.path.join(base_path, MODELS_CONFIG)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(models_config_text([(model_name, base_path)]))
  os.replace(tmp, path)
  return path


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
