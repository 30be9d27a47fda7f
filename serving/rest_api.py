"""TF Serving's REST API: an event loop for connections, a bounded thread pool for requests.

Connections live on one asyncio loop, so an idle or slow client costs a socket and a few
kilobytes, never a thread: 64 idle keep-alive connections leave every worker free. A request is
bounded while it is read, before any parsing (`serving.http_wire`: the declared or chunked
length against `--max_request_bytes`, 413, and a streaming count of the numbers in the body
against what the batch limit allows, 400). Only a complete, bounded request reaches the pool
of `--rest_api_num_threads` workers, which parse the JSON, run the model and encode the answer;
`--rest_api_timeout_in_ms` is the deadline of that work (504), as in TF Serving. Every answer, errors included, is TF Serving's JSON (`{"error": "..."}`).
"""
import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import urllib.parse

import grpc

from serving import config as config_lib
from serving import errors
from serving import grpc_api
from serving import http_wire

log = logging.getLogger(__name__)

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(predict|classify|regress)",
    re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)
DETECTION_PATH = "/monitoring/detection"  # The query detector's counts (GET, JSON).


def _json_dict(message):
  from google.protobuf import json_format
  return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def _version(text):
  """URL version -> int; above int64 is TF Serving's 400, not a 500."""
  if text is None:
    return None
  version = int(text)
  if version > config_lib.INT64_MAX:
    raise errors.invalid(f"Failed to convert version: {text} to numeric. Versions are int64 "
                         f"(at most {config_lib.INT64_MAX})")
  return version


def _unquote(text):
  return urllib.parse.unquote(text) if text is not None else None


# -- the API (runs on a worker thread) ----------------------------------------------------------


def rest_predict(manager, name, version, label, body, client=None):
  """POST :predict body (bytes) -> response dict, in TF Serving's row or columnar format;
  `client`: see Servable.run."""
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
  may_hold_bools = b"true" in body or b"false" in body
  arrays = servable.decode_json(signature, values, may_hold_bools=may_hold_bools)
  outputs = servable.run(signature, arrays, client=client)
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
    return _json_dict(grpc_api.status_proto(manager, request))
  response = grpc_api.metadata_proto(manager, request)
  return {"model_spec": _json_dict(response.model_spec),
          "metadata": {"signature_def": _json_dict(
              get_model_metadata_pb2.SignatureDefMap.FromString(
                  response.metadata["signature_def"].value))}}


# -- HTTP on the event loop ---------------------------------------------------------------------


