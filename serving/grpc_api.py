"""TF Serving's gRPC API over a ModelManager: PredictionService and ModelService.

The request -> response functions (`predict_proto`, `metadata_proto`, `status_proto`) are shared
with the REST API, so both answer from the same code; the servicers only map a `ServingError`
to its gRPC status.
"""
import concurrent.futures
import logging

import grpc

from serving import errors

log = logging.getLogger(__name__)


def spec_version(spec):
  """(version or None, label or None) of a ModelSpec."""
  choice = spec.WhichOneof("version_choice")
  if choice == "version":
    return int(spec.version.value), None
  if choice == "version_label":
    return None, spec.version_label
  return None, None


def predict_proto(manager, request, client=None):
  """PredictRequest -> PredictResponse (raises ServingError); `client`: see Servable.run."""
  from tensorflow_serving.apis import predict_pb2
  from serving import tensors  # Deferred: it imports TensorFlow.

  version, label = spec_version(request.model_spec)
  servable = manager.resolve(request.model_spec.name, version, label)
  signature = servable.signature(request.model_spec.signature_name)
  arrays = servable.decode_protos(signature, request.inputs)
  outputs = servable.run(signature, arrays, request.output_filter, client=client)
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
  version, label = spec_version(request.model_spec)
  servable = manager.resolve(request.model_spec.name, version, label)
  response = get_model_metadata_pb2.GetModelMetadataResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.metadata["signature_def"].Pack(servable.signature_defs)
  return response


def status_proto(manager, request):
  """GetModelStatus: one version when the spec names one, else all (a label names none, as TF)."""
  from tensorflow_serving.apis import get_model_status_pb2

  version, _ = spec_version(request.model_spec)
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
      detector = self.manager.detector
      client = None
      if detector is not None:  # Who is asking matters only to the query detector.
        from serving import detection
        client = detection.grpc_client_id(context, detector.config.client_id_header)
      return predict_proto(self.manager, request, client)

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
  options = dict([("grpc.max_receive_message_length", config.max_request_bytes),
                  ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
  options.update(config.grpc_channel_arguments)  # --grpc_channel_arguments win, as in TF.
  server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=config.grpc_max_threads,
                                            thread_name_prefix="grpc"),
      options=list(options.items()))
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
