"""One loaded version of a model: its signatures, its input contract and the call into the graph.

Everything a request needs from a version lives here: decoding and checking inputs (from
TensorProtos or JSON), the batch limit, the input range of the model card, the output filter,
and the call itself, which goes through a batch scheduler when server-side batching is on.
"""
import dataclasses
import logging
import os

import grpc
import numpy as np

from serving import errors
from serving import layout

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
DETECTED_INPUT = layout.INPUT_KEY  # The input the query detector fingerprints, when present.
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit for assets.extra/tf_serving_warmup_requests.
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclasses.dataclass
class Signature:
  name: str
  fn: object
  inputs: dict  # key -> (numpy dtype, shape list with None for free dims)
  outputs: dict
  input_enums: dict  # key -> DataType enum

  def values_per_example(self):
    """Numbers one example holds over all inputs; None when a non-batch dim is free."""
    total = 0
    for _, shape in self.inputs.values():
      if shape is None or any(d is None or d < 0 for d in shape[1:]):
        return None
      total += int(np.prod(shape[1:], dtype=np.int64))
    return total


def status_code_of(exc):
  """gRPC code for a TF runtime error (tf.errors carry the canonical code)."""
  code = getattr(exc, "error_code", None)
  for status in grpc.StatusCode:
    if status.value[0] == code:
      return status
  return grpc.StatusCode.INTERNAL


def _contains_bool(value):
  if isinstance(value, bool):
    return True
  return isinstance(value, list) and any(_contains_bool(v) for v in value)


