"""A model server speaking TF Serving's gRPC and REST APIs, for machines without the C++ binary.

`python -m serving.server --model_name=NAME --model_base_path=PATH --port=8500 --rest_api_port=8501`
takes the flags of `tensorflow_model_server`, so a client, a deployment script or a test can swap
one server for the other; a TF Serving flag that has no effect here is accepted with a one-line
warning. The pieces, each readable alone:

- `serving.config`: flags' values, `--model_config_file` and `--batching_parameters_file`;
- `serving.servable`: one loaded version (signatures, input checks, the model call);
- `serving.batching`: server-side batching (`--enable_batching`);
- `serving.detection`: stateful detection of query attacks (`--enable_query_detection`);
- `serving.manager`: versions on disk -> loaded servables (polling, retries, unloading);
- `serving.grpc_api`, `serving.rest_api`: the two protocols;
- this module: the whole server and its command line.
"""
import logging
import os
import signal
import threading

from serving import config as config_lib
from serving import grpc_api
from serving import manager as manager_lib
from serving import rest_api

log = logging.getLogger(__name__)

# Re-exported: the configuration types are part of this module's interface.
ServerConfig = config_lib.ServerConfig
ModelConfig = config_lib.ModelConfig
read_model_config_file = config_lib.read_model_config_file


class ModelServer:
  """The whole server: manager + gRPC (+ REST). `serve_until_stopped()` blocks until a signal."""

  def __init__(self, models, config):
    self.config = config
    self.detector = None
    if config.detection is not None:
      from serving import detection_worker
      self.detector = detection_worker.DetectorProcess(config.detection)
    self.manager = manager_lib.ModelManager(
        models, max_batch_size=config.max_batch_size, enable_warmup=config.enable_model_warmup,
        warmup_iterations=config.num_request_iterations_for_warmup,
        max_num_load_retries=config.max_num_load_retries,
        load_retry_interval_s=config.load_retry_interval_micros / 1e6,
        tags=config.saved_model_tags, batching=config.batching, detector=self.detector)
    self.grpc_server = self.rest_server = None
    self.grpc_port = self.rest_port = None
    self._stop_requested = threading.Event()
    self._stopped = threading.Event()

  def start(self):
    if self.config.rest_api_port and self.config.rest_api_port == self.config.port:
      raise ValueError("--rest_api_port cannot be the same as --port")
    # Like tensorflow_model_server: load what is on disk before accepting requests.
    self.manager.start_polling(self.config.file_system_poll_wait_seconds)
    self.grpc_server, self.grpc_port = grpc_api.start_grpc(self.manager, self.config)
    if self.config.rest_api_port:
      self.rest_server = rest_api.RestServer(self.manager, self.config)
      self.rest_port = self.rest_server.start()
    return self

  def stop(self, grace=1.0):
    if self._stopped.is_set():
      return
    self._stopped.set()
    self.manager.stop()
    if self.rest_server is not None:
      self.rest_server.stop()
    if self.grpc_server is not None:
      self.grpc_server.stop(grace).wait()
    if self.detector is not None:
      self.detector.close()

  def request_stop(self, *_):
    """Signal-safe: only flags the stop; `serve_until_stopped` does the work."""
    self._stop_requested.set()

  def serve_until_stopped(self):
    while not self._stop_requested.wait(0.5):
      pass
    self.stop()


# -- command line -------------------------------------------------------------------------------

