"""A model server speaking TF Serving's gRPC and REST APIs, for machines without the C++ binary.

`python -m serving.server --model_name=NAME --model_base_path=PATH --port=8500 --rest_api_port=8501`
takes the flags of `tensorflow_model_server` (and `--model_config_file`), so a client, a deployment
script or a test can swap one server for the other. It serves the SavedModels written by
`serving.export` (and any SavedModel with numeric inputs):

- gRPC: PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus (built on the
  servicer classes of tensorflow-serving-api, served from a thread pool);
- REST: POST /v1/models/NAME[/versions/V]:predict (`instances` or `inputs`), GET /v1/models/NAME
  and /v1/models/NAME[/versions/V]/metadata, with TF Serving's JSON shapes and status codes;
- the highest integer version under the base path, picked up by polling like TF Serving does;
  a version that fails to load (or to warm up) is reported in the model status and the version
  already served stays up;
- every refused request gets TF Serving's status and a message naming the problem, and never
  takes the server down.
"""
import concurrent.futures
import dataclasses
import gc
import http.server
import json
import logging
import os
import re
import signal
import threading
import time

import grpc
import numpy as np

from serving import errors
from serving import export as export_lib

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit for assets.extra/tf_serving_warmup_requests.
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclasses.dataclass
class ServerConfig:
  """What `tensorflow_model_server` takes as flags (plus the limits TF Serving has no flag for)."""
  port: int = 8500
  rest_api_port: int = 0  # 0: REST off, as in TF Serving.
  host: str = "0.0.0.0"
  file_system_poll_wait_seconds: float = 1.0  # 0: poll once at start; < 0: never.
  max_batch_size: int = 256  # 0: no limit.
  max_request_bytes: int = 64 << 20
  grpc_max_threads: int = 16
  rest_api_num_threads: int = 64
  rest_api_timeout_in_ms: int = 30000
  enable_model_warmup: bool = True


@dataclasses.dataclass
class ModelConfig:
  """One served model: TF Serving's ModelConfig, the parts this server honours."""
  name: str
  base_path: str
  policy: str = "latest"  # latest | all | specific
  num_versions: int = 1
  versions: tuple = ()
  version_labels: dict = dataclasses.field(default_factory=dict)


def read_model_config_file(path):
  """Parse a ModelServerConfig text proto (as for `--model_config_file`) into ModelConfigs."""
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  with open(path) as f:
    text = f.read()
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError(f"{path} is not a ModelServerConfig text proto: {e}") from e
  if not config.HasField("model_config_list"):
    raise ValueError(f"{path} has no model_config_list {{ config {{ ... }} }}")
  models = []
  base_dir = os.path.dirname(os.path.abspath(path))
  for entry in config.model_config_list.config:
    if not entry.name or not entry.base_path:
      raise ValueError(f"{path}: every config needs a name and a base_path")
    if entry.model_platform not in ("", "tensorflow"):
      raise ValueError(f"{path}: model {entry.name} has platform {entry.model_platform!r}; "
                       "only 'tensorflow' is served")
    model = ModelConfig(name=entry.name, base_path=os.path.join(base_dir, entry.base_path),
                        version_labels=dict(entry.version_labels))
    choice = entry.model_version_policy.WhichOneof("policy_choice")
    if choice == "all":
      model.policy = "all"
    elif choice == "specific":
      model.policy, model.versions = "specific", tuple(entry.model_version_policy.specific.versions)
    elif choice == "latest":
      model.num_versions = max(1, entry.model_version_policy.latest.num_versions)
    models.append(model)
  names = [m.name for m in models]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: model names must be unique, got {names}")
  return models


# ------------------------------------------------------------------------------------------------
# One loaded version.


@dataclasses.dataclass
class Signature:
  name: str
  fn: object
  inputs: dict  # key -> (numpy dtype, shape list with None for free dims)
  outputs: dict
  input_enums: dict  # key -> DataType enum


def _status_code_of(exc):
  """gRPC code for a TF runtime error (tf.errors carry the canonical code)."""
  code = getattr(exc, "error_code", None)
  for status in grpc.StatusCode:
    if status.value[0] == code:
      return status
  return grpc.StatusCode.INTERNAL


