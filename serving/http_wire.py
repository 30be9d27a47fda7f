"""HTTP/1.1 on asyncio streams for the REST API: the request head, a bounded body, the answer.

Kept apart from the API (`serving.rest_api`) because it is the part that faces hostile bytes: a
request is bounded while it is read, before any parsing, by its declared (or chunked) length
against `--max_request_bytes` (413) and by a streaming count of the numbers in the body against
what the batch limit allows (400), so a refused body costs little memory and time.
"""
import asyncio
import json
import re

import grpc

from serving import errors

MAX_HEAD_BYTES = 64 << 10  # Request line plus headers.
MAX_URL_BYTES = 8 << 10
_READ_CHUNK = 1 << 16
_DRAIN_CHUNK = 1 << 20  # Whatever the transport buffered: few loop turns per refused body.
_DRAIN_SECONDS = 2.0  # A refused body is read and dropped this long so the client sees the answer.

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 409: "Conflict", 411: "Length Required",
           413: "Payload Too Large", 414: "URI Too Long", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 499: "Client Closed Request",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class Reject(Exception):
  """Answer `error` and close the connection (the rest of the request is not read)."""

  def __init__(self, error):
    super().__init__(error.message)
    self.error = error


class Request:
  def __init__(self, method, target, version, headers):
    self.method, self.target, self.version, self.headers = method, target, version, headers
    self.path = target.split("?", 1)[0]
    connection = headers.get("connection", "").lower()
    self.keep_alive = ("close" not in connection if version == "HTTP/1.1"
                       else "keep-alive" in connection)
    self.has_body = ("chunked" in headers.get("transfer-encoding", "").lower()
                     or headers.get("content-length", "0") not in ("", "0"))


def parse_head(head):
  lines = head.decode("latin-1").split("\r\n")
  parts = lines[0].split(" ")
  if (len(parts) != 3 or not re.fullmatch(r"[A-Z]{1,16}", parts[0])
      or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/")):
    shown = lines[0][:80]
    raise Reject(errors.invalid(f"malformed HTTP request line {shown!r}; expected e.g. "
                                "`POST /v1/models/NAME:predict HTTP/1.1`"))
  if len(parts[1]) > MAX_URL_BYTES:
    raise Reject(errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"the URL is {len(parts[1])} bytes, above the limit of "
                                     f"{MAX_URL_BYTES}", 414))
  headers = {}
  for line in lines[1:]:
    if not line:
      continue
    name, sep, value = line.partition(":")
    if not sep or not name or name != name.strip():
      raise Reject(errors.invalid(f"malformed HTTP header line {line[:80]!r}"))
    headers[name.lower()] = value.strip()
  return Request(parts[0], parts[1], parts[2], headers)


def head_overrun_error(reader):
  """The answer to a head above MAX_HEAD_BYTES: 414 when the request line alone is too long."""
  line_end = reader._buffer.find(b"\r\n")  # pylint: disable=protected-access
  if line_end < 0 or line_end > MAX_URL_BYTES:
    return errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"the request line is above {MAX_URL_BYTES} bytes", 414)
  return errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the request head is above {MAX_HEAD_BYTES} bytes", 431)


def too_large(length, max_bytes, declared=True):
  what = "request body of" if declared else "request body of at least"
  return errors.ServingError(
      grpc.StatusCode.RESOURCE_EXHAUSTED,
      f"{what} {length} bytes exceeds the limit of {max_bytes} bytes "
      "(--max_request_bytes); send smaller batches", 413)


async def read_body(reader, request, max_bytes, bound, idle):
  """The body, refused (413/411/400) as soon as it is known to be too big, before parsing.

  bound: None, or (values, batch, commas) from the served model: a valid body holds at most
    `commas` commas.
  """
  chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
  length = request.headers.get("content-length")
  if not chunked and length is None:
    raise Reject(errors.ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "a POST needs a Content-Length header or a chunked "
                                     "body", 411))
  if not chunked:
    if not length.isascii() or not length.isdigit():
      raise Reject(errors.invalid(f"bad Content-Length {length!r}"))
    length = int(length)
    if length > max_bytes:
      raise Reject(too_large(length, max_bytes))
  body = bytearray()
  commas = 0

  def take(data):
    nonlocal commas
    if len(body) + len(data) > max_bytes:
      raise Reject(too_large(len(body) + len(data), max_bytes, declared=False))
    body.extend(data)
    if bound is not None:
      commas += data.count(b",")
      if commas > bound[2]:
        values, batch, _ = bound
        raise Reject(errors.invalid(
            f"the body holds more numbers than the maximum batch size {batch} allows "
            f"({values} values); refused while reading, before parsing: split the request"))

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
      raise Reject(errors.invalid(f"malformed chunk size {size_text[:20]!r}")) from None
    if size == 0:
      while (await asyncio.wait_for(reader.readuntil(b"\r\n"), idle)) != b"\r\n":
        pass  # Trailers are read and dropped.
      return bytes(body)
    if len(body) + size > max_bytes:
      raise Reject(too_large(len(body) + size, max_bytes, declared=False))
    await read_exactly(size)
    if await asyncio.wait_for(reader.readexactly(2), idle) != b"\r\n":
      raise Reject(errors.invalid("malformed chunked body: a chunk does not end in CRLF"))


async def drain(reader, max_bytes):
  """Read and drop what the client still sends (bounded), so it gets to read the answer."""
  loop = asyncio.get_running_loop()
  deadline = loop.time() + _DRAIN_SECONDS
  budget = 2 * max_bytes + (1 << 20)
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


async def answer(writer, reply, keep_alive, idle):
  """Write TF Serving's JSON answer: a ServingError or (status, payload)."""
  if isinstance(reply, errors.ServingError):
    status, payload = reply.http, {"error": reply.message}
  else:
    status, payload = reply
  body = json.dumps(payload).encode()
  head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
          "Content-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\n"
          + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
  writer.write(head.encode() + body)
  await asyncio.wait_for(writer.drain(), idle)
