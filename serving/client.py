"""Client for TF Serving's API: our `serving.server` and `tensorflow_model_server` alike.

Python: `PredictClient("localhost:8500", model_name="lad").predict(images)` returns
`{"probabilities": [N, K] float32, "classes": [N] int64}`; `rest=True` talks JSON to the REST
port instead of gRPC (`PredictionServiceStub`). A refused request raises `RequestError` with
the gRPC code name and the HTTP status.

Command line: `python -m serving.client --server=HOST:PORT --model_name=NAME --images=PATH`
(PNG or NPY, a file or a directory) prints one line per image with the predicted class.
"""
import http.client
import json
import os
import threading

import numpy as np

from serving import errors

DEFAULT_SIGNATURE = "serving_default"
INPUT_KEY = "images"


class RequestError(RuntimeError):
  """The server refused a request: `code` is the gRPC status name, `http` the HTTP status."""

  def __init__(self, code, message, http=None):
    super().__init__(f"{code}: {message}")
    self.code = code
    self.message = message
    self.http = http


class PredictClient:
  """Predict / metadata / status calls against one model; thread-safe (one call per thread)."""

  def __init__(self, server, *, model_name="lad", rest=False, signature_name=DEFAULT_SIGNATURE,
               version=None, timeout=30.0, max_message_bytes=64 << 20, client_id=None,
               client_id_header="x-client-id"):
    """client_id: sent as `client_id_header` (gRPC metadata / HTTP header), the name a server's
    query detector keeps this client's history under (a gateway sets it in production)."""
    if ":" not in server:
      raise ValueError(f"server must be HOST:PORT, got {server!r}")
    self.server = server
    self.model_name = model_name
    self.rest = rest
    self.signature_name = signature_name
    self.version = version
    self.timeout = timeout
    self._identity = [(client_id_header.lower(), str(client_id))] if client_id else []
    self._local = threading.local()
    self._channel = None
    if not rest:
      import grpc
      from tensorflow_serving.apis import model_service_pb2_grpc
      from tensorflow_serving.apis import prediction_service_pb2_grpc

      self._channel = grpc.insecure_channel(
          server, options=[("grpc.max_send_message_length", max_message_bytes),
                           ("grpc.max_receive_message_length", max_message_bytes)])
      self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
      self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

  def close(self):
    if self._channel is not None:
      self._channel.close()
    conn = getattr(self._local, "conn", None)
    if conn is not None:
      conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- public calls -----------------------------------------------------------------------------

  def predict(self, images, *, signature_name=None, version=None):
    """images: [N, H, W, C] (or one [H, W, C]) float in [0, 1] -> dict of numpy outputs."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
      images = images[None]
    signature_name = signature_name or self.signature_name
    version = self.version if version is None else version
    if self.rest:
      return self._predict_rest(images, signature_name, version)
    return self._predict_grpc(images, signature_name, version)

  def predict_raw(self, inputs, *, signature_name=None, version=None, model_name=None,
                  output_filter=()):
    """gRPC Predict with an arbitrary {key: TensorProto or array} map (no client-side checks)."""
    from tensorflow_serving.apis import predict_pb2
    from serving import tensors

    request = predict_pb2.PredictRequest()
    self._fill_spec(request.model_spec, model_name or self.model_name,
                    self.version if version is None else version)
    request.model_spec.signature_name = signature_name or self.signature_name
    for key, value in inputs.items():
      proto = value if hasattr(value, "tensor_shape") else tensors.from_numpy(np.asarray(value))
      request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    response = self._call(self._predict_stub.Predict, request)
    return {k: _decode(v) for k, v in response.outputs.items()}

  def metadata(self, version=None):
    """The model's signature_def map as a dict (GET .../metadata or GetModelMetadata)."""
    version = self.version if version is None else version
    if self.rest:
      return self._rest("GET", self._rest_path(version) + "/metadata")
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    self._fill_spec(request.model_spec, self.model_name, version)
    response = self._call(self._predict_stub.GetModelMetadata, request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    as_dict = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
    return {"model_spec": as_dict(response.model_spec),
            "metadata": {"signature_def": as_dict(signature_map)}}

  def status(self, version=None):
    """[{'version': int, 'state': 'AVAILABLE', 'error_code': 'OK', 'error_message': ''}, ...]."""
    version = self.version if version is None else version
    if self.rest:
      payload = self._rest("GET", self._rest_path(version))
      return [{"version": int(s["version"]), "state": s["state"],
               "error_code": s.get("status", {}).get("error_code", "OK"),
               "error_message": s.get("status", {}).get("error_message", "")}
              for s in payload.get("model_version_status", [])]
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    self._fill_spec(request.model_spec, self.model_name, version)
    response = self._call(self._model_stub.GetModelStatus, request)
    from tensorflow.core.protobuf import error_codes_pb2
    return [{"version": int(s.version),
             "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             "error_code": error_codes_pb2.Code.Name(s.status.error_code),
             "error_message": s.status.error_message}
            for s in response.model_version_status]

  def input_shape(self):
    """[H, W, C] of the `images` input of the served signature, read from the metadata."""
    signature = self.metadata()["metadata"]["signature_def"]["signature_def"][self.signature_name]
    dims = signature["inputs"][INPUT_KEY]["tensor_shape"]["dim"]
    return [int(d["size"]) for d in dims][1:]

  # -- gRPC ------------------------------------------------------------------------------------

  @staticmethod
  def _fill_spec(spec, name, version):
    spec.name = name
    if version is not None:
      spec.version.value = int(version)

  def _call(self, method, request):
    import grpc
    try:
      return method(request, timeout=self.timeout, metadata=self._identity or None)
    except grpc.RpcError as e:
      code = e.code()
      raise RequestError(code.name, e.details(), errors.http_status(code)) from None

  def _predict_grpc(self, images, signature_name, version):
    outputs = self.predict_raw({INPUT_KEY: images}, signature_name=signature_name,
                               version=version)
    return outputs

  # -- REST ------------------------------------------------------------------------------------

  def _rest_path(self, version):
    path = f"/v1/models/{self.model_name}"
    if version is not None:
      path += f"/versions/{int(version)}"
    return path

  def _predict_rest(self, images, signature_name, version):
    body = (f'{{"signature_name": {json.dumps(signature_name)}, '
            f'"inputs": {{"{INPUT_KEY}": {json_array(images)}}}}}').encode()
    payload = self._rest("POST", self._rest_path(version) + ":predict", body, dict(self._identity))
    outputs = payload["outputs"]
    if not isinstance(outputs, dict):  # A single-output signature answers the bare value.
      outputs = {"output": outputs}
    return {k: np.asarray(v, dtype=np.int64 if k == "classes" else np.float32)
            for k, v in outputs.items()}

  def post_raw(self, path, body, headers=None):
    """POST bytes to a REST path; returns (HTTP status, parsed JSON or text). For tests/tools."""
    return self._http("POST", path, body, headers or {"Content-Type": "application/json"})

  def _connection(self):
    conn = getattr(self._local, "conn", None)
    if conn is None:
      host, port = self.server.rsplit(":", 1)
      conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
      self._local.conn = conn
    return conn

  def _http(self, method, path, body=None, headers=None):
    for attempt in range(2):  # A kept-alive connection the server closed is retried once.
      conn = self._connection()
      try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":
          conn.close()
          self._local.conn = None
        break
      except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        conn.close()
        self._local.conn = None
        if attempt:
          raise
    try:
      parsed = json.loads(data)
    except ValueError:
      parsed = data.decode(errors="replace")
    return response.status, parsed

  def _rest(self, method, path, body=None, extra_headers=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    headers.update(extra_headers or {})
    status, payload = self._http(method, path, data, headers)
    if status != 200:
      message = payload.get("error", payload) if isinstance(payload, dict) else payload
      raise RequestError(errors.code_from_http(status).name, str(message), status)
    return payload


_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_array(array):
  """A numeric array as nested JSON lists, without building nested Python lists.

  `array.tolist()` creates one list per innermost row (25,000 for a batch of 32 28x28x1 images);
  that many containers set off full garbage collections, which in a process holding TensorFlow
  take ~200 ms. Joining strings keeps the request path free of them. %.9g round-trips float32.
  """
  array = np.asarray(array)
  if array.size == 0:
    return json.dumps(array.tolist())
  fmt = "%d" if array.dtype.kind in "iub" else "%.9g"
  parts = [fmt % v for v in array.ravel().tolist()]
  if array.dtype.kind == "f":
    parts = [_SPECIAL.get(p, p) for p in parts]
  for size in reversed(array.shape):
    parts = ["[" + ",".join(parts[i:i + size]) + "]" for i in range(0, len(parts), size)]
  return parts[0]


def _decode(proto):
  """TensorProto -> numpy; handles tensor_content (our server) and *_val (TF Serving)."""
  from serving import tensors
  try:
    return tensors.to_numpy(proto)
  except errors.ServingError:
    import tensorflow as tf
    return tf.make_ndarray(proto)


# -- images ----------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".npy")


def image_files(path):
  """The PNG/NPY files at `path` (a file or a directory, sorted)."""
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
      raise FileNotFoundError(f"no .png or .npy file in {path}")
    return files
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such file or directory: {path}")
  if not path.lower().endswith(IMAGE_SUFFIXES):
    raise ValueError(f"{path}: only .png and .npy images are read")
  return [path]


def load_images(path, channels=None):
  """Read PNG/NPY images as float32 [N, H, W, C] in [0, 1]; returns (array, names).

  PNG is decoded with tf.io and divided by 255 (16-bit PNG by 65535); NPY may hold one image
  [H, W], [H, W, C] or a batch [N, H, W, C], uint8 (scaled by 1/255) or float already in [0, 1].
  `channels` (1 or 3) converts PNGs to that many channels, as the model expects.
  """
  arrays, names = [], []
  for file in image_files(path):
    if file.lower().endswith(".png"):
      import tensorflow as tf
      with open(file, "rb") as f:
        data = f.read()
      decoded = tf.io.decode_png(data, channels=channels or 0, dtype=tf.uint16)
      image = decoded.numpy().astype(np.float32) / 65535.0  # uint16 decode covers 8-bit too.
      batch = image[None]
    else:
      batch = _npy_images(np.load(file, allow_pickle=False), file)
    arrays.append(batch)
    stem = os.path.basename(file)
    names.extend([stem] if len(batch) == 1 else [f"{stem}[{i}]" for i in range(len(batch))])
  shapes = {a.shape[1:] for a in arrays}
  if len(shapes) > 1:
    raise ValueError(f"images under {path} have different shapes {sorted(shapes)}")
  images = np.concatenate(arrays).astype(np.float32)
  if channels and images.shape[-1] != channels:
    raise ValueError(f"images have {images.shape[-1]} channel(s), the model expects {channels}")
  return images, names


def _npy_images(array, file):
  if array.dtype == np.uint8:
    array = array.astype(np.float32) / 255.0
  elif np.issubdtype(array.dtype, np.floating):
    array = array.astype(np.float32)
    if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0):
      raise ValueError(f"{file}: float images must be in [0, 1], got range "
                       f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]")
  else:
    raise ValueError(f"{file}: images must be uint8 or float in [0, 1], got {array.dtype}")
  if array.ndim == 2:
    return array[None, :, :, None]
  if array.ndim == 3:
    return array[None]
  if array.ndim == 4:
    return array
  raise ValueError(f"{file}: expected [H, W], [H, W, C] or [N, H, W, C], got {array.shape}")


# -- command line ----------------------------------------------------------------------------------


def _define_flags():
  from absl import flags
  flags.DEFINE_string("server", "localhost:8500", "HOST:PORT of the gRPC (or, with --rest, REST) "
                      "endpoint of serving.server or tensorflow_model_server.")
  flags.DEFINE_string("model_name", "lad", "Served model name.")
  flags.DEFINE_string("images", None, "A PNG/NPY file or a directory of them.")
  flags.DEFINE_string("signature_name", DEFAULT_SIGNATURE, "Signature to call.")
  flags.DEFINE_integer("model_version", None, "A specific version (default: the latest).")
  flags.DEFINE_bool("rest", False, "Use the REST API (JSON) instead of gRPC.")
  flags.DEFINE_integer("batch_size", 32, "Images per request.", lower_bound=1)
  flags.DEFINE_float("timeout", 30.0, "Seconds per request.")
  flags.mark_flag_as_required("images")
  return flags.FLAGS


def main(argv):
  """The images are read first, so a wrong path fails before any request."""
  del argv  # lad_tf.cli.run refuses stray arguments
  from lad_tf.errors import ConfigError, LadError
  f = _FLAGS
  try:
    image_files(f.images)
  except FileNotFoundError as e:
    raise LadError(f"{e}: give --images=PATH, a .png or .npy file or a folder of them") from e
  try:
    client = PredictClient(f.server, model_name=f.model_name, rest=f.rest, signature_name=f.signature_name,
                           version=f.model_version, timeout=f.timeout)
  except ValueError as e:
    raise ConfigError(f"--server: {e}") from e
  try:  # closes the client whatever happens
    try:
      height, width, channels = client.input_shape()
    except (OSError, RequestError) as e:  # REST: refused, unknown host; gRPC: UNAVAILABLE
      if isinstance(e, RequestError) and e.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        raise LadError(f"{f.server} refused the metadata request ({e}): check --model_name") from e
      raise LadError(f"nothing answers at {f.server} ({'REST' if f.rest else 'gRPC'}: {str(e).splitlines()[0]}): "
                     f"start python -m serving.server there, or give --server=HOST:PORT") from e
    try:
      images, names = load_images(f.images, channels=channels)
    except (OSError, ValueError) as e:
      raise LadError(f"cannot read the images: {e}") from e
    if images.shape[1:3] != (height, width):
      raise LadError(f"images are {images.shape[1]}x{images.shape[2]}, the model takes {height}x{width}; "
                     f"resize them first")
    for start in range(0, len(images), f.batch_size):
      try:
        outputs = client.predict(images[start:start + f.batch_size])
      except RequestError as e:
        raise LadError(f"request refused: {e}") from e
      for i, name in enumerate(names[start:start + f.batch_size]):
        cls = int(outputs["classes"][i])
        print(f"{name}\tclass={cls}\tp={float(outputs['probabilities'][i][cls]):.4f}")
  finally:
    client.close()


if __name__ == "__main__":
  from lad_tf import cli

  _FLAGS = _define_flags()
  cli.run(main, help_groups=(("request", ("server", "rest", "model_name", "model_version", "signature_name",
                                          "timeout")), ("images", ("images", "batch_size")), ("messages", ("verbose",))))