class Servable:
  """One loaded version of a model: its signatures, metadata and input contract."""

  def __init__(self, name, version, path, max_batch_size):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2
    from serving import tensors

    self.name, self.version, self.path = name, int(version), path
    self.max_batch_size = max_batch_size
    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb_path):
      raise errors.ServingError(grpc.StatusCode.NOT_FOUND, f"no saved_model.pb in {path}")
    self._tf = tf
    self.model = tf.saved_model.load(path, tags=["serve"])
    with open(pb_path, "rb") as f:
      saved = saved_model_pb2.SavedModel.FromString(f.read())
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
    self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
    if graphs:
      for key, sig in graphs[0].signature_def.items():
        if key != INIT_OP_SIGNATURE:
          self.signature_defs.signature_def[key].CopyFrom(sig)
    self.signatures = {}
    for key, fn in self.model.signatures.items():
      args, kwargs = fn.structured_input_signature
      if args:
        log.warning("%s v%d: signature %s has positional inputs; skipped", name, version, key)
        continue
      inputs, enums = {}, {}
      for in_key, spec in kwargs.items():
        enums[in_key] = spec.dtype.as_datatype_enum
        dtype = spec.dtype.as_numpy_dtype if spec.dtype.is_numpy_compatible else None
        inputs[in_key] = (np.dtype(dtype) if dtype else None,
                          None if spec.shape.rank is None else spec.shape.as_list())
      outputs = {k: (v.dtype.name, v.shape.as_list() if v.shape.rank is not None else None)
                 for k, v in fn.structured_outputs.items()}
      self.signatures[key] = Signature(key, fn, inputs, outputs, enums)
    if not self.signatures:
      raise errors.invalid(f"the SavedModel at {path} has no usable signature")
    self.card = export_lib.read_model_card(path)
    self.input_ranges = {}
    spec = self.card.get("input") if isinstance(self.card, dict) else None
    if isinstance(spec, dict) and spec.get("name") and spec.get("range"):
      lo, hi = spec["range"]
      self.input_ranges[spec["name"]] = (float(lo), float(hi))
    self._tensors = tensors

  # -- requests --------------------------------------------------------------------------------

  def signature(self, name):
    key = name or DEFAULT_SIGNATURE
    if key not in self.signatures:
      # TF Serving answers FAILED_PRECONDITION on gRPC (400 over REST) for an unknown signature.
      raise errors.ServingError(
          grpc.StatusCode.FAILED_PRECONDITION,
          f"serving signature `{key}` not found in model `{self.name}` version {self.version}; "
          f"available: {sorted(self.signatures)}")
    return self.signatures[key]

  def check_keys(self, signature, keys):
    keys = set(keys)
    unknown = sorted(keys - set(signature.inputs))
    missing = sorted(set(signature.inputs) - keys)
    if unknown:
      raise errors.invalid(
          f"unknown input {unknown} for signature `{signature.name}`; its inputs are "
          f"{sorted(signature.inputs)}")
    if missing:
      raise errors.invalid(
          f"missing input {missing} for signature `{signature.name}`; its inputs are "
          f"{sorted(signature.inputs)}")

  def decode_protos(self, signature, protos):
    """gRPC inputs (TensorProtos) -> numpy, checking key set, dtype and shape before decoding."""
    self.check_keys(signature, protos.keys())
    arrays = {}
    for key, proto in protos.items():
      want = signature.input_enums[key]
      if proto.dtype != want:
        raise errors.invalid(
            f"input `{key}` must be {self._tensors.dtype_name(want)}, got "
            f"{self._tensors.dtype_name(proto.dtype)}")
      shape = self._tensors.shape_of(proto)
      self._tensors.check_shape(shape, signature.inputs[key][1])
      self.check_batch(shape)
      arrays[key] = self._tensors.to_numpy(proto)
    return arrays

  def decode_json(self, signature, values):
    """REST inputs (nested lists) -> numpy of the signature's dtypes; refuses non-numbers."""
    self.check_keys(signature, values.keys())
    arrays = {}
    for key, value in values.items():
      dtype, shape = signature.inputs[key]
      if dtype is None:
        raise errors.invalid(f"input `{key}` has a dtype this server cannot decode from JSON")
      if isinstance(value, dict):
        raise errors.invalid(f"input `{key}` must be a (nested) list of numbers, got an object "
                             "(base64 `b64` payloads are for string inputs)")
      try:
        array = np.asarray(value)
      except (ValueError, TypeError) as e:
        raise errors.invalid(f"input `{key}` is not a rectangular array of numbers: {e}") from e
      allowed = "biuf" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
      if array.dtype.kind not in allowed:
        what = {"U": "strings", "O": "mixed or ragged values", "b": "booleans"}.get(
            array.dtype.kind, str(array.dtype))
        raise errors.invalid(f"input `{key}` must hold numbers ({dtype.name}), got {what}")
      self._tensors.check_shape(array.shape, shape)
      self.check_batch(array.shape)
      arrays[key] = array.astype(dtype, copy=False)
    return arrays

  def check_batch(self, shape):
    if not shape:
      return
    if shape[0] < 1:
      raise errors.invalid("the batch is empty; send at least one example")
    if self.max_batch_size and shape[0] > self.max_batch_size:
      # TF Serving's batching answers INVALID_ARGUMENT for a task above its maximum batch size.
      raise errors.invalid(
          f"batch of {shape[0]} is larger than the maximum batch size {self.max_batch_size} "
          "(--max_batch_size); split the request")

  def run(self, signature, arrays, output_filter=()):
    """Run the signature on validated numpy inputs; returns {output name: numpy array}."""
    batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batch_sizes) > 1:
      raise errors.invalid(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    for key, (lo, hi) in self.input_ranges.items():
      if key in arrays:
        values = arrays[key]
        if not np.all(np.isfinite(values)):
          raise errors.invalid(f"input `{key}` contains NaN or Inf; send values in "
                               f"[{lo:g}, {hi:g}]")
        low, high = float(values.min()), float(values.max())
        if low < lo or high > hi:
          raise errors.invalid(
              f"input `{key}` has values in [{low:.4g}, {high:.4g}], outside [{lo:g}, {hi:g}]; "
              "out-of-range pixels are rejected, not clipped (scale uint8 images with x / 255)")
    wanted = list(output_filter) or list(signature.outputs)
    unknown = sorted(set(wanted) - set(signature.outputs))
    if unknown:
      raise errors.invalid(f"output_filter names unknown outputs {unknown}; the signature's "
                           f"outputs are {sorted(signature.outputs)}")
    tf = self._tf
    try:
      result = signature.fn(**{k: tf.constant(v) for k, v in arrays.items()})
    except tf.errors.OpError as e:
      raise errors.ServingError(_status_code_of(e), e.message) from e
    except (TypeError, ValueError) as e:
      raise errors.invalid(f"the signature refused the inputs: {e}") from e
    return {k: result[k].numpy() for k in wanted}

  def warmup(self):
    """Replay assets.extra/tf_serving_warmup_requests; any failure fails the load (as in TF)."""
    records = export_lib.read_warmup_requests(self.path)
    if len(records) > MAX_WARMUP_RECORDS:
      raise errors.invalid(f"{len(records)} warmup records exceed the maximum of "
                           f"{MAX_WARMUP_RECORDS}")
    replayed = 0
    for record in records:
      if record.WhichOneof("log_type") != "predict_log":
        log.warning("%s v%d: warmup record of type %s skipped (Predict only)", self.name,
                    self.version, record.WhichOneof("log_type"))
        continue
      request = record.predict_log.request
      signature = self.signature(request.model_spec.signature_name)
      arrays = self.decode_protos(signature, request.inputs)
      self.run(signature, arrays, request.output_filter)
      replayed += 1
    return replayed


# ------------------------------------------------------------------------------------------------
# Versions on disk -> loaded servables.

_STATE_AVAILABLE, _STATE_LOADING, _STATE_END = "AVAILABLE", "LOADING", "END"


class _Model:
  def __init__(self, config):
    self.config = config
    self.servables = {}  # version -> Servable (replaced, never mutated, so reads need no lock)
    self.states = {}  # version -> (state, grpc code, message)
    self.failed = {}  # version -> stamp of the directory when its load failed
    self.reported_empty = False


def _stamp(path):
  """Changes when a version directory is rewritten, so a fixed broken version is retried."""
  parts = []
  for name in ("", "saved_model.pb", "variables"):
    try:
      st = os.stat(os.path.join(path, name))
      parts.append((st.st_mtime_ns, st.st_size))
    except OSError:
      parts.append(None)
  return tuple(parts)


class ModelManager:
  """Loads the aspired versions of each model from its base path and hands them to requests."""

  def __init__(self, models, *, max_batch_size=256, enable_warmup=True):
    if not models:
      raise ValueError("no model to serve: give --model_base_path or --model_config_file")
    self._models = {m.name: _Model(m) for m in models}
    self._max_batch_size = max_batch_size
    self._enable_warmup = enable_warmup
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None

  @property
  def model_names(self):
    return sorted(self._models)

  def start_polling(self, interval):
    """Poll every `interval` s (TF Serving's --file_system_poll_wait_seconds; 0 once, <0 never)."""
    if interval < 0:
      return
    self.poll()
    if interval == 0:
      return

    def loop():
      while not self._stop.wait(interval):
        try:
          self.poll()
        except Exception:  # Keep polling; one bad pass must not stop version updates.
          log.exception("version poll failed")

    self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
    self._thread.start()

  def stop(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)

  def poll(self):
    for model in self._models.values():
      self._poll_model(model)

  def _aspired(self, model, candidates):
    config = model.config
    if config.policy == "all":
      return set(candidates)
    if config.policy == "specific":
      return set(candidates) & set(config.versions)
    return set(sorted(candidates)[-config.num_versions:])

  def _poll_model(self, model):
    base = model.config.base_path
    on_disk = {v: os.path.join(base, str(v)) for v in export_lib.list_versions(base)}
    if not on_disk and not model.reported_empty:
      log.warning("model %s: no version directory under %s yet", model.config.name, base)
    model.reported_empty = not on_disk
    for version, stamp in list(model.failed.items()):
      if version not in on_disk or _stamp(on_disk[version]) != stamp:
        del model.failed[version]  # Rewritten or removed: worth another try.
    usable = [v for v in on_disk if v not in model.failed]
    for version in sorted(self._aspired(model, usable) - set(model.servables), reverse=True):
      self._load(model, version, on_disk[version])
    usable = [v for v in on_disk if v not in model.failed]
    aspired = self._aspired(model, usable)
    stale = [v for v in model.servables if v not in aspired]
    if stale and not (aspired & set(model.servables)) and any(v in on_disk for v in stale):
      stale = []  # Availability first: keep what serves until something replaces it.
    if stale:
      with self._lock:
        model.servables = {v: s for v, s in model.servables.items() if v not in stale}
        for v in stale:
          model.states[v] = (_STATE_END, grpc.StatusCode.OK, "")
      log.info("model %s: unloaded version(s) %s", model.config.name, sorted(stale))

  def _load(self, model, version, path):
    name = model.config.name
    with self._lock:
      model.states[version] = (_STATE_LOADING, grpc.StatusCode.OK, "")
    start = time.time()
    try:
      servable = Servable(name, version, path, self._max_batch_size)
      replayed = servable.warmup() if self._enable_warmup else 0
    except Exception as e:  # A broken version is reported; it must not take the server down.
      code = e.code if isinstance(e, errors.ServingError) else _status_code_of(e)
      if code == grpc.StatusCode.INTERNAL and not isinstance(e, errors.ServingError):
        code = grpc.StatusCode.UNKNOWN
      message = f"failed to load {path}: {type(e).__name__}: {e}"
      with self._lock:
        model.failed[version] = _stamp(path)
        model.states[version] = (_STATE_END, code, message)
      log.error("model %s version %d: %s", name, version, message)
      return
    with self._lock:
      servables = dict(model.servables)
      servables[version] = servable
      model.servables = servables
      model.states[version] = (_STATE_AVAILABLE, grpc.StatusCode.OK, "")
    # TF and the loaded graph are hundreds of thousands of long-lived objects; left in the
    # collected generations, every full GC pass (triggered by the lists a JSON request builds)
    # rescans them and stalls a request for ~200 ms. Freezing moves them out of the GC's way.
    gc.freeze()
    log.info("model %s: version %d available (%.1fs, %d warmup request(s))", name, version,
             time.time() - start, replayed)

  # -- lookups for requests --------------------------------------------------------------------

  def _model(self, name):
    if not name:
      raise errors.invalid(f"model_spec.name is empty; served models: {self.model_names}")
    model = self._models.get(name)
    if model is None:
      raise errors.not_found(f"model `{name}` is not served here; served models: "
                             f"{self.model_names}")
    return model

  def resolve(self, name, version=None, label=None):
    """The servable for a ModelSpec: a version, a label, or (default) the highest loaded one."""
    model = self._model(name)
    servables = model.servables
    if label:
      if label not in model.config.version_labels:
        raise errors.invalid(f"unknown version label `{label}` for model `{name}`; labels: "
                             f"{sorted(model.config.version_labels)}")
      version = model.config.version_labels[label]
    if version is not None:
      if version not in servables:
        raise errors.not_found(f"version {version} of model `{name}` is not available; "
                               f"available versions: {sorted(servables)}")
      return servables[version]
    if not servables:
      detail = "; ".join(msg for _, (state, code, msg) in sorted(model.states.items())
                         if code != grpc.StatusCode.OK)
      raise errors.not_found(
          f"model `{name}` has no available version under {model.config.base_path}"
          + (f" ({detail})" if detail else ""))
    return servables[max(servables)]

  def status(self, name, version=None):
    """[(version, state, code, message)] as for GetModelStatus, newest first."""
    model = self._model(name)
    with self._lock:
      states = dict(model.states)
    if version is not None:
      if version not in states:
        raise errors.not_found(f"could not find version {version} of model `{name}`")
      return [(version, *states[version])]
    if not states:
      raise errors.not_found(f"could not find any version of model `{name}` under "
                             f"{model.config.base_path}")
    return [(v, *states[v]) for v in sorted(states, reverse=True)]


# ------------------------------------------------------------------------------------------------
# Protocol layers.


def _spec_version(spec):
  choice = spec.WhichOneof("version_choice")
  if choice == "version":
    return int(spec.version.value), None
  if choice == "version_label":
    return None, spec.version_label
  return None, None


def predict_proto(manager, request):
  """PredictRequest -> PredictResponse (raises ServingError)."""
  from tensorflow_serving.apis import predict_pb2
  from serving import tensors

  version, label = _spec_version(request.model_spec)
  servable = manager.resolve(request.model_spec.name, version, label)
  signature = servable.signature(request.model_spec.signature_name)
  arrays = servable.decode_protos(signature, request.inputs)
  outputs = servable.run(signature, arrays, request.output_filter)
  response = predict_pb2.PredictResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.model_spec.signature_name = signature.name
  for key, value in outputs.items():
    response.outputs[key].CopyFrom(tensors.from_numpy(value))
  return response


def metadata_proto(manager, request):
  from tensorflow_serving.apis import get_model_metadata_pb2

  fields = list(request.metadata_field)
  if not fields:
    raise errors.invalid("GetModelMetadataRequest must list at least one metadata_field "
                         "(supported: signature_def)")
  unsupported = [f for f in fields if f != "signature_def"]
  if unsupported:
    raise errors.invalid(f"metadata field(s) {unsupported} not supported; use signature_def")
  version, label = _spec_version(request.model_spec)
  servable = manager.resolve(request.model_spec.name, version, label)
  response = get_model_metadata_pb2.GetModelMetadataResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.metadata["signature_def"].Pack(servable.signature_defs)
  return response


def status_proto(manager, request):
  from tensorflow_serving.apis import get_model_status_pb2

  version, label = _spec_version(request.model_spec)
  if label:
    version = manager.resolve(request.model_spec.name, None, label).version
  response = get_model_status_pb2.GetModelStatusResponse()
  for v, state, code, message in manager.status(request.model_spec.name, version):
    entry = response.model_version_status.add()
    entry.version = v
    entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
    entry.status.error_code = code.value[0]
    entry.status.error_message = message
  return response


def _guarded(method):
  """gRPC handler wrapper: ServingError -> its status; anything else -> INTERNAL, server lives."""

  def handler(self, request, context):
    try:
      return method(self, request, context)
    except errors.ServingError as e:
      context.abort(e.code, e.message)
    except Exception as e:
      log.exception("%s failed", method.__name__)
      context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

  handler.__name__ = method.__name__
  return handler


def _servicers():
  from tensorflow_serving.apis import model_service_pb2_grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc

  class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService over a ModelManager (Classify/Regress/MultiInference: UNIMPLEMENTED)."""

    def __init__(self, manager):
      self.manager = manager

    @_guarded
    def Predict(self, request, context):
      return predict_proto(self.manager, request)

    @_guarded
    def GetModelMetadata(self, request, context):
      return metadata_proto(self.manager, request)

    def _unimplemented(self, request, context):
      context.abort(grpc.StatusCode.UNIMPLEMENTED,
                    "this server implements Predict and GetModelMetadata; the exported "
                    "signatures are predict signatures")

    Classify = Regress = MultiInference = _unimplemented

  class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
      self.manager = manager

    @_guarded
    def GetModelStatus(self, request, context):
      return status_proto(self.manager, request)

    def HandleReloadConfigRequest(self, request, context):
      context.abort(grpc.StatusCode.UNIMPLEMENTED,
                    "config reload is not supported; new versions are picked up from the base "
                    "path, other changes need a restart")

  return PredictionServicer, ModelServicer


def start_grpc(manager, config):
  """Start the gRPC server; returns (server, bound port)."""
  from tensorflow_serving.apis import model_service_pb2_grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc

  prediction, model = _servicers()
  server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=config.grpc_max_threads,
                                            thread_name_prefix="grpc"),
      options=[("grpc.max_receive_message_length", config.max_request_bytes),
               ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction(manager), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(model(manager), server)
  address = f"{config.host}:{config.port}"
  try:
    port = server.add_insecure_port(address)
  except RuntimeError as e:
    raise OSError(f"cannot listen for gRPC on {address} ({e}); is the port taken?") from e
  if port == 0:
    raise OSError(f"cannot listen for gRPC on {address}; is the port taken?")
  server.start()
  return server, port


# -- REST ----------------------------------------------------------------------------------------

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(predict|classify|regress)",
    re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)


def _json_dict(message):
  from google.protobuf import json_format
  return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def rest_predict(manager, name, version, label, body):
  """POST :predict body (bytes) -> response dict, in TF Serving's row or columnar format."""
  try:
    payload = json.loads(body)
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError.
    raise errors.invalid(f"malformed JSON body: {e}") from e
  if not isinstance(payload, dict):
    raise errors.invalid("the body must be a JSON object with `instances` (row format) or "
                         "`inputs` (columnar format)")
  if ("instances" in payload) == ("inputs" in payload):
    raise errors.invalid("the body must have exactly one of `instances` (row format) or "
                         "`inputs` (columnar format)")
  signature_name = payload.get("signature_name", "")
  if not isinstance(signature_name, str):
    raise errors.invalid("`signature_name` must be a string")
  servable = manager.resolve(name, version, label)
  signature = servable.signature(signature_name)
  input_keys = sorted(signature.inputs)
  if "instances" in payload:
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
      raise errors.invalid("`instances` must be a non-empty list, one entry per example")
    if all(isinstance(i, dict) for i in instances):
      keys = set(instances[0])
      if any(set(i) != keys for i in instances):
        raise errors.invalid("every instance must name the same inputs")
      values = {k: [i[k] for i in instances] for k in keys}
    elif any(isinstance(i, dict) for i in instances):
      raise errors.invalid("instances mix objects and plain values")
    elif len(input_keys) == 1:
      values = {input_keys[0]: instances}
    else:
      raise errors.invalid(f"signature `{signature.name}` has inputs {input_keys}: each "
                           "instance must be an object naming them")
    columnar = False
  else:
    inputs = payload["inputs"]
    if isinstance(inputs, dict):
      values = inputs
    elif len(input_keys) == 1:
      values = {input_keys[0]: inputs}
    else:
      raise errors.invalid(f"signature `{signature.name}` has inputs {input_keys}: `inputs` "
                           "must be an object naming them")
    columnar = True
  arrays = servable.decode_json(signature, values)
  outputs = servable.run(signature, arrays)
  if columnar:
    if len(outputs) == 1:
      return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}
  lists = {k: v.tolist() for k, v in outputs.items()}
  batch = len(next(iter(lists.values())))
  if len(lists) == 1:
    return {"predictions": next(iter(lists.values()))}
  return {"predictions": [{k: lists[k][i] for k in lists} for i in range(batch)]}