# tensorflow_model_server flags accepted so that one command line runs either server, but that
# change nothing here: (name, kind, why it has no effect). Given a non-default value, each logs a
# one-line warning.
FLAGS_WITHOUT_EFFECT = (
    ("grpc_socket_path", "string", "no UNIX socket; gRPC listens on --port only"),
    ("rest_api_enable_cors_support", "bool", "no CORS headers are sent"),
    ("allow_version_labels_for_unavailable_models", "bool",
     "labels are not checked against loaded versions when the config is read"),
    ("enable_per_model_batching_parameters", "bool",
     "one --batching_parameters_file applies to every model"),
    ("model_config_file_poll_wait_seconds", "integer",
     "the config file is read once; new versions are still picked up by polling"),
    ("num_load_threads", "integer", "versions load one at a time"),
    ("num_unload_threads", "integer", "versions unload one at a time"),
    ("flush_filesystem_caches", "bool", "no filesystem caches to flush"),
    ("tensorflow_session_parallelism", "integer",
     "TF2 has no session; use --tensorflow_intra_op_parallelism/--tensorflow_inter_op_parallelism"),
    ("tensorflow_session_config_file", "string", "TF2 has no session config"),
    ("use_alts_credentials", "bool", "gRPC runs without credentials"),
    ("ssl_config_file", "string", "gRPC runs without TLS"),
    ("platform_config_file", "string", "the only platform is tensorflow"),
    ("per_process_gpu_memory_fraction", "float", "CPU only"),
    ("monitoring_config_file", "string", "no Prometheus endpoint"),
    ("remove_unused_fields_from_bundle_metagraph", "bool", "metadata is read from saved_model.pb"),
    ("prefer_tflite_model", "bool", "SavedModels only"),
    ("num_tflite_pools", "integer", "SavedModels only"),
    ("num_tflite_interpreters_per_pool", "integer", "SavedModels only"),
    ("enable_signature_method_name_check", "bool", "only Predict is served"),
    ("xla_cpu_compilation_enabled", "bool", "graphs run as exported"),
    ("enable_profiler", "bool", "no profiler service"),
    ("thread_pool_factory_config_file", "string", "TF's default thread pools are used"),
    ("mixed_precision", "string", "graphs run as exported"),
    ("skip_initialize_tpu", "bool", "CPU only"),
    ("enable_grpc_healthcheck_service", "bool", "no gRPC health service"),
)


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
  flags.DEFINE_integer("max_num_load_retries", 5,
                       "Times a failed version load is retried (as TF Serving).")
  flags.DEFINE_integer("load_retry_interval_micros", 60_000_000,
                       "Microseconds between retries of a failed load (as TF Serving).")
  flags.DEFINE_bool("enable_batching", False,
                    "Merge concurrent requests into one model call (as TF Serving).")
  flags.DEFINE_string("batching_parameters_file", None,
                      "BatchingParameters text proto (max_batch_size, batch_timeout_micros, "
                      "num_batch_threads, max_enqueued_batches, allowed_batch_sizes).")
  flags.DEFINE_bool("enable_query_detection", False,
                    "Flag clients whose queries look like a query-based attack (many near-duplicate "
                    "images; see docs/DETECTION.md). Ours, not TF Serving's.")
  flags.DEFINE_string("query_detection_parameters_file", None,
                      "Text proto of the detector's parameters (action, thresholds, memory cap, "
                      "client_id_header); defaults when not given.")
  flags.DEFINE_integer("max_batch_size", 256,
                       "Largest batch accepted (INVALID_ARGUMENT above it); 0: no limit.")
  flags.DEFINE_integer("max_request_bytes", 64 << 20,
                       "Largest request: gRPC message (RESOURCE_EXHAUSTED) or REST body (413).")
  flags.DEFINE_integer("grpc_max_threads", 16, "gRPC worker threads.")
  flags.DEFINE_string("grpc_channel_arguments", "",
                      "gRPC server arguments, 'key=value,key=value' (as TF Serving).")
  flags.DEFINE_integer("rest_api_num_threads", 2 * (os.cpu_count() or 1),
                       "Threads running REST requests; open connections hold none.")
  flags.DEFINE_integer("rest_api_timeout_in_ms", 30000,
                       "Deadline of one REST request (504 after it), as in TF Serving.")
  flags.DEFINE_bool("enable_model_warmup", True,
                    "Replay assets.extra/tf_serving_warmup_requests before serving a version.")
  flags.DEFINE_integer("num_request_iterations_for_warmup", 1,
                       "Times each warmup record is replayed (as TF Serving).")
  flags.DEFINE_string("saved_model_tags", "serve",
                      "Comma-separated MetaGraph tags to load (as TF Serving).")
  flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0,
                       "TF intra-op threads; 0: TF's default (as TF Serving).")
  flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0,
                       "TF inter-op threads; 0: TF's default (as TF Serving).")
  flags.DEFINE_bool("version", False, "Print the server's version and exit.")
  for name, kind, why in FLAGS_WITHOUT_EFFECT:
    define = {"string": flags.DEFINE_string, "bool": flags.DEFINE_bool,
              "integer": flags.DEFINE_integer, "float": flags.DEFINE_float}[kind]
    define(name, None, f"Accepted for tensorflow_model_server compatibility; no effect ({why}).")
  return flags.FLAGS


def warn_flags_without_effect(flag_values):
  """One warning line per TF Serving flag given that does nothing here."""
  warned = []
  for name, _, why in FLAGS_WITHOUT_EFFECT:
    if flag_values[name].present:
      log.warning("--%s has no effect in serving.server: %s", name, why)
      warned.append(name)
  return warned


