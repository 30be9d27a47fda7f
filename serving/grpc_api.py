"""TF Serving's gRPC API over a ModelManager: PredictionService and ModelService.

The request -> response functions (`predict_proto`, `metadata_proto`, `status_proto`) are shared
with the REST API, so both answer from the same code; the servicers only map a `ServingError`
to its gRPC status.

The server is `grpc.aio` on one event loop in its own thread: a request is decoded, run and
encoded on the loop, with no hand-off to a worker thread (about half of a batch-1 Predict's server
time went to those hand-offs with the thread-pool server). A batched request awaits the batch
thread's future, so 16 waiting requests hold no thread.
"""
import asyncio
import logging
import threading

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


def predict_proto(manager, request):
  """PredictRequest -> PredictResponse (raises ServingError)."""
  servable, signature, arrays = _predict_inputs(manager, request)
  return _predict_response(servable, signature,
                           servable.run(signature, arrays, request.output_filter))


async def predict_proto_async(manager, request):
  """`predict_proto` on the event loop: a batched request is awaited, not waited for."""
  servable, signature, arrays = _predict_inputs(manager, request)
  return _predict_response(servable, signature, await servable.run_async(
      signature, arrays, request.output_filter))


def _predict_inputs(manager, request):
  version, label = spec_version(request.model_spec)
  servable = manager.resolve(request.model_spec.name, version, label)
  signature = servable.signature(request.model_spec.signature_name)
  return servable, signature, servable.decode_protos(signature, request.inputs)


def _predict_response(servable, signature, outputs):
  from tensorflow_serving.apis import predict_pb2
  from serving import tensors  # Deferred: it imports TensorFlow.

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

  async def handler(self, request, context):
    try:
      return await method(self, request, context)
    except errors.ServingError as e:
      error = (e.code, e.message)
    except Exception as e:  # pylint: disable=broad-except  Reported, the server lives on.
      log.exception("%s failed", method.__name__)
      error = (grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    await context.abort(*error)  # Outside the except: abort raises to end the RPC.

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
    async def Predict(self, request, context):
      return await predict_proto_async(self.manager, request)

    @_guarded
    async def GetModelMetadata(self, request, context):
      return metadata_proto(self.manager, request)

    async def _unimplemented(self, request, context):
      await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          "this server implements Predict and GetModelMetadata; the exported "
                          "signatures are predict signatures")

    Classify = Regress = MultiInference = _unimplemented

  class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
      self.manager = manager

    @_guarded
    async def GetModelStatus(self, request, context):
      return status_proto(self.manager, request)

    async def HandleReloadConfigRequest(self, request, context):
      await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          "config reload is not supported; new versions are picked up from the "
                          "base path, other changes need a restart")

  return PredictionServicer, ModelServicer


class GrpcServer:
  """A `grpc.aio` server on its own event loop thread; `stop(grace)` ends both."""

  def __init__(self, manager, config):
    self._manager, self._config = manager, config
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop",
                                    daemon=True)
    self._server = None

  def start(self):
    """Listen and serve; returns the bound port."""
    self._thread.start()
    try:
      return asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
    except BaseException:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(5)
      raise

  async def _start(self):
    from tensorflow_serving.apis import model_service_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    config = self._config
    prediction, model = _servicers()
    options = dict([("grpc.max_receive_message_length", config.max_request_bytes),
                    ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
    options.update(config.grpc_channel_arguments)  # --grpc_channel_arguments win, as in TF.
    self._server = grpc.aio.server(options=list(options.items()))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        prediction(self._manager), self._server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model(self._manager),
                                                              self._server)
    address = f"{config.host}:{config.port}"
    try:
      port = self._server.add_insecure_port(address)
    except RuntimeError as e:
      raise OSError(f"cannot listen for gRPC on {address} ({e}); is the port taken?") from e
    if port == 0:
      raise OSError(f"cannot listen for gRPC on {address}; is the port taken?")
    await self._server.start()
    return port

  def stop(self, grace=1.0):
    """Refuse new RPCs, give running ones `grace` seconds, then end the loop thread."""
    if self._server is not None and self._thread.is_alive():
      try:
        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(
            grace + 10)
      except Exception:  # pylint: disable=broad-except  Stopping goes on regardless.
        log.exception("gRPC server did not stop cleanly")
    if self._thread.is_alive():
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(10)


def start_grpc(manager, config):
  """Start the gRPC server; returns (GrpcServer, bound port)."""
  server = GrpcServer(manager, config)
  return server, server.start()