def rest_get(manager, name, version, label, metadata):
  from tensorflow_serving.apis import get_model_metadata_pb2
  from tensorflow_serving.apis import get_model_status_pb2

  if metadata:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  else:
    request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = name
  if version is not None:
    request.model_spec.version.value = version
  elif label:
    request.model_spec.version_label = label
  if not metadata:
    return _json_dict(status_proto(manager, request))
  response = metadata_proto(manager, request)
  return {"model_spec": _json_dict(response.model_spec),
          "metadata": {"signature_def": _json_dict(
              get_model_metadata_pb2.SignatureDefMap.FromString(
                  response.metadata["signature_def"].value))}}


def _rest_handler(manager, config):
  max_body = config.max_request_bytes

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lad-serving"
    timeout = config.rest_api_timeout_in_ms / 1000.0
    # Buffered writes (flushed once per response by the base class) and no Nagle: headers and
    # body leave in one segment, avoiding the 40 ms delayed-ACK stall of two small writes.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # Per-request access logs would dominate the latency.
      log.debug("rest %s - %s", self.address_string(), fmt % args)

    def _reply(self, status, payload):
      body = json.dumps(payload).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      if self.close_connection:
        self.send_header("Connection", "close")
      self.end_headers()
      self.wfile.write(body)

    def _error(self, error):
      self._reply(error.http, {"error": error.message})

    def _path(self):
      return self.path.split("?", 1)[0]

    def do_GET(self):
      try:
        match = _MODEL_PATH.fullmatch(self._path())
        if not match:
          raise self._unrouted("GET")
        name, version, label, metadata = match.groups()
        version = int(version) if version is not None else None
        self._reply(200, rest_get(manager, name, version, label, bool(metadata)))
      except errors.ServingError as e:
        self._error(e)
      except Exception as e:
        log.exception("REST GET failed")
        self._error(errors.ServingError(grpc.StatusCode.INTERNAL, f"internal error: {e}"))

    def do_POST(self):
      try:
        body = self._read_body()
        match = _PREDICT_PATH.fullmatch(self._path())
        if not match:
          raise self._unrouted("POST")
        name, version, label, verb = match.groups()
        if verb.lower() != "predict":
          raise errors.ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                    f":{verb} is not implemented; use :predict")
        version = int(version) if version is not None else None
        self._reply(200, rest_predict(manager, name, version, label, body))
      except errors.ServingError as e:
        self._error(e)
      except Exception as e:
        log.exception("REST POST failed")
        self._error(errors.ServingError(grpc.StatusCode.INTERNAL, f"internal error: {e}"))

    def _unrouted(self, method):
      if self._path().lower().startswith("/v1/"):
        return errors.invalid(f"malformed request: {method} {self._path()}; use POST "
                              "/v1/models/NAME[/versions/V]:predict or GET /v1/models/NAME"
                              "[/versions/V][/metadata]")
      return errors.not_found(f"no such resource: {self._path()}")

    def _read_body(self):
      if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
        self.close_connection = True
        raise errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "chunked bodies are not accepted; send Content-Length", 411)
      length = self.headers.get("Content-Length")
      if length is None:
        self.close_connection = True
        raise errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "a POST needs a Content-Length header", 411)
      try:
        length = int(length)
        if length < 0:
          raise ValueError(length)
      except ValueError:
        self.close_connection = True
        raise errors.invalid(f"bad Content-Length {self.headers.get('Content-Length')!r}")
      if length > max_body:
        self.close_connection = True
        self._drain(length)
        raise errors.ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body of {length} bytes exceeds the limit of {max_body} bytes "
            "(--max_request_bytes); send smaller batches", 413)
      return self.rfile.read(length)

    def _drain(self, length):
      """Read (and drop) a refused body, bounded, so the client gets to read the 413."""
      remaining = min(length, 8 * max_body + (1 << 20))
      try:
        while remaining > 0:
          chunk = self.rfile.read(min(remaining, 1 << 16))
          if not chunk:
            break
          remaining -= len(chunk)
      except OSError:
        pass

  return Handler


