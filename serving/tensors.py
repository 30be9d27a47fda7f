"""numpy <-> TensorProto without `tf.make_tensor_proto` / `tf.make_ndarray` on the hot path.

Both TF helpers cost tens of microseconds per call and `make_ndarray` trusts the declared shape;
here the declared shape is checked against the payload before anything is allocated, so a request
claiming a huge shape with a tiny payload is refused instead of exhausting memory.
"""
import math

import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2

from serving import errors

# dtype enum -> (numpy dtype, name of the repeated *_val field TF uses for it).
_NUMERIC = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}
_ENUM_BY_NUMPY = {np.dtype(v[0]): k for k, v in _NUMERIC.items()}


def dtype_name(enum):
  """'DT_FLOAT' -> 'float32' style names for error messages."""
  if enum in _NUMERIC:
    return np.dtype(_NUMERIC[enum][0]).name
  try:
    return types_pb2.DataType.Name(enum)
  except ValueError:
    return f"dtype enum {enum}"


def numpy_dtype(enum):
  if enum not in _NUMERIC:
    raise errors.invalid(f"tensor dtype {dtype_name(enum)} is not supported here")
  return np.dtype(_NUMERIC[enum][0])


def dtype_enum(np_dtype):
  np_dtype = np.dtype(np_dtype)
  if np_dtype not in _ENUM_BY_NUMPY:
    raise ValueError(f"numpy dtype {np_dtype} has no TensorProto mapping here")
  return _ENUM_BY_NUMPY[np_dtype]


def shape_of(proto):
  """Declared shape of a TensorProto as a tuple of ints; refuses unknown rank or negative dims."""
  if proto.tensor_shape.unknown_rank:
    raise errors.invalid("tensor shape has unknown rank; send a fully defined shape")
  dims = tuple(int(d.size) for d in proto.tensor_shape.dim)
  if any(d < 0 for d in dims):
    raise errors.invalid(f"tensor shape {list(dims)} has a negative dimension")
  return dims


def to_numpy(proto, expected_shape=None):
  """Decode a numeric TensorProto; `expected_shape` (None entries free) is checked first."""
  np_dtype = numpy_dtype(proto.dtype)
  shape = shape_of(proto)
  if expected_shape is not None:
    check_shape(shape, expected_shape)
  count = math.prod(shape)  # Python ints: exact, and cheaper than numpy for a few dims.
  if proto.tensor_content:
    want = count * np_dtype.itemsize
    if len(proto.tensor_content) != want:
      raise errors.invalid(
          f"tensor_content holds {len(proto.tensor_content)} bytes but shape {list(shape)} of "
          f"{np_dtype.name} needs {want}")
    raw = np.frombuffer(proto.tensor_content, dtype=np_dtype.newbyteorder("<"))
    return raw.astype(np_dtype, copy=False).reshape(shape)
  values = getattr(proto, _NUMERIC[proto.dtype][1])
  if len(values) == count:
    return np.asarray(values, dtype=np_dtype).reshape(shape)
  if len(values) == 1 and count > 0:  # TF's own rule: a single value fills the tensor.
    return np.full(shape, values[0], dtype=np_dtype)
  raise errors.invalid(
      f"tensor holds {len(values)} values but its shape {list(shape)} needs {count}")


def check_shape(shape, expected_shape):
  """Raise INVALID_ARGUMENT naming both shapes when `shape` does not fit `expected_shape`."""
  if expected_shape is None:
    return
  expected = list(expected_shape)
  if len(shape) != len(expected) or any(
      e is not None and e >= 0 and s != e for s, e in zip(shape, expected)):
    shown = ["batch" if e is None or e < 0 else e for e in expected]
    raise errors.invalid(f"input shape {list(shape)} does not match the signature's {shown}")


def from_numpy(array):
  """Encode a numpy array as a TensorProto (raw little-endian bytes in tensor_content)."""
  array = np.ascontiguousarray(array)
  proto = tensor_pb2.TensorProto(
      dtype=dtype_enum(array.dtype),
      tensor_shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape]))
  if array.dtype == np.bool_:
    proto.bool_val.extend(array.ravel().tolist())
  else:
    proto.tensor_content = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
  return proto
