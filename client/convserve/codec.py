"""numpy <-> ``convserve.v1.Tensor``: one dtype table each way, validated before bytes are touched.

Encoding writes the array's elements little-endian in C order. Decoding checks the dtype, every
dimension and ``len(data) == prod(shape) * itemsize`` first, then wraps the bytes without copying
(the returned array is read-only and shares the message's buffer).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve.errors import InvalidArgumentError
from convserve.v1 import convserve_pb2 as pb

NUMPY_BY_DTYPE: dict[Any, np.dtype[Any]] = {
    pb.DTYPE_BOOL: np.dtype("?"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT8: np.dtype("i1"),
    pb.DTYPE_UINT16: np.dtype("<u2"),
    pb.DTYPE_INT16: np.dtype("<i2"),
    pb.DTYPE_UINT32: np.dtype("<u4"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_UINT64: np.dtype("<u8"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_COMPLEX64: np.dtype("<c8"),
    pb.DTYPE_COMPLEX128: np.dtype("<c16"),
}
DTYPE_BY_NAME: dict[str, Any] = {dt.name: code for code, dt in NUMPY_BY_DTYPE.items()}
SUPPORTED_DTYPE_NAMES: tuple[str, ...] = tuple(DTYPE_BY_NAME)
# The fast paths of every call: the wire enum of a numpy dtype (native or little-endian: equal
# dtypes hash alike), and the native-order dtype a wire dtype decodes to (None: it is native).
_CODE_BY_NUMPY: dict[np.dtype[Any], Any] = {dt: code for code, dt in NUMPY_BY_DTYPE.items()}
_CONVERT_TO: dict[Any, np.dtype[Any] | None] = {code: (None if dt.newbyteorder("=") == dt else dt.newbyteorder("=")) for code, dt in NUMPY_BY_DTYPE.items()}
_INTP_MAX = int(np.iinfo(np.intp).max)

# No real array has more dimensions than numpy allows; a dimension beyond 2**62 is absurd.
MAX_NDIM = 64
MAX_DIMENSION = 2**62


def dtype_code(dtype: npt.DTypeLike, field: str) -> Any:
    """Return the wire enum of a numpy dtype, or raise InvalidArgumentError naming ``field``."""
    if isinstance(dtype, np.dtype):
        code = _CODE_BY_NUMPY.get(dtype)
        if code is not None:
            return code
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise _invalid(field, f"expected a numpy dtype, got {dtype!r}") from exc
    code = DTYPE_BY_NAME.get(name)
    if code is None:
        raise _invalid(field, f"dtype {name} is not supported; expected one of {', '.join(SUPPORTED_DTYPE_NAMES)}")
    return code


def dtype_name(code: int) -> str:
    """Return the numpy name of a wire dtype enum (``"unknown(N)"`` when it is not one)."""
    dt = NUMPY_BY_DTYPE.get(code)
    return dt.name if dt is not None else f"unknown({code})"


def encode(array: npt.ArrayLike, field: str = "tensor") -> pb.Tensor:
    """Encode an array (or array-like) as a Tensor message.

    Parameters
    ----------
    array : array_like
        Any numpy array or nested sequence of a supported dtype.
    field : str
        Name used in error messages.

    Returns
    -------
    convserve.v1.convserve_pb2.Tensor
        The tensor, with little-endian C-order bytes.

    Raises
    ------
    InvalidArgumentError
        If the dtype is not supported (object, string, datetime...).
    """
    tensor = pb.Tensor()
    encode_into(tensor, array, field)
    return tensor


def encode_into(tensor: pb.Tensor, array: npt.ArrayLike, field: str = "tensor") -> None:
    """Encode an array into ``tensor`` (a field of a request being built: no message is copied).

    Raises
    ------
    InvalidArgumentError
        As :func:`encode`.
    """
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError) as exc:
        raise _invalid(field, f"cannot be converted to an array: {exc}") from exc
    code = dtype_code(arr.dtype, f"{field}.dtype")
    tensor.dtype = code
    tensor.shape[:] = arr.shape
    tensor.data = np.ascontiguousarray(arr, dtype=NUMPY_BY_DTYPE[code]).tobytes()


def check_declared(dtype_code: int, dims: Any, field: str, max_elements: int | None = None) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Validate a declared dtype and shape; return the numpy dtype, the shape and the byte count.

    Raises
    ------
    InvalidArgumentError
        On an unknown dtype, too many dimensions, a negative or absurd dimension, a shape no array
        can have, or more elements than ``max_elements``.
    """
    dtype = NUMPY_BY_DTYPE.get(dtype_code)
    if dtype is None:
        raise _invalid(f"{field}.dtype", f"unknown dtype {dtype_code}; expected one of {', '.join(SUPPORTED_DTYPE_NAMES)}")
    shape = tuple(map(int, dims))
    if len(shape) > MAX_NDIM:
        raise _invalid(f"{field}.shape", f"{len(shape)} dimensions; at most {MAX_NDIM} are supported")
    if shape and (min(shape) < 0 or max(shape) > MAX_DIMENSION):
        axis, size = next((axis, size) for axis, size in enumerate(shape) if size < 0 or size > MAX_DIMENSION)
        raise _invalid(f"{field}.shape", f"dimension {axis} is {size}; expected 0 <= size <= {MAX_DIMENSION}")
    count = math.prod(shape)
    if (count or math.prod(d for d in shape if d)) * dtype.itemsize > _INTP_MAX:
        raise _invalid(f"{field}.shape", f"shape {list(shape)} is larger than any array can be, even with a zero dimension")
    if max_elements is not None and count > max_elements:
        raise _invalid(f"{field}.shape", f"{count} elements exceed the limit of {max_elements}")
    return dtype, shape, count * dtype.itemsize


