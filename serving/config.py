"""What the server is told: its own settings, the served models and the batching parameters.

Everything here is plain data read from flags or from the text protos `tensorflow_model_server`
reads (`--model_config_file`, `--batching_parameters_file`), so one file configures either server;
`--query_detection_parameters_file`, ours alone, is a text proto of the same kind.
A file that cannot be read or parsed raises `ConfigError` with a message naming the file and the
problem (the entry point prints it instead of a traceback).
"""
import dataclasses
import os

INT64_MAX = (1 << 63) - 1


class ConfigError(ValueError):
  """A configuration file or flag that cannot be used; the message says which and why."""


@dataclasses.dataclass
class BatchingConfig:
  """TF Serving's BatchingParameters (batching_session / BasicBatchScheduler defaults)."""
  max_batch_size: int = 1000
  batch_timeout_micros: int = 0
  num_batch_threads: int = 0  # 0: one per CPU core, as TF Serving's default thread pool.
  max_enqueued_batches: int = 10
  allowed_batch_sizes: tuple = ()

  def __post_init__(self):
    if self.max_batch_size < 1:
      raise ConfigError(f"batching max_batch_size must be >= 1, got {self.max_batch_size}")
    if self.batch_timeout_micros < 0:
      raise ConfigError(f"batching batch_timeout_micros must be >= 0, got "
                        f"{self.batch_timeout_micros}")
    if self.max_enqueued_batches < 1:
      raise ConfigError(f"batching max_enqueued_batches must be >= 1, got "
                        f"{self.max_enqueued_batches}")
    if self.num_batch_threads <= 0:
      self.num_batch_threads = os.cpu_count() or 1
    sizes = tuple(int(s) for s in self.allowed_batch_sizes)
    if sizes:
      if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
        raise ConfigError(f"allowed_batch_sizes must increase strictly, got {list(sizes)}")
      if sizes[-1] != self.max_batch_size:
        raise ConfigError(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                          f"max_batch_size ({self.max_batch_size}), as in TF Serving")
    self.allowed_batch_sizes = sizes


DETECTION_ACTIONS = ("log", "reject", "log_and_reject")


@dataclasses.dataclass
class DetectionConfig:
  """Stateful detection of query attacks (serving.detection); see docs/DETECTION.md."""
  # Defaults tuned on Fashion-MNIST at eps 0.1 (docs/DETECTION.md): Square-like runs against
  # clients that send each image up to four times (original, noisy, shifted, JPEG copy).
  quantization_step: int = 96  # Pixel bins of this many levels of 255; above 2 eps.
  window_size: int = 16  # Pixels per hashed window of the flattened image.
  hashes_per_query: int = 20  # Largest distinct window hashes kept: the fingerprint.
  match_threshold: int = 16  # Shared hashes (sketch bits) that make two queries near-duplicates.
  neighbours_to_flag: int = 4  # Earlier near-duplicates a query needs to flag its client.
  history_per_client: int = 4096  # Queries remembered per client (the oldest are forgotten).
  max_memory_mb: float = 100.0  # Cap of the whole store; least recently seen clients go first.
  action: str = "log"  # log | reject | log_and_reject (reject: PERMISSION_DENIED / 403).
  client_id_header: str = "x-client-id"  # gRPC metadata key / HTTP header naming the client.

  def __post_init__(self):
    positive = ("quantization_step", "window_size", "hashes_per_query", "match_threshold",
                "neighbours_to_flag", "history_per_client")
    for name in positive:
      if int(getattr(self, name)) < 1:
        raise ConfigError(f"query detection {name} must be >= 1, got {getattr(self, name)}")
    if self.match_threshold > self.hashes_per_query:
      raise ConfigError(f"query detection match_threshold ({self.match_threshold}) cannot exceed "
                        f"hashes_per_query ({self.hashes_per_query})")
    if not self.max_memory_mb > 0:
      raise ConfigError(f"query detection max_memory_mb must be > 0, got {self.max_memory_mb}")
    if self.action not in DETECTION_ACTIONS:
      raise ConfigError(f"query detection action must be one of {', '.join(DETECTION_ACTIONS)}, "
                        f"got {self.action!r}")
    self.client_id_header = self.client_id_header.strip().lower()
    if not self.client_id_header:
      raise ConfigError("query detection client_id_header cannot be empty")

  @property
  def rejects(self):
    return self.action in ("reject", "log_and_reject")


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
  grpc_channel_arguments: tuple = ()  # ((key, int or str value), ...)
  rest_api_num_threads: int = 8  # Threads that run REST requests; connections cost none.
  rest_api_timeout_in_ms: int = 30000  # Per-request deadline, as in TF Serving.
  rest_idle_timeout_s: float = 30.0  # A connection idle this long is closed.
  rest_max_connections: int = 1024
  enable_model_warmup: bool = True
  num_request_iterations_for_warmup: int = 1
  max_num_load_retries: int = 5
  load_retry_interval_micros: int = 60_000_000
  saved_model_tags: tuple = ("serve",)
  batching: BatchingConfig = None  # None: no server-side batching (--enable_batching off).
  detection: DetectionConfig = None  # None: no query detection (--enable_query_detection off).