def config_from_flags(f):
  """(models, ServerConfig) from parsed flags; raises ConfigError with a readable message."""
  if f.model_config_file:
    models = config_lib.read_model_config_file(f.model_config_file)
  elif f.model_base_path:
    models = [ModelConfig(f.model_name, os.path.abspath(f.model_base_path))]
  else:
    raise config_lib.ConfigError(
        "give --model_base_path=DIR (with --model_name) or --model_config_file=FILE")
  batching = None
  if f.enable_batching:
    batching, ignored = config_lib.read_batching_parameters_file(f.batching_parameters_file)
    for name in ignored:
      log.warning("batching parameter %s has no effect in serving.server", name)
  elif f.batching_parameters_file:
    log.warning("--batching_parameters_file has no effect without --enable_batching "
                "(as in TF Serving)")
  detection = None
  if f.enable_query_detection:
    detection = config_lib.read_detection_parameters_file(f.query_detection_parameters_file)
  elif f.query_detection_parameters_file:
    log.warning("--query_detection_parameters_file has no effect without "
                "--enable_query_detection")
  config = ServerConfig(
      port=f.port, rest_api_port=f.rest_api_port, host=f.host,
      file_system_poll_wait_seconds=f.file_system_poll_wait_seconds,
      max_batch_size=f.max_batch_size, max_request_bytes=f.max_request_bytes,
      grpc_max_threads=f.grpc_max_threads,
      grpc_channel_arguments=config_lib.parse_grpc_channel_arguments(f.grpc_channel_arguments),
      rest_api_num_threads=f.rest_api_num_threads,
      rest_api_timeout_in_ms=f.rest_api_timeout_in_ms,
      enable_model_warmup=f.enable_model_warmup,
      num_request_iterations_for_warmup=f.num_request_iterations_for_warmup,
      max_num_load_retries=f.max_num_load_retries,
      load_retry_interval_micros=f.load_retry_interval_micros,
      saved_model_tags=tuple(t.strip() for t in f.saved_model_tags.split(",") if t.strip()),
      batching=batching, detection=detection)
  return models, config


def _set_tf_threads(intra, inter):
  if intra or inter:
    import tensorflow as tf
    if intra:
      tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
      tf.config.threading.set_inter_op_parallelism_threads(inter)


def check_model_paths(models):
  """A base path that does not exist is a typo, not a model to wait for: refused before `ready`."""
  for model in models:
    if not os.path.isdir(model.base_path):
      raise config_lib.ConfigError(
          f"model {model.name}: base path {model.base_path} does not exist; give the folder that holds its "
          f"numbered versions (python -m pipelines.export writes DIR/export/1/...)")


def main(argv):
  """Everything a user can fix ends as one line (lad_tf.cli): bad flags and paths exit 2, a taken port 1."""
  del argv  # lad_tf.cli.run refuses stray arguments
  from lad_tf.errors import ConfigError, LadError
  flags_ = _FLAGS
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if flags_.version:
    print("serving.server (lad_tf), TF Serving API 2.x compatible")
    return
  warn_flags_without_effect(flags_)
  try:
    models, config = config_from_flags(flags_)
    check_model_paths(models)
  except config_lib.ConfigError as e:
    raise ConfigError(str(e)) from e
  _set_tf_threads(flags_.tensorflow_intra_op_parallelism, flags_.tensorflow_inter_op_parallelism)
  server = ModelServer(models, config)
  try:
    server.start()
  except (OSError, ValueError) as e:
    server.stop(0)
    raise LadError(f"serving.server cannot start: {e}") from e
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, server.request_stop)
  rest = f"{config.host}:{server.rest_port}" if server.rest_port else "off"
  batching = "on" if config.batching else "off"
  detection = config.detection.action if config.detection else "off"
  print(f"serving.server ready: grpc={config.host}:{server.grpc_port} rest={rest} "
        f"batching={batching} query_detection={detection} "
        f"models={server.manager.model_names}", flush=True)
  server.serve_until_stopped()
  log.info("serving.server stopped")


# --help's groups; the flags without effect make one paragraph, not one entry each
HELP_GROUPS = (
    ("models", ("model_name", "model_base_path", "model_config_file", "file_system_poll_wait_seconds",
                "max_num_load_retries", "load_retry_interval_micros", "saved_model_tags", "enable_model_warmup",
                "num_request_iterations_for_warmup")),
    ("network", ("port", "rest_api_port", "host", "max_request_bytes", "grpc_max_threads", "grpc_channel_arguments",
                 "rest_api_num_threads", "rest_api_timeout_in_ms")),
    ("batching and threads", ("enable_batching", "batching_parameters_file", "max_batch_size",
                              "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism")),
    ("query-attack detection", ("enable_query_detection", "query_detection_parameters_file")),
    ("messages", ("version", "verbose")),
)


def help_groups():
  from lad_tf import cli_help
  ignored = cli_help.brief("accepted for tensorflow_model_server compatibility and ignored (a warning when given)",
                           [name for name, _, _ in FLAGS_WITHOUT_EFFECT])
  return HELP_GROUPS + (ignored,)


if __name__ == "__main__":
  from lad_tf import cli

  _FLAGS = _define_flags()
  cli.run(main, help_groups=help_groups())
