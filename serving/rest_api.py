"""TF Serving's REST API: an event loop for connections, a bounded thread pool for requests.

Connections live on one asyncio loop, so an idle or slow client costs a socket and a few
kilobytes, never a thread: 64 idle keep-alive connections leave every worker free. A request is
bounded while it is read, before any parsing: the declared (or chunked) length against
`--max_request_bytes` (413), and a streaming count of the numbers in the body against what the
batch limit allows (400), so a refused body costs little memory and time. Only a complete,
bounded request reaches the pool of `--rest_api_num_threads` workers, which parse the JSON, run
the model and encode the answer; `--rest_api_timeout_in_ms` is the deadline of that work (504),
as in TF Serving. Every answer, errors included, is TF Serving's JSON (`{"error": "..."}`).
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

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 << 10  # Request line plus headers.
MAX_URL_BYTES = 8 << 10
_READ_CHUNK = 1 << 16
_DRAIN_CHUNK = 1 << 20  # Whatever the transport buffered: few loop turns per refused body.
_DRAIN_SECONDS = 2.0  # A refused body is read and dropped this long so the client sees the answer.

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(predict|classify|regress)",
    re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 409: "Conflict", 411: "Length Required",
            413: "Payload Too Large", 414: "URI Too Long", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 499: "Client Closed Request",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}


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
  may_hold_bools = b"true" in body or b"false" in body
  arrays = servable.decode_json(signature, values, may_hold_bools=may_hold_bools)
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
    return _json_dict(grpc_api.status_proto(manager, request))
  response = grpc_api.metadata_proto(manager, request)
  return {"model_spec": _json_dict(response.model_spec),
          "metadata": {"signature_def": _json_dict(
              get_model_metadata_pb2.SignatureDefMap.FromString(
                  response.metadata["signature_def"].value))}}


# -- HTTP on the event loop ---------------------------------------------------------------------


class _Reject(Exception):
  """Answer `error` and close the connection (the rest of the request is not read)."""

  def __init__(self, error):
    super().__init__(error.message)
    self.error = error


class _Request:
  def __init__(self, method, target, version, headers):
    self.method, self.target, self.version, self.headers = method, target, version, headers
    self.path = target.split("?", 1)[0]
    connection = headers.get("connection", "").lower()
    self.keep_alive = ("close" not in connection if version == "HTTP/1.1"
                       else "keep-alive" in connection)
    self.has_body = ("chunked" in headers.get("transfer-encoding", "").lower()
                     or headers.get("content-length", "0") not in ("", "0"))


def _parse_head(head):
  lines = head.decode("latin-1").split("\r\n")
  parts = lines[0].split(" ")
  if (len(parts) != 3 or not re.fullmatch(r"[A-Z]{1,16}", parts[0])
      or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/")):
    shown = lines[0][:80]
    raise _Reject(errors.invalid(f"malformed HTTP request line {shown!r}; expected e.g. "
                                 "`POST /v1/models/NAME:predict HTTP/1.1`"))
  if len(parts[1]) > MAX_URL_BYTES:
    raise _Reject(errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"the URL is {len(parts[1])} bytes, above the limit of "
                                      f"{MAX_URL_BYTES}", 414))
  headers = {}
  for line in lines[1:]:
    if not line:
      continue
    name, sep, value = line.partition(":")
    if not sep or not name or name != name.strip():
      raise _Reject(errors.invalid(f"malformed HTTP header line {line[:80]!r}"))
    headers[name.lower()] = value.strip()
  return _Request(parts[0], parts[1], parts[2], headers)


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
            limit=MAX_HEAD_BYTES, backlog=512, reuse_address=True))
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
      keep_alive = True
      while keep_alive:
        keep_alive = await self._serve_request(reader, writer)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
      pass
    finally:
      self._connections -= 1
      writer.close()

  async def _serve_request(self, reader, writer):
    """Read, bound and answer one request; returns whether the connection stays open."""
    idle = self._config.rest_idle_timeout_s
    try:
      head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
    except asyncio.IncompleteReadError:
      return False  # The client closed (or sent half a request and left).
    except asyncio.LimitOverrunError:
      line_end = reader._buffer.find(b"\r\n")  # pylint: disable=protected-access
      if line_end < 0 or line_end > MAX_URL_BYTES:
        error = errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request line is above {MAX_URL_BYTES} bytes", 414)
      else:
        error = errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request head is above {MAX_HEAD_BYTES} bytes", 431)
      await self._answer(writer, error, keep_alive=False)
      return False
    try:
      request = _parse_head(head)
      route = self._route(request)
      body = b""
      if request.method == "POST":
        if request.headers.get("expect", "").lower() == "100-continue":
          writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(reader, request, route)
    except _Reject as reject:
      await self._answer(writer, reject.error, keep_alive=False)
      await self._drain(reader)
      return False
    except errors.ServingError as e:  # Refused from the head alone.
      if request.has_body:  # Its body was not read: answer, drop what follows, close.
        await self._answer(writer, e, keep_alive=False)
        await self._drain(reader)
        return False
      await self._answer(writer, e, keep_alive=request.keep_alive)
      return request.keep_alive
    status, payload = await self._run(route, body)
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

  async def _read_body(self, reader, request, route):
    """The body, refused (413/411/400) as soon as it is known to be too big, before parsing."""
    max_bytes = self._config.max_request_bytes
    bound = self._value_bound(route)
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    length = request.headers.get("content-length")
    if not chunked and length is None:
      raise _Reject(errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                        "a POST needs a Content-Length header or a chunked "
                                        "body", 411))
    if not chunked:
      if not length.isascii() or not length.isdigit():
        raise _Reject(errors.invalid(f"bad Content-Length {length!r}"))
      length = int(length)
      if length > max_bytes:
        raise _Reject(self._too_large(length))
    body = bytearray()
    commas = 0

    def take(data):
      nonlocal commas
      if len(body) + len(data) > max_bytes:
        raise _Reject(self._too_large(len(body) + len(data), declared=False))
      body.extend(data)
      if bound is not None:
        commas += data.count(b",")
        if commas > bound[2]:
          values, batch, _ = bound
          raise _Reject(errors.invalid(
              f"the body holds more numbers than the maximum batch size {batch} allows "
              f"({values} values); refused while reading, before parsing: split the request"))

    idle = self._config.rest_idle_timeout_s

    async def read_exactly(n):  # n bytes in bounded pieces, each counted by take()
      left = n
      while left > 0:
        data = await asyncio.wait_for(reader.read(min(left, _READ_CHUNK)), idle)
        if not data:
          raise asyncio.IncompleteReadError(bytes(body), n)
        take(data)
        left -= len(data)

    if not chunked:
      await read_exactly(length)
      return bytes(body)
    while True:  # Chunked transfer coding: size line, data, CRLF; a 0 size ends it.
      line = await asyncio.wait_for(reader.readuntil(b"\r\n"), idle)
      size_text = line.split(b";", 1)[0].strip()
      try:
        size = int(size_text, 16)
      except ValueError:
        raise _Reject(errors.invalid(f"malformed chunk size {size_text[:20]!r}")) from None
      if size == 0:
        while (await asyncio.wait_for(reader.readuntil(b"\r\n"), idle)) != b"\r\n":
          pass  # Trailers are read and dropped.
        return bytes(body)
      if len(body) + size > max_bytes:
        raise _Reject(self._too_large(len(body) + size, declared=False))
      await read_exactly(size)
      if await asyncio.wait_for(reader.readexactly(2), idle) != b"\r\n":
        raise _Reject(errors.invalid("malformed chunked body: a chunk does not end in CRLF"))

  def _too_large(self, length, declared=True):
    what = "request body of" if declared else "request body of at least"
    return errors.ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} {length} bytes exceeds the limit of {self._config.max_request_bytes} bytes "
        "(--max_request_bytes); send smaller batches", 413)

  async def _drain(self, reader):
    """Read and drop what the client still sends (bounded), so it gets to read the answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DRAIN_SECONDS
    budget = 2 * self._config.max_request_bytes + (1 << 20)
    try:
      while budget > 0:
        left = deadline - loop.time()
        if left <= 0:
          return
        data = await asyncio.wait_for(reader.read(_DRAIN_CHUNK), left)
        if not data:
          return
        budget -= len(data)
    except (asyncio.TimeoutError, ConnectionError, OSError):
      pass

  async def _run(self, route, body):
    """Run the request on the pool under the --rest_api_timeout_in_ms deadline."""
    kind, args = route

    def work():
      try:
        if kind == "get":
          return 200, rest_get(self._manager, *args)
        name, version, label, verb = args
        if verb != "predict":
          raise errors.ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                    f":{verb} is not implemented; use :predict")
        return 200, rest_predict(self._manager, name, version, label, body)
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

  async def _answer(self, writer, answer, keep_alive):
    if isinstance(answer, errors.ServingError):
      status, payload = answer.http, {"error": answer.message}
    else:
      status, payload = answer
    body = json.dumps(payload).encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
    writer.write(head.encode() + body)
    await asyncio.wait_for(writer.drain(), self._config.rest_idle_timeout_s)