@dataclasses.dataclass
class ModelConfig:
  """One served model: TF Serving's ModelConfig, the parts this server honours."""
  name: str
  base_path: str
  policy: str = "latest"  # latest | all | specific
  num_versions: int = 1
  versions: tuple = ()
  version_labels: dict = dataclasses.field(default_factory=dict)


def _read_text(path, what):
  try:
    with open(path) as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"cannot read the {what} {path}: {e}") from e


def read_model_config_file(path):
  """Parse a ModelServerConfig text proto (as for `--model_config_file`) into ModelConfigs."""
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  text = _read_text(path, "model config file")
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ConfigError(f"{path} is not a ModelServerConfig text proto: {e}") from e
  if not config.HasField("model_config_list"):
    raise ConfigError(f"{path} has no model_config_list {{ config {{ ... }} }}")
  models = []
  base_dir = os.path.dirname(os.path.abspath(path))
  for entry in config.model_config_list.config:
    if not entry.name or not entry.base_path:
      raise ConfigError(f"{path}: every config needs a name and a base_path")
    if entry.model_platform not in ("", "tensorflow"):
      raise ConfigError(f"{path}: model {entry.name} has platform {entry.model_platform!r}; "
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
    raise ConfigError(f"{path}: model names must be unique, got {names}")
  if not models:
    raise ConfigError(f"{path} lists no model")
  return models


_BATCHING_MESSAGE = None


def _batching_parameters_class():
  """TF Serving's BatchingParameters message, declared here (the pip package does not ship it)."""
  global _BATCHING_MESSAGE
  if _BATCHING_MESSAGE is not None:
    return _BATCHING_MESSAGE
  from google.protobuf import descriptor_pb2
  from google.protobuf import descriptor_pool
  from google.protobuf import message_factory
  from google.protobuf import wrappers_pb2

  pool = descriptor_pool.DescriptorPool()
  wrappers = descriptor_pb2.FileDescriptorProto()
  wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
  pool.Add(wrappers)
  file_proto = descriptor_pb2.FileDescriptorProto(
      name="lad_serving_batching.proto", package="tensorflow.serving", syntax="proto3",
      dependency=["google/protobuf/wrappers.proto"])
  message = file_proto.message_type.add(name="BatchingParameters")
  field = descriptor_pb2.FieldDescriptorProto
  wrapped = [("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
             ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
             ("thread_pool_name", "StringValue"), ("max_execution_batch_size", "Int64Value"),
             ("enable_large_batch_splitting", "BoolValue")]
  number = 1
  for name, kind in wrapped:
    message.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_MESSAGE, type_name=f".google.protobuf.{kind}")
    number += 1
  message.field.add(name="allowed_batch_sizes", number=number, label=field.LABEL_REPEATED,
                    type=field.TYPE_INT64)
  message.field.add(name="pad_variable_length_inputs", number=number + 1,
                    label=field.LABEL_OPTIONAL, type=field.TYPE_BOOL)
  message.field.add(name="batch_padding_policy", number=number + 2,
                    label=field.LABEL_OPTIONAL, type=field.TYPE_STRING)
  pool.Add(file_proto)
  _BATCHING_MESSAGE = message_factory.GetMessageClass(
      pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
  return _BATCHING_MESSAGE


# BatchingParameters fields accepted in the file but not acted on here (logged once).
BATCHING_FIELDS_WITHOUT_EFFECT = ("thread_pool_name", "max_execution_batch_size",
                                  "enable_large_batch_splitting", "pad_variable_length_inputs",
                                  "batch_padding_policy")


def read_batching_parameters_file(path=None):
  """(BatchingConfig, [fields without effect]) from a BatchingParameters text proto; None: defaults.

  The same file `tensorflow_model_server --batching_parameters_file` reads, e.g.
  `max_batch_size { value: 32 } batch_timeout_micros { value: 2000 }`.
  """
  if not path:
    return BatchingConfig(), []
  from google.protobuf import text_format

  params = _batching_parameters_class()()
  try:
    text_format.Parse(_read_text(path, "batching parameters file"), params)
  except text_format.ParseError as e:
    raise ConfigError(f"{path} is not a BatchingParameters text proto: {e}") from e
  values = {}
  for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
               "max_enqueued_batches"):
    if params.HasField(name):
      values[name] = int(getattr(params, name).value)
  values["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
  ignored = [name for name in BATCHING_FIELDS_WITHOUT_EFFECT
             if (params.HasField(name) if name not in ("pad_variable_length_inputs",
                                                       "batch_padding_policy")
                 else bool(getattr(params, name)))]
  try:
    return BatchingConfig(**values), ignored
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from e


_DETECTION_MESSAGE = None


def _detection_parameters_class():
  """Our QueryDetectionParameters message: DetectionConfig's fields, as a text proto."""
  global _DETECTION_MESSAGE
  if _DETECTION_MESSAGE is None:
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message_factory

    field = descriptor_pb2.FieldDescriptorProto
    kinds = {int: field.TYPE_INT64, float: field.TYPE_DOUBLE, str: field.TYPE_STRING}
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="lad_serving_detection.proto", package="lad.serving", syntax="proto2")
    message = file_proto.message_type.add(name="QueryDetectionParameters")
    for number, f in enumerate(dataclasses.fields(DetectionConfig), start=1):
      message.field.add(name=f.name, number=number, label=field.LABEL_OPTIONAL,
                        type=kinds[type(f.default)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    _DETECTION_MESSAGE = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("lad.serving.QueryDetectionParameters"))
  return _DETECTION_MESSAGE


def read_detection_parameters_file(path=None):
  """DetectionConfig from a text proto such as `action: "reject" neighbours_to_flag: 5`;
  None: the defaults. Fields left out keep their defaults."""
  if not path:
    return DetectionConfig()
  from google.protobuf import text_format

  params = _detection_parameters_class()()
  try:
    text_format.Parse(_read_text(path, "query detection parameters file"), params)
  except text_format.ParseError as e:
    raise ConfigError(f"{path} is not a query detection parameters text proto: {e}") from e
  values = {f.name: getattr(params, f.name) for f in dataclasses.fields(DetectionConfig)
            if params.HasField(f.name)}
  try:
    return DetectionConfig(**values)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from e


def parse_grpc_channel_arguments(text):
  """'k=v,k2=v2' (TF Serving's --grpc_channel_arguments) -> ((k, int or str), ...)."""
  pairs = []
  for item in filter(None, (part.strip() for part in (text or "").split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--grpc_channel_arguments entry {item!r} is not key=value")
    try:
      pairs.append((key, int(value)))
    except ValueError:
      pairs.append((key, value))
  return tuple(pairs)
