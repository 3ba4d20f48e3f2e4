"""The numpy <-> Tensor codec: every dtype round-trips; malformed tensors are refused first."""

from __future__ import annotations

import numpy as np
import pytest

from convserve import InvalidArgumentError, codec
from convserve.v1 import convserve_pb2 as pb

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64", "complex64", "complex128"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 1, 3)])
def test_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    array = (np.arange(int(np.prod(shape))).reshape(shape) % 7).astype(dtype)
    decoded = codec.decode(codec.encode(array))
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_wire_bytes_are_little_endian_c_order() -> None:
    big_endian_fortran = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    tensor = codec.encode(big_endian_fortran)
    assert tensor.data == np.arange(6, dtype="<i4").tobytes()
    assert list(tensor.shape) == [2, 3]


def test_decode_does_not_copy() -> None:
    tensor = codec.encode(np.arange(1000, dtype=np.float64))
    decoded = codec.decode(tensor)
    assert not decoded.flags.writeable  # a view of the message's bytes


@pytest.mark.parametrize("value", [np.array(["a"]), np.array([object()]), np.array([1], "datetime64[s]")])
def test_unsupported_dtypes_are_refused(value: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError):
        codec.encode(value, "in1")


@pytest.mark.parametrize(
    "tensor,field",
    [
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3], data=b"\0" * 8), "x.data"),
        (pb.Tensor(dtype=99, shape=[1], data=b"\0"), "x.dtype"),
        (pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1], data=b"\0"), "x.dtype"),
        (pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[-1], data=b""), "x.shape"),
        (pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2**62, 2**62, 16], data=b""), "x.shape"),
        (pb.Tensor(dtype=pb.DTYPE_UINT16, shape=[0, 2**62], data=b""), "x.shape"),
        (pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2**63 - 1], data=b""), "x.shape"),
        (pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1] * 65, data=b"\0"), "x.shape"),
    ],
)
def test_malformed_tensors_name_the_field(tensor: pb.Tensor, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        codec.decode(tensor, "x")
    assert raised.value.field_violations[0][0] == field


def test_element_limit() -> None:
    with pytest.raises(InvalidArgumentError):
        codec.decode(codec.encode(np.zeros(100)), "x", max_elements=99)
