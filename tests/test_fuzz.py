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

from .conftest import RunningServer, start_server, stop_server

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


WEIGHTS_REQUESTS = st.builds(
    pb.RegisterWeightsRequest,
    weight=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)),
                                        st.lists(st.integers(1, 3), min_size=1, max_size=6).map(tuple))),
    bias=st.one_of(st.none(), TENSORS, st.builds(lambda n: codec.encode(np.ones(n, np.float32)), st.integers(0, 4))),
)
TRANSPOSE_REQUESTS = st.builds(
    pb.ConvTransposeRequest,
    input=LAYER_REQUESTS.map(lambda r: r.input), weight=LAYER_REQUESTS.map(lambda r: r.weight),
    bias=st.one_of(st.none(), TENSORS), stride=INTS, padding=INTS, output_padding=INTS, dilation=INTS,
    groups=st.integers(-1, 4), weights_id=st.sampled_from(["", "0" * 64, "not-an-id", "x" * 1000]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(register=WEIGHTS_REQUESTS, transpose=TRANSPOSE_REQUESTS, layer=LAYER_REQUESTS,
       weights_id=st.sampled_from(["", "0" * 64, "x" * 1000]))
def test_weights_and_transpose_rpcs_never_fail_internally(
    stub: pb_grpc.ConvolutionServiceStub, register: pb.RegisterWeightsRequest, transpose: pb.ConvTransposeRequest,
    layer: pb.ConvLayerRequest, weights_id: str,
) -> None:
    code = _status(stub.RegisterWeights, register)
    assert code in ALLOWED, code
    code = _status(stub.ConvTranspose, transpose)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code
    layer.weights_id = weights_id
    code = _status(stub.ConvLayer, layer)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code


CHUNKS = st.builds(
    pb.TensorChunk,
    field=st.sampled_from(["in1", "in2", "input", "weight", "bias", "result", "", "x" * 300]),
    offset=st.one_of(st.integers(-4, 200), st.just(2**63 - 1)),
    data=st.binary(max_size=64),
)
HEADER_TENSORS = st.one_of(ANY_TENSOR, st.builds(lambda t: pb.Tensor(dtype=t.dtype, shape=t.shape), TENSORS))
SIGNAL_PARTS = st.lists(st.one_of(
    st.builds(lambda h: pb.SignalRequestPart(header=h),
              st.builds(pb.SignalRequest, in1=HEADER_TENSORS, in2=HEADER_TENSORS, mode=st.integers(0, 4))),
    st.builds(lambda c: pb.SignalRequestPart(chunk=c), CHUNKS)), max_size=5)
LAYER_PARTS = st.lists(st.one_of(
    st.builds(lambda h: pb.ConvLayerRequestPart(header=h),
              st.builds(pb.ConvLayerRequest, input=HEADER_TENSORS, weight=HEADER_TENSORS)),
    st.builds(lambda c: pb.ConvLayerRequestPart(chunk=c), CHUNKS)), max_size=5)
STREAM_MESSAGES = st.lists(st.one_of(
    st.builds(lambda k, o: pb.StreamRequest(config=pb.StreamConfig(kernel=k, output_dtype=o)), ANY_TENSOR, st.integers(0, 16)),
    st.builds(lambda b: pb.StreamRequest(block=b), ANY_TENSOR)), max_size=5)


def _stream_status(call: object, messages: list[object]) -> grpc.StatusCode:
    """Send ``messages`` on a streaming RPC and read every reply; the final status."""
    try:
        for _ in call(iter(messages), timeout=30):  # type: ignore[operator]
            pass
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=SIGNAL_PARTS, layer_parts=LAYER_PARTS, correlate=st.booleans())
def test_chunked_rpcs_never_fail_internally(stub: pb_grpc.ConvolutionServiceStub, parts: list[pb.SignalRequestPart],
                                            layer_parts: list[pb.ConvLayerRequestPart], correlate: bool) -> None:
    code = _stream_status(stub.CorrelateChunked if correlate else stub.ConvolveChunked, parts)
    assert code in ALLOWED, code
    code = _stream_status(stub.ConvLayerChunked, layer_parts)
    assert code in ALLOWED, code


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=STREAM_MESSAGES)
def test_convolve_stream_never_fails_internally(stub: pb_grpc.ConvolutionServiceStub, messages: list[pb.StreamRequest]) -> None:
    code = _stream_status(stub.ConvolveStream, messages)
    assert code in ALLOWED, code


SHARED_TENSORS = st.builds(
    pb.SharedTensor,
    region=st.sampled_from(["convserve_fuzz_none", "../etc/passwd", "", "convserve/../x", "convserve" + "a" * 300, "psm_x"]),
    offset=st.one_of(st.integers(-8, 64), st.just(2**63 - 1)), dtype=st.integers(0, 16), shape=st.lists(DIMENSION, max_size=3),
)
SHARED_REQUESTS = st.builds(
    pb.SharedSignalRequest,
    options=st.one_of(st.none(), st.builds(pb.SignalRequest, mode=st.integers(0, 4), in1=st.one_of(st.none(), ANY_TENSOR))),
    in1=SHARED_TENSORS, in2=SHARED_TENSORS,
    result=st.builds(pb.SharedBuffer, region=st.sampled_from(["convserve_fuzz_none", "../x", ""]),
                     offset=st.integers(-2, 64), size=st.integers(-2, 2**40)),
)


@pytest.fixture(scope="module")
def shared_stub() -> Iterator[pb_grpc.ConvolutionServiceStub]:
    running = start_server("--allow-shared-memory", "--log-level", "WARNING")
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield pb_grpc.ConvolutionServiceStub(channel)
    finally:
        assert stop_server(running) == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=SHARED_REQUESTS, correlate=st.booleans())
def test_shared_memory_rpcs_never_fail_internally(shared_stub: pb_grpc.ConvolutionServiceStub, request: pb.SharedSignalRequest,
                                                  correlate: bool) -> None:
    code = _status(shared_stub.CorrelateShared if correlate else shared_stub.ConvolveShared, request)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code


def test_server_still_serves_after_fuzzing(stub: pb_grpc.ConvolutionServiceStub) -> None:
    request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
    result = codec.decode(stub.Convolve(request, timeout=10).result)
    np.testing.assert_array_equal(result, [1, 2, 2, 1])
