"""Fuzzing the decoder and every RPC with hypothesis: never INTERNAL, never a crash, always serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convserve import InvalidArgumentError, codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from .conftest import RunningServer

DIMENSION = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**62, 2**63 - 1, -(2**63)]))
TENSORS = st.builds(
    pb.Tensor,
    dtype=st.integers(0, 16),
    shape=st.lists(DIMENSION, max_size=4),
    data=st.binary(max_size=96),
)
VALID_TENSORS = st.builds(
    lambda dtype, shape, seed: codec.encode(np.random.default_rng(seed).integers(-3, 4, shape).astype(dtype)),
    dtype=st.sampled_from(["uint8", "int16", "int64", "float16", "float32", "float64", "complex64", "bool"]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**16),
)
ANY_TENSOR = st.one_of(TENSORS, VALID_TENSORS)
INTS = st.lists(st.integers(-2, 2**40), max_size=4)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


@settings(max_examples=300, deadline=None)
@given(TENSORS)
def test_decoder_accepts_or_refuses_cleanly(tensor: pb.Tensor) -> None:
    try:
        array = codec.decode(tensor, "t", max_elements=2**20)
    except InvalidArgumentError:
        return
    assert array.nbytes == len(tensor.data)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.ConvolutionServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.ConvolutionServiceStub(channel)


def _status(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=30)  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


SIGNAL_REQUESTS = st.builds(
    pb.SignalRequest,
    in1=ANY_TENSOR, in2=ANY_TENSOR,
    mode=st.integers(0, 6), method=st.integers(0, 6), boundary=st.integers(0, 7),
    axes=st.one_of(st.none(), st.builds(pb.Axes, values=st.lists(st.integers(-5, 5), max_size=4))),
    fill_value=st.builds(pb.Scalar, real=st.floats(allow_nan=True), imag=st.floats(-1, 1)),
    output_dtype=st.integers(0, 16),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=SIGNAL_REQUESTS, correlate=st.booleans())
def test_signal_rpcs_never_fail_internally(stub: pb_grpc.ConvolutionServiceStub, request: pb.SignalRequest, correlate: bool) -> None:
    code = _status(stub.Correlate if correlate else stub.Convolve, request)
    assert code in ALLOWED, code


LAYER_REQUESTS = st.builds(
    pb.ConvLayerRequest,
    input=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)),
                                       st.lists(st.integers(1, 6), min_size=2, max_size=5).map(tuple))),
    weight=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)),
                                        st.lists(st.integers(1, 3), min_size=3, max_size=5).map(tuple))),
    stride=INTS, dilation=INTS, groups=st.integers(-1, 4),
    padding=st.builds(pb.Padding, sizes=INTS, preset=st.integers(0, 3)),
    padding_mode=st.integers(0, 5), activation=st.integers(0, 3),
    pool=st.one_of(st.none(), st.builds(pb.Pool, kind=st.integers(0, 3), kernel_size=INTS, stride=INTS, padding=INTS)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=LAYER_REQUESTS)
def test_conv_layer_rpc_never_fails_internally(stub: pb_grpc.ConvolutionServiceStub, request: pb.ConvLayerRequest) -> None:
    code = _status(stub.ConvLayer, request)
    assert code in ALLOWED, code


def test_server_still_serves_after_fuzzing(stub: pb_grpc.ConvolutionServiceStub) -> None:
    request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
    result = codec.decode(stub.Convolve(request, timeout=10).result)
    np.testing.assert_array_equal(result, [1, 2, 2, 1])
