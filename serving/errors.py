"""One error type for the server, the client and the export, carrying TF Serving's status codes.

The server raises `ServingError` wherever a request is refused; the gRPC layer turns it into the
gRPC status and the REST layer into the HTTP status TF Serving itself would send, so a client sees
the same code from our server and from `tensorflow_model_server`.
"""
import grpc

# TF Serving's REST server maps canonical codes to HTTP like this (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_CODE_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    411: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def http_status(code):
  """The HTTP status TF Serving's REST API answers for a gRPC status code."""
  return _HTTP_STATUS.get(code, 500)


def code_from_http(status):
  """Best-effort gRPC code for an HTTP status (the REST client reports both)."""
  if status in _CODE_BY_HTTP:
    return _CODE_BY_HTTP[status]
  return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN


class ServingError(Exception):
  """A refused request or a failed load: a gRPC status code and a message naming the problem.

  `http` overrides the HTTP status where HTTP has a more precise one than the gRPC mapping
  (413 for a body over the size limit, 411 for a body without Content-Length).
  """

  def __init__(self, code, message, http=None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http = http if http is not None else http_status(code)

  def __str__(self):
    return f"{self.code.name}: {self.message}"


def invalid(message):
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message):
  return ServingError(grpc.StatusCode.NOT_FOUND, message)