class RestServer:
  """TF Serving's REST API on `config.host:config.rest_api_port`; `start()` returns the port."""

  def __init__(self, manager, config):
    self._manager = manager
    self._config = config
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, config.rest_api_num_threads), thread_name_prefix="rest")
    self._loop = None
    self._server = None
    self._thread = None
    self._connections = 0
    self.port = None

  def start(self):
    ready = threading.Event()
    failure = []

    def run():
      self._loop = asyncio.new_event_loop()
      asyncio.set_event_loop(self._loop)
      try:
        self._server = self._loop.run_until_complete(asyncio.start_server(
            self._serve_connection, self._config.host, self._config.rest_api_port,
            limit=http_wire.MAX_HEAD_BYTES, backlog=512, reuse_address=True))
        self.port = self._server.sockets[0].getsockname()[1]
      except OSError as e:
        failure.append(e)
        ready.set()
        return
      ready.set()
      self._loop.run_forever()
      self._server.close()
      self._loop.run_until_complete(self._server.wait_closed())
      self._loop.close()

    self._thread = threading.Thread(target=run, name="rest-loop", daemon=True)
    self._thread.start()
    ready.wait()
    if failure:
      raise OSError(f"cannot listen for REST on {self._config.host}:"
                    f"{self._config.rest_api_port} ({failure[0]}); is the port taken?")
    return self.port

  def stop(self):
    if self._loop is not None and self._loop.is_running():
      self._loop.call_soon_threadsafe(self._loop.stop)
    if self._thread is not None:
      self._thread.join(timeout=5)
    self._pool.shutdown(wait=False, cancel_futures=True)

  # -- one connection -------------------------------------------------------------------------

  async def _serve_connection(self, reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
      import socket
      sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    self._connections += 1
    try:
      if self._connections > self._config.rest_max_connections:
        await self._answer(writer, errors.ServingError(
            grpc.StatusCode.UNAVAILABLE, f"too many open connections (limit "
            f"{self._config.rest_max_connections}); retry later"), keep_alive=False)
        return
      peer = writer.get_extra_info("peername")
      peer = peer[0] if isinstance(peer, tuple) and peer else None
      keep_alive = True
      while keep_alive:
        keep_alive = await self._serve_request(reader, writer, peer)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
      pass
    finally:
      self._connections -= 1
      writer.close()

  async def _serve_request(self, reader, writer, peer=None):
    """Read, bound and answer one request; returns whether the connection stays open."""
    idle = self._config.rest_idle_timeout_s
    try:
      head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
    except asyncio.IncompleteReadError:
      return False  # The client closed (or sent half a request and left).
    except asyncio.LimitOverrunError:
      await self._answer(writer, http_wire.head_overrun_error(reader), keep_alive=False)
      return False
    try:
      request = http_wire.parse_head(head)
      route = self._route(request)
      body = b""
      if request.method == "POST":
        if request.headers.get("expect", "").lower() == "100-continue":
          writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await http_wire.read_body(reader, request, self._config.max_request_bytes,
                                         self._value_bound(route),
                                         self._config.rest_idle_timeout_s)
    except http_wire.Reject as reject:
      await self._answer(writer, reject.error, keep_alive=False)
      await http_wire.drain(reader, self._config.max_request_bytes)
      return False
    except errors.ServingError as e:  # Refused from the head alone.
      if request.has_body:  # Its body was not read: answer, drop what follows, close.
        await self._answer(writer, e, keep_alive=False)
        await http_wire.drain(reader, self._config.max_request_bytes)
        return False
      await self._answer(writer, e, keep_alive=request.keep_alive)
      return request.keep_alive
    client = None
    detector = self._manager.detector
    if detector is not None:  # Who is asking matters only to the query detector.
      from serving import detection
      client = detection.rest_client_id(request.headers, peer, detector.config.client_id_header)
    status, payload = await self._run(route, body, client)
    await self._answer(writer, (status, payload), keep_alive=request.keep_alive)
    return request.keep_alive

  def _route(self, request):
    """(kind, args) for a request, or raise ServingError with TF Serving's answer."""
    path = request.path
    if request.method == "POST":
      match = _PREDICT_PATH.fullmatch(path)
      if match:
        name, version, label, verb = match.groups()
        return "predict", (_unquote(name), _version(version), _unquote(label), verb.lower())
    elif request.method == "GET":
      if path == DETECTION_PATH:
        return "detection", ()
      match = _MODEL_PATH.fullmatch(path)
      if match:
        name, version, label, metadata = match.groups()
        return "get", (_unquote(name), _version(version), _unquote(label), bool(metadata))
    # TF Serving routes every method under /v1/ and refuses the unknown ones as malformed.
    raise self._unrouted(request)

  @staticmethod
  def _unrouted(request):
    if request.path.lower().startswith("/v1/"):
      return errors.invalid(f"malformed request: {request.method} {request.path}; use POST "
                            "/v1/models/NAME[/versions/V]:predict or GET /v1/models/NAME"
                            "[/versions/V][/metadata]")
    return errors.not_found(f"no such resource: {request.path}")

  def _value_bound(self, route):
    """Commas a valid body can hold (None: unknown): each number needs at most two."""
    kind, (name, version, label, _) = route
    if kind != "predict":
      return None
    try:
      servable = self._manager.resolve(name, version, label)
    except errors.ServingError:
      return None  # The worker answers the resolve error once the body is read.
    values = servable.max_values_per_request()
    if values is None:
      return None
    return values, servable.max_batch_size, 2 * values + 1024

  async def _run(self, route, body, client=None):
    """Run the request on the pool under the --rest_api_timeout_in_ms deadline."""
    kind, args = route

    def work():
      try:
        if kind == "get":
          return 200, rest_get(self._manager, *args)
        if kind == "detection":
          detector = self._manager.detector
          return 200, detector.metrics() if detector is not None else {"enabled": False}
        name, version, label, verb = args
        if verb != "predict":
          raise errors.ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                    f":{verb} is not implemented; use :predict")
        return 200, rest_predict(self._manager, name, version, label, body, client)
      except errors.ServingError as e:
        return e.http, {"error": e.message}
      except Exception as e:  # pylint: disable=broad-except  One request fails, the server lives.
        log.exception("REST %s failed", kind)
        return 500, {"error": f"internal error: {type(e).__name__}: {e}"}

    future = asyncio.get_running_loop().run_in_executor(self._pool, work)
    timeout = self._config.rest_api_timeout_in_ms / 1000.0
    try:
      return await asyncio.wait_for(future, timeout if timeout > 0 else None)
    except asyncio.TimeoutError:
      return 504, {"error": f"the request did not complete within {timeout * 1000:.0f} ms "
                            "(--rest_api_timeout_in_ms)"}

  async def _answer(self, writer, reply, keep_alive):
    await http_wire.answer(writer, reply, keep_alive, self._config.rest_idle_timeout_s)
