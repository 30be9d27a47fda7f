"""What an export puts on disk and a server reads back: names, versions, models.config, assets.

```
BASE/models.config                          text proto for --model_config_file
BASE/<version>/saved_model.pb, variables/   signatures `serving_default` (+ `latent`)
BASE/<version>/assets.extra/tf_serving_warmup_requests   TFRecord of PredictionLog
BASE/<version>/assets.extra/model_card.json              dataset, accuracy, robustness, ...
```
Kept apart from the export so that the server (which only reads) does not load the writer.
"""
import json
import os

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