class _RestServer(http.server.ThreadingHTTPServer):
  """Thread per connection, at most `max_threads` at once (the rest wait in the backlog)."""
  daemon_threads = True
  request_queue_size = 128
  allow_reuse_address = True

  def __init__(self, address, handler, max_threads):
    self._slots = threading.BoundedSemaphore(max_threads)
    super().__init__(address, handler)

  def process_request(self, request, client_address):
    self._slots.acquire()
    try:
      super().process_request(request, client_address)
    except BaseException:
      self._slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._slots.release()


def start_rest(manager, config):
  """Start the REST server on a thread; returns (server, bound port)."""
  try:
    server = _RestServer((config.host, config.rest_api_port), _rest_handler(manager, config),
                         config.rest_api_num_threads)
  except OSError as e:
    raise OSError(f"cannot listen for REST on {config.host}:{config.rest_api_port} ({e}); "
                  "is the port taken?") from e
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                            name="rest", daemon=True)
  thread.start()
  return server, server.server_address[1]


class ModelServer:
  """The whole server: manager + gRPC (+ REST). `serve()` blocks until `stop()` or a signal."""

  def __init__(self, models, config):
    self.config = config
    self.manager = ModelManager(models, max_batch_size=config.max_batch_size,
                                enable_warmup=config.enable_model_warmup)
    self.grpc_server = self.rest_server = None
    self.grpc_port = self.rest_port = None
    self._stop_requested = threading.Event()
    self._stopped = threading.Event()

  def start(self):
    # Like tensorflow_model_server: load what is on disk before accepting requests.
    self.manager.start_polling(self.config.file_system_poll_wait_seconds)
    self.grpc_server, self.grpc_port = start_grpc(self.manager, self.config)
    if self.config.rest_api_port:
      if self.config.rest_api_port == self.config.port:
        raise ValueError("--rest_api_port cannot be the same as --port")
      self.rest_server, self.rest_port = start_rest(self.manager, self.config)
    return self

  def stop(self, grace=1.0):
    if self._stopped.is_set():
      return
    self._stopped.set()
    self.manager.stop()
    if self.rest_server is not None:
      self.rest_server.shutdown()
      self.rest_server.server_close()
    if self.grpc_server is not None:
      self.grpc_server.stop(grace).wait()

  def request_stop(self, *_):
    """Signal-safe: only flags the stop; `serve_until_stopped` does the work."""
    self._stop_requested.set()

  def serve_until_stopped(self):
    while not self._stop_requested.wait(0.5):
      pass
    self.stop()