class Servable:
  """One loaded version of a model: its signatures, metadata and input contract.

  max_batch_size: the largest batch a request may carry (0: no limit).
  batching: a config.BatchingConfig to merge concurrent requests into one call, or None.
  detector: a detection.QueryDetector that sees each client's images before the model, or None.
  """

  def __init__(self, name, version, path, max_batch_size, *, tags=("serve",), batching=None,
               detector=None):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2
    from serving import tensors

    self.name, self.version, self.path = name, int(version), path
    self.max_batch_size = max_batch_size
    self.detector = detector
    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb_path):
      raise errors.ServingError(grpc.StatusCode.NOT_FOUND, f"no saved_model.pb in {path}")
    self._tf = tf
    self.model = tf.saved_model.load(path, tags=list(tags))
    with open(pb_path, "rb") as f:
      saved = saved_model_pb2.SavedModel.FromString(f.read())
    graphs = [g for g in saved.meta_graphs if set(tags) <= set(g.meta_info_def.tags)]
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
    self.card = layout.read_model_card(path)
    self.input_ranges = {}
    spec = self.card.get("input") if isinstance(self.card, dict) else None
    if isinstance(spec, dict) and spec.get("name") and spec.get("range"):
      lo, hi = spec["range"]
      self.input_ranges[spec["name"]] = (float(lo), float(hi))
    self._tensors = tensors
    self._batchers = {}
    if batching is not None:
      from serving import batching as batching_lib
      for key, signature in self.signatures.items():
        self._batchers[key] = batching_lib.BatchScheduler(
            self._call_fn(signature), batching, name=f"{name}-v{self.version}-{key}")

  def close(self):
    """Stop the batch threads; requests still holding this version finish with direct calls.

    The graph goes with the last reference (the manager's, then the in-flight requests').
    """
    batchers, self._batchers = self._batchers, {}
    for batcher in batchers.values():
      batcher.stop()

  def max_values_per_request(self):
    """The most numbers a valid request can carry (None: no bound known before parsing)."""
    if not self.max_batch_size:
      return None
    per_example = [s.values_per_example() for s in self.signatures.values()]
    if not per_example or any(v is None for v in per_example):
      return None
    return self.max_batch_size * max(per_example)

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

  def decode_json(self, signature, values, may_hold_bools=True):
    """REST inputs (nested lists) -> numpy of the signature's dtypes; refuses non-numbers.

    may_hold_bools: False when the raw body has no `true`/`false`, which skips the walk that
      refuses a JSON boolean inside a numeric tensor (numpy would turn it into 1.0 silently).
    """
    self.check_keys(signature, values.keys())
    arrays = {}
    for key, value in values.items():
      dtype, shape = signature.inputs[key]
      if dtype is None:
        raise errors.invalid(f"input `{key}` has a dtype this server cannot decode from JSON")
      if isinstance(value, dict):
        raise errors.invalid(f"input `{key}` must be a (nested) list of numbers, got an object "
                             "(base64 `b64` payloads are for string inputs)")
      if may_hold_bools and dtype.kind != "b" and _contains_bool(value):
        raise errors.invalid(f"input `{key}` holds a JSON boolean (true/false) where the "
                             f"signature expects {dtype.name} numbers")
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

  def check_values(self, arrays):
    """Batch sizes agree; values lie in the model card's input range (rejected, not clipped)."""
    batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batch_sizes) > 1:
      raise errors.invalid(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    for key, (lo, hi) in self.input_ranges.items():
      if key in arrays:
        values = arrays[key]
        low, high = float(values.min()), float(values.max())  # NaN propagates to both.
        if lo <= low and high <= hi:
          continue
        if not (np.isfinite(low) and np.isfinite(high)):
          raise errors.invalid(f"input `{key}` contains NaN or Inf; send values in "
                               f"[{lo:g}, {hi:g}]")
        if low < lo or high > hi:
          raise errors.invalid(
              f"input `{key}` has values in [{low:.4g}, {high:.4g}], outside [{lo:g}, {hi:g}]; "
              "out-of-range pixels are rejected, not clipped (scale uint8 images with x / 255)")

  @staticmethod
  def wanted_outputs(signature, output_filter):
    """The output names to answer, in order; refuses unknown and repeated names (as TF)."""
    wanted = list(output_filter) or list(signature.outputs)
    unknown = sorted(set(wanted) - set(signature.outputs))
    if unknown:
      raise errors.invalid(f"output_filter names unknown outputs {unknown}; the signature's "
                           f"outputs are {sorted(signature.outputs)}")
    repeated = sorted({k for k in wanted if wanted.count(k) > 1})
    if repeated:
      raise errors.invalid(f"duplicate output tensor name {repeated} in output_filter; name "
                           "each output once")
    return wanted

  def _call_fn(self, signature):
    tf = self._tf

    def call(arrays):
      try:
        result = signature.fn(**{k: tf.constant(v) for k, v in arrays.items()})
      except tf.errors.OpError as e:
        raise errors.ServingError(status_code_of(e), e.message) from e
      except (TypeError, ValueError) as e:
        raise errors.invalid(f"the signature refused the inputs: {e}") from e
      return {k: v.numpy() for k, v in result.items()}

    return call

  def run(self, signature, arrays, output_filter=(), client=None):
    """Run the signature on validated numpy inputs; returns {output name: numpy array}.

    client: who sent the request (detection.grpc_client_id / rest_client_id); the query
      detector, when on, sees its images first and may refuse them (PERMISSION_DENIED).
    """
    self.check_values(arrays)
    wanted = self.wanted_outputs(signature, output_filter)
    if self.detector is not None and client is not None:
      key = DETECTED_INPUT if DETECTED_INPUT in arrays else sorted(arrays)[0]
      self.detector.check(client, arrays[key])
    batcher = self._batchers.get(signature.name)
    if batcher is not None:
      result = batcher.submit(arrays)
    else:
      result = self._call_fn(signature)(arrays)
    return {k: result[k] for k in wanted}

  def warmup(self, iterations=1):
    """Replay assets.extra/tf_serving_warmup_requests; any failure fails the load (as in TF)."""
    records = layout.read_warmup_requests(self.path)
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
      for _ in range(max(1, iterations)):
        self.run(signature, arrays, request.output_filter)
      replayed += 1
    return replayed