def check_header(tensor: pb.Tensor, field: str, max_elements: int | None = None) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """Validate a Tensor's dtype, shape and byte count without reading its data.

    Returns
    -------
    (numpy.dtype, tuple of int)
        The element type and the shape.

    Raises
    ------
    InvalidArgumentError
        As :func:`check_declared`, and when the byte count does not match the shape.
    """
    dtype, shape, expected = check_declared(tensor.dtype, tensor.shape, field, max_elements)
    if len(tensor.data) != expected:
        raise _invalid(
            f"{field}.data",
            f"{len(tensor.data)} bytes do not match shape {list(shape)} of {dtype.name} ({expected} bytes expected)",
        )
    return dtype, shape


def wire_bytes(array: npt.NDArray[Any]) -> memoryview:
    """The array's wire bytes (little-endian, C order) as a flat memoryview, copying only if needed."""
    code = dtype_code(array.dtype, "tensor.dtype")
    contiguous = np.ascontiguousarray(array, dtype=NUMPY_BY_DTYPE[code])
    return contiguous.reshape(-1).view(np.uint8).data


def header(array: npt.NDArray[Any], field: str = "tensor") -> pb.Tensor:
    """A Tensor with the array's dtype and shape and no data (its bytes travel in chunks)."""
    return pb.Tensor(dtype=dtype_code(array.dtype, f"{field}.dtype"), shape=array.shape)


def decode(tensor: pb.Tensor, field: str = "tensor", max_elements: int | None = None) -> npt.NDArray[Any]:
    """Decode a Tensor message into a read-only numpy array that shares the message's bytes.

    Parameters
    ----------
    tensor : convserve.v1.convserve_pb2.Tensor
        The message.
    field : str
        Name used in error messages.
    max_elements : int, optional
        Refuse tensors with more elements than this.

    Returns
    -------
    numpy.ndarray
        Native-byte-order view when the host is little-endian, else a converted copy.
    """
    dtype, shape = check_header(tensor, field, max_elements)
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    native = _CONVERT_TO[tensor.dtype]
    return array if native is None else array.astype(native)


def _invalid(field: str, message: str) -> InvalidArgumentError:
    """Build an InvalidArgumentError with one field violation."""
    return InvalidArgumentError(f"{field}: {message}", field_violations=((field, message),))