def _define_flags():
  from absl import flags

  flags.DEFINE_integer("port", 8500, "gRPC port (as tensorflow_model_server).")
  flags.DEFINE_integer("rest_api_port", 0, "REST port; 0 disables REST (as TF Serving).")
  flags.DEFINE_string("host", "0.0.0.0", "Address to bind both servers to (127.0.0.1: local).")
  flags.DEFINE_string("model_name", "default", "Name of the single served model.")
  flags.DEFINE_string("model_base_path", None, "Directory holding <integer version>/ folders.")
  flags.DEFINE_string("model_config_file", None,
                      "ModelServerConfig text proto (overrides --model_name/--model_base_path).")
  flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                     "Seconds between polls for new versions; 0: once at start, <0: never.")
  flags.DEFINE_integer("max_batch_size", 256,
                       "Largest batch accepted (INVALID_ARGUMENT above it); 0: no limit.")
  flags.DEFINE_integer("max_request_bytes", 64 << 20,
                       "Largest request: gRPC message (RESOURCE_EXHAUSTED) or REST body (413).")
  flags.DEFINE_integer("grpc_max_threads", 16, "gRPC worker threads.")
  flags.DEFINE_integer("rest_api_num_threads", 64, "Concurrent REST connections.")
  flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Idle REST connection timeout.")
  flags.DEFINE_bool("enable_model_warmup", True,
                    "Replay assets.extra/tf_serving_warmup_requests before serving a version.")
  return flags.FLAGS


def main(argv):
  flags_ = _FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if flags_.model_config_file:
    models = read_model_config_file(flags_.model_config_file)
  elif flags_.model_base_path:
    models = [ModelConfig(flags_.model_name, os.path.abspath(flags_.model_base_path))]
  else:
    raise SystemExit("give --model_base_path=DIR (with --model_name) or --model_config_file=FILE")
  config = ServerConfig(
      port=flags_.port, rest_api_port=flags_.rest_api_port, host=flags_.host,
      file_system_poll_wait_seconds=flags_.file_system_poll_wait_seconds,
      max_batch_size=flags_.max_batch_size, max_request_bytes=flags_.max_request_bytes,
      grpc_max_threads=flags_.grpc_max_threads, rest_api_num_threads=flags_.rest_api_num_threads,
      rest_api_timeout_in_ms=flags_.rest_api_timeout_in_ms,
      enable_model_warmup=flags_.enable_model_warmup)
  server = ModelServer(models, config)
  try:
    server.start()
  except (OSError, ValueError) as e:
    server.stop(0)
    raise SystemExit(f"serving.server: {e}")
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, server.request_stop)
  rest = f"{config.host}:{server.rest_port}" if server.rest_port else "off"
  print(f"serving.server ready: grpc={config.host}:{server.grpc_port} rest={rest} "
        f"models={server.manager.model_names}", flush=True)
  server.serve_until_stopped()
  log.info("serving.server stopped")


if __name__ == "__main__":
  from absl import app

  _FLAGS = _define_flags()
  app.run(main)
