"""Fuzzing the decoder and every RPC with hypothesis: never INTERNAL, never a crash, always serving.

Beyond "an allowed status", the rules of issue 10 are checked exactly: declared sizes beyond
max_elements are RESOURCE_EXHAUSTED with pushback -1 (chunked headers, stream blocks, shared
tensors); invalid ConvLayer / ConvTranspose geometry is INVALID_ARGUMENT (also from a chunked
header before its data); chunk sequences are assembled or refused, never answered wrongly;
ConvolveStream answers equal np.convolve (exactly for integers; OUT_OF_RANGE instead of a wrap,
narrowing output_dtype refused, warnings for NaN/Inf); a shared-memory region is used only with
its capability and is left untouched otherwise.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grpc_health.v1 import health_pb2, health_pb2_grpc

from convserve import InvalidArgumentError, codec
from convserve._shared_memory import HEADER_SIZE, header
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server

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
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}
OK, INVALID, OUT_OF_RANGE, EXHAUSTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_ELEMENTS = 2**24  # the session server's --max-elements (tests/conftest.py)
SHARED_MAX_ELEMENTS = 2**20  # the shared-memory server's, below
PUSHBACK = "grpc-retry-pushback-ms"
FUNCTION_FIXTURE = [HealthCheck.function_scoped_fixture]


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
    in1=ANY_TENSOR,
    in2=ANY_TENSOR,
    mode=st.integers(0, 6),
    method=st.integers(0, 6),
    boundary=st.integers(0, 7),
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
    input=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)), st.lists(st.integers(1, 6), min_size=2, max_size=5).map(tuple))),
    weight=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)), st.lists(st.integers(1, 3), min_size=3, max_size=5).map(tuple))),
    stride=INTS,
    dilation=INTS,
    groups=st.integers(-1, 4),
    padding=st.builds(pb.Padding, sizes=INTS, preset=st.integers(0, 3)),
    padding_mode=st.integers(0, 5),
    activation=st.integers(0, 3),
    pool=st.one_of(st.none(), st.builds(pb.Pool, kind=st.integers(0, 3), kernel_size=INTS, stride=INTS, padding=INTS)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=LAYER_REQUESTS)
def test_conv_layer_rpc_never_fails_internally(stub: pb_grpc.ConvolutionServiceStub, request: pb.ConvLayerRequest) -> None:
    code = _status(stub.ConvLayer, request)
    assert code in ALLOWED, code


WEIGHTS_REQUESTS = st.builds(
    pb.RegisterWeightsRequest,
    weight=st.one_of(TENSORS, st.builds(lambda s: codec.encode(np.ones(s, np.float32)), st.lists(st.integers(1, 3), min_size=1, max_size=6).map(tuple))),
    bias=st.one_of(st.none(), TENSORS, st.builds(lambda n: codec.encode(np.ones(n, np.float32)), st.integers(0, 4))),
)
TRANSPOSE_REQUESTS = st.builds(
    pb.ConvTransposeRequest,
    input=LAYER_REQUESTS.map(lambda r: r.input),
    weight=LAYER_REQUESTS.map(lambda r: r.weight),
    bias=st.one_of(st.none(), TENSORS),
    stride=INTS,
    padding=INTS,
    output_padding=INTS,
    dilation=INTS,
    groups=st.integers(-1, 4),
    weights_id=st.sampled_from(["", "0" * 64, "not-an-id", "x" * 1000]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(register=WEIGHTS_REQUESTS, transpose=TRANSPOSE_REQUESTS, layer=LAYER_REQUESTS, weights_id=st.sampled_from(["", "0" * 64, "x" * 1000]))
def test_weights_and_transpose_rpcs_never_fail_internally(
    stub: pb_grpc.ConvolutionServiceStub,
    register: pb.RegisterWeightsRequest,
    transpose: pb.ConvTransposeRequest,
    layer: pb.ConvLayerRequest,
    weights_id: str,
) -> None:
    code = _status(stub.RegisterWeights, register)
    assert code in ALLOWED, code
    code = _status(stub.ConvTranspose, transpose)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code
    layer.weights_id = weights_id
    code = _status(stub.ConvLayer, layer)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code


def _outcome(call: Any, request: object) -> tuple[grpc.StatusCode, dict[str, str], Any]:
    """A unary call's status, trailing metadata and response (None unless OK)."""
    try:
        response, rpc = call.with_call(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ()), None  # type: ignore[attr-defined]
    return OK, dict(rpc.trailing_metadata() or ()), response


def _stream_outcome(call: Any, messages: list[object]) -> tuple[grpc.StatusCode, dict[str, str], list[Any]]:
    """Send ``messages`` on a streaming RPC, read every reply: the final status, trailers and replies."""
    replies: list[Any] = []
    responses = call(iter(messages), timeout=30)
    try:
        for reply in responses:
            replies.append(reply)
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ()), replies  # type: ignore[attr-defined]
    return OK, dict(responses.trailing_metadata() or ()), replies


def _stream_status(call: object, messages: list[object]) -> grpc.StatusCode:
    """Send ``messages`` on a streaming RPC and read every reply; the final status."""
    return _stream_outcome(call, messages)[0]


def _declared(tensor: pb.Tensor, limit: int) -> str:
    """What the size rules make of a tensor's declared dtype and shape, by the contract:
    'malformed' (INVALID_ARGUMENT), 'huge' (well formed, more than ``limit`` elements:
    RESOURCE_EXHAUSTED with pushback -1) or 'ok'."""
    try:
        _, shape, _ = codec.check_declared(tensor.dtype, tensor.shape, "t")
    except InvalidArgumentError:
        return "malformed"
    return "huge" if math.prod(shape) > limit else "ok"


def _assert_never_fits(code: grpc.StatusCode, trailers: dict[str, str], what: object) -> None:
    assert code == EXHAUSTED, (code, what)
    assert trailers.get(PUSHBACK) == "-1", (trailers, what)


# -- chunked calls: hostile headers and chunk sequences -----------------------------------------

CHUNKS = st.builds(
    pb.TensorChunk,
    field=st.sampled_from(["in1", "in2", "input", "weight", "bias", "result", "", "x" * 300]),
    offset=st.one_of(st.integers(-4, 200), st.just(2**63 - 1)),
    data=st.binary(max_size=64),
)
# Declared shapes well past the session server's max_elements (2**24), no data: some are well
# formed (RESOURCE_EXHAUSTED, pushback -1), some larger than any array (INVALID_ARGUMENT).
HUGE_DECLARED = st.builds(
    lambda dtype, shape: pb.Tensor(dtype=dtype, shape=shape),
    dtype=st.integers(1, 14),
    shape=st.builds(
        lambda big, rest, at: rest[:at] + [big] + rest[at:],
        st.sampled_from([2**24 + 1, 2**25, 2**31, 2**40, 2**62]),
        st.lists(st.sampled_from([1, 3, 2**12, 2**31]), max_size=2),
        st.integers(0, 2),
    ),
)
HEADER_TENSORS = st.one_of(ANY_TENSOR, st.builds(lambda t: pb.Tensor(dtype=t.dtype, shape=t.shape), TENSORS), HUGE_DECLARED, HUGE_DECLARED)
SIGNAL_PARTS = st.lists(
    st.one_of(
        st.builds(lambda h: pb.SignalRequestPart(header=h), st.builds(pb.SignalRequest, in1=HEADER_TENSORS, in2=HEADER_TENSORS, mode=st.integers(0, 4))),
        st.builds(lambda c: pb.SignalRequestPart(chunk=c), CHUNKS),
    ),
    max_size=5,
)
LAYER_PARTS = st.lists(
    st.one_of(
        st.builds(
            lambda h: pb.ConvLayerRequestPart(header=h),
            st.builds(pb.ConvLayerRequest, input=HEADER_TENSORS, weight=HEADER_TENSORS, bias=st.one_of(st.none(), HEADER_TENSORS)),
        ),
        st.builds(lambda c: pb.ConvLayerRequestPart(chunk=c), CHUNKS),
    ),
    max_size=5,
)


def _chunked_expectation(parts: list[Any], fields: tuple[str, ...]) -> grpc.StatusCode | None:
    """The status the header alone decides (None: any allowed one).

    The first message must be the header; then each declared tensor in field order is checked:
    malformed -> INVALID_ARGUMENT, beyond max_elements -> RESOURCE_EXHAUSTED, some but not all of
    its bytes inline -> INVALID_ARGUMENT.
    """
    if not parts or parts[0].WhichOneof("part") != "header":
        return INVALID
    request = parts[0].header
    for name in fields:
        if not request.HasField(name):
            continue
        tensor = getattr(request, name)
        kind = _declared(tensor, MAX_ELEMENTS)
        if kind != "ok":
            return INVALID if kind == "malformed" else EXHAUSTED
        nbytes = math.prod(tensor.shape) * codec.NUMPY_BY_DTYPE[tensor.dtype].itemsize
        if tensor.data and len(tensor.data) != nbytes:
            return INVALID
    return None


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(parts=SIGNAL_PARTS, layer_parts=LAYER_PARTS, correlate=st.booleans())
def test_chunked_rpcs_never_fail_internally(
    stub: pb_grpc.ConvolutionServiceStub, parts: list[pb.SignalRequestPart], layer_parts: list[pb.ConvLayerRequestPart], correlate: bool
) -> None:
    """Hostile headers (huge declared shapes included) and chunks: exactly the contract's status."""
    for call, messages, fields in (
        (stub.CorrelateChunked if correlate else stub.ConvolveChunked, parts, ("in1", "in2")),
        (stub.ConvLayerChunked, layer_parts, ("input", "weight", "bias")),
    ):
        code, trailers, _ = _stream_outcome(call, messages)
        assert code in ALLOWED, code
        expected = _chunked_expectation(messages, fields)
        event(f"{fields[0]}: expected {getattr(expected, 'name', 'any allowed')}, got {code.name}")
        if expected == EXHAUSTED:
            _assert_never_fits(code, trailers, messages[0])
        elif expected is not None:
            assert code == expected, (code, messages[0])


def _reference_signal(in1: np.ndarray, in2: np.ndarray, correlate: bool) -> np.ndarray:
    wide = np.int64 if in1.dtype.kind in "iu" else np.complex128 if np.iscomplexobj(in1) else np.float64
    kernel = np.conj(in2[::-1]) if correlate else in2
    return np.convolve(in1.astype(wide), kernel.astype(wide))


def _reference_layer(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, padding: int, dilation: int) -> np.ndarray:
    """torch.nn.functional.conv1d in numpy (cross-correlation, zero padding)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    taps = w.shape[-1]
    count = (xp.shape[-1] - dilation * (taps - 1) - 1) // stride + 1
    index = np.arange(count)[:, None] * stride + np.arange(taps)[None, :] * dilation
    out = np.einsum("nctk,ock->not", xp[:, :, index], w)
    return out if b is None else out + b[None, :, None]


MUTATIONS = ["none", "empty_chunks", "offset", "overflow", "field", "truncate", "header_again", "chunk_first", "inline_partial"]


@settings(max_examples=70, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    kind=st.sampled_from(["ConvolveChunked", "CorrelateChunked", "ConvLayerChunked"]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    m=st.integers(1, 40),
    dtype=st.sampled_from(["float64", "float32", "int16", "complex128"]),
    inline=st.booleans(),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
    mutation=st.sampled_from(MUTATIONS),
    geometry=st.tuples(st.integers(1, 3), st.integers(0, 2), st.integers(1, 2)),
)
def test_chunked_sequences_are_assembled_or_refused(
    stub: pb_grpc.ConvolutionServiceStub,
    kind: str,
    seed: int,
    n: int,
    m: int,
    dtype: str,
    inline: bool,
    sizes: list[int],
    mutation: str,
    geometry: tuple[int, int, int],
) -> None:
    """Real data in chunks of any size, interleaved, and one mutation of the sequence: an intact
    sequence gives numpy's answer, every broken one INVALID_ARGUMENT (never a wrong answer)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray]
    if kind == "ConvLayerChunked":
        stride, padding, dilation = geometry
        channels, out_channels, taps = int(rng.integers(1, 4)), int(rng.integers(1, 4)), min(m, 5)
        length = max(n // 30, dilation * (taps - 1) + 1)
        arrays = {"input": rng.standard_normal((int(rng.integers(1, 3)), channels, length)), "weight": rng.standard_normal((out_channels, channels, taps))}
        if rng.integers(2):
            arrays["bias"] = rng.standard_normal(out_channels)
        request: Any = pb.ConvLayerRequest(stride=[stride], padding=pb.Padding(sizes=[padding]), dilation=[dilation])
        expected = _reference_layer(arrays["input"], arrays["weight"], arrays.get("bias"), stride, padding, dilation)
        wrap: Any = pb.ConvLayerRequestPart
    else:
        make = (
            (lambda s: rng.integers(-3, 4, s).astype(dtype))
            if dtype == "int16"
            else (lambda s: (rng.standard_normal(s) + (1j * rng.standard_normal(s) if dtype == "complex128" else 0)).astype(dtype))
        )
        arrays = {"in1": make(n), "in2": make(m)}
        request = pb.SignalRequest()
        expected = _reference_signal(arrays["in1"], arrays["in2"], kind == "CorrelateChunked")
        wrap = pb.SignalRequestPart
    first = next(iter(arrays))
    streamed = [name for name in arrays if name == first or not inline]
    chunks: list[pb.TensorChunk] = []
    for name, array in arrays.items():
        if name in streamed:
            getattr(request, name).CopyFrom(codec.header(array, name))
            data, start, i = codec.wire_bytes(array).tobytes(), 0, 0
            while start < len(data):
                chunks.append(pb.TensorChunk(field=name, offset=start, data=data[start : start + sizes[i % len(sizes)]]))
                start += sizes[i % len(sizes)]
                i += 1
        else:
            getattr(request, name).CopyFrom(codec.encode(array, name))
    # Interleave the tensors' chunks at random, each tensor's chunks still in order.
    queues = {name: [c for c in chunks if c.field == name] for name in streamed}
    order: list[pb.TensorChunk] = []
    while any(queues.values()):
        name = rng.choice([k for k, q in queues.items() if q])
        order.append(queues[name].pop(0))
    nbytes = {name: arrays[name].nbytes for name in streamed}
    target = str(rng.choice(streamed))
    mine = [i for i, c in enumerate(order) if c.field == target]
    if mutation == "empty_chunks":
        for i in sorted(rng.choice(len(order), size=min(3, len(order)), replace=False), reverse=True):
            order.insert(int(i), pb.TensorChunk(field=order[i].field, offset=order[i].offset))
        order.append(pb.TensorChunk(field=target, offset=nbytes[target]))
    elif mutation == "offset":
        order[mine[int(rng.integers(len(mine)))]].offset += int(rng.choice([-1, 1, 8, 2**40]))
    elif mutation == "overflow":
        order.append(pb.TensorChunk(field=target, offset=nbytes[target], data=b"\0" * int(rng.integers(1, 9))))
    elif mutation == "field":
        unknown = ["result", "output", "in3", "", first.upper()] + [name for name in arrays if name not in streamed]
        order[mine[int(rng.integers(len(mine)))]].field = str(rng.choice(unknown))
    elif mutation == "truncate":
        del order[mine[-1]]
    parts = [wrap(header=request)] + [wrap(chunk=c) for c in order]
    if mutation == "header_again":
        parts.insert(int(rng.integers(2, len(parts) + 1)), wrap(header=request))
    elif mutation == "chunk_first":
        parts[0], parts[1] = parts[1], parts[0]
    elif mutation == "inline_partial":
        getattr(parts[0].header, target).data = codec.wire_bytes(arrays[target]).tobytes()[: max(1, nbytes[target] // 2)]

    code, _, replies = _stream_outcome(getattr(stub, kind), parts)
    event(f"{kind} {mutation} {code.name}")
    if mutation not in ("none", "empty_chunks"):
        assert code == INVALID, (code, mutation)
        return
    assert code == OK, code
    assert replies and replies[0].WhichOneof("part") == "header"
    declared = replies[0].header.result
    data = b"".join(r.chunk.data for r in replies[1:])
    result = codec.decode(pb.Tensor(dtype=declared.dtype, shape=declared.shape, data=data))
    assert result.shape == expected.shape, (result.shape, expected.shape)
    if result.dtype.kind in "iu":
        np.testing.assert_array_equal(result, expected)
        assert result.dtype == np.dtype(dtype)
    else:
        scale = np.abs(expected).max(initial=0) + 1
        tolerance = 1e-4 if result.dtype in (np.float32, np.complex64) else 1e-9
        assert np.max(np.abs(result - expected), initial=0) <= tolerance * scale


# -- ConvolveStream: any kernel, mixed blocks, output_dtype, answers checked against numpy -----

STREAM_MESSAGES = st.lists(
    st.one_of(
        st.builds(lambda k, o: pb.StreamRequest(config=pb.StreamConfig(kernel=k, output_dtype=o)), ANY_TENSOR, st.integers(0, 16)),
        st.builds(lambda b: pb.StreamRequest(block=b), ANY_TENSOR),
    ),
    max_size=5,
)


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(messages=STREAM_MESSAGES)
def test_convolve_stream_never_fails_internally(stub: pb_grpc.ConvolutionServiceStub, messages: list[pb.StreamRequest]) -> None:
    code = _stream_status(stub.ConvolveStream, messages)
    assert code in ALLOWED, code


REAL_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"]
# Blocks that break the rules: a shape that no array has (INVALID_ARGUMENT), one beyond
# max_elements (RESOURCE_EXHAUSTED, pushback -1), bytes that do not match (INVALID_ARGUMENT).
HOSTILE_BLOCKS = st.one_of(
    st.builds(lambda d, s: pb.Tensor(dtype=d, shape=s), st.integers(1, 12), st.lists(st.sampled_from([-1, 2**62 + 1, 2**63 - 1]), min_size=1, max_size=2)),
    st.builds(
        lambda d, s: pb.Tensor(dtype=d, shape=s), st.integers(1, 12), st.sampled_from([[2**25], [2**24 + 1], [2**23, 3], [2**40], [2**40, 2], [2**31, 2**20]])
    ),
    st.builds(lambda d, n: pb.Tensor(dtype=d, shape=[n], data=b"\1" * (16 * n + 1)), st.integers(1, 12), st.integers(0, 20)),
)


MALFORMED_BLOCK = object()  # a block whose declared shape no array has: INVALID_ARGUMENT (see below)


def test_stream_block_of_a_shape_no_array_has_is_invalid_argument(stub: pb_grpc.ConvolutionServiceStub) -> None:
    """A block declaring a dimension beyond 2**62 (or a shape larger than any array) is malformed:
    INVALID_ARGUMENT, as the same header gets on Convolve and ConvolveChunked.

    Found by test_convolve_stream_answers_match_numpy: ConvolveStream sized the waiting budget from
    the block's declared shape before decoding it, so such a block got RESOURCE_EXHAUSTED
    (pushback -1, "this stream would hold 73786976294838206506 bytes while waiting for data").
    """
    for shape in ([2**62 + 1], [2**63 - 1], [2**62, 2**62]):
        messages = [
            pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(np.ones(1, bool)))),
            pb.StreamRequest(block=pb.Tensor(dtype=pb.DTYPE_BOOL, shape=shape)),
        ]
        header_only = [pb.SignalRequestPart(header=pb.SignalRequest(in1=pb.Tensor(dtype=pb.DTYPE_BOOL, shape=shape), in2=codec.encode(np.ones(1, bool))))]
        assert _stream_status(stub.ConvolveChunked, header_only) == INVALID
        assert _stream_status(stub.ConvolveStream, messages) == INVALID, shape


def _values(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...], extreme: bool) -> np.ndarray:
    """Small values, or a dtype's extremes (to provoke OUT_OF_RANGE and float16 overflow)."""
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if extreme:
            pool = np.array([info.min, info.max, info.max - 1, 0, 1], dtype=dtype)
            return pool[rng.integers(0, len(pool), shape)]
        return rng.integers(max(info.min, -3), 4, shape).astype(dtype)
    with np.errstate(over="ignore"):  # float16 extremes overflow to inf on purpose
        return (rng.standard_normal(shape) * (3e4 if extreme else 1.0)).astype(dtype)


def _output_allowed(natural: np.dtype[Any], requested: np.dtype[Any]) -> bool:
    """The contract: the same kind or wider. An unsigned integer result may be asked for as a signed
    one of the same width or more (its range is then checked); a signed one never as unsigned
    (numpy's same_kind refuses it, on Convolve as on ConvolveStream)."""
    if np.can_cast(natural, requested, casting="safe"):
        return True
    return np.can_cast(natural, requested, casting="same_kind") and natural.kind in "iu" and requested.kind in "iu" and requested.itemsize >= natural.itemsize


def _exact_full(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Exact full convolution per channel of (C, n) by (C, M), as Python ints when int64 could wrap."""
    bound = float(np.abs(signal.astype(np.float64)).max(initial=0)) * float(np.abs(kernel.astype(np.float64)).sum(axis=1).max())
    wide: Any = np.int64 if bound < 2**62 else object
    xs, hs = signal.astype(np.int64 if wide is np.int64 else object), kernel.astype(np.int64 if wide is np.int64 else object)
    if signal.shape[1] == 0:
        return np.zeros((signal.shape[0], 0), wide)
    return np.stack([np.convolve(xs[c], hs[c]) for c in range(signal.shape[0])])


def _unary_request(signal: np.ndarray, kernel: np.ndarray, output_dtype: int) -> pb.SignalRequest:
    """The Convolve request that computes a whole stream at once (axis 0, the kernel per channel)."""
    in2 = kernel.reshape(-1) if signal.ndim == 1 else kernel
    return pb.SignalRequest(in1=codec.encode(signal), in2=codec.encode(in2), axes=pb.Axes(values=[0]), output_dtype=output_dtype)


@settings(max_examples=200, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    kernel_dtype=st.sampled_from(REAL_DTYPES),
    taps=st.one_of(st.integers(1, 6), st.integers(7, 600)),
    kernel_channels=st.sampled_from(["same", "same", "same", None, 1, 2, 3]),
    channels=st.sampled_from([None, None, 1, 2, 3]),
    block_dtypes=st.lists(st.sampled_from(REAL_DTYPES), min_size=1, max_size=5),
    mixed=st.booleans(),
    sizes=st.lists(st.one_of(st.integers(1, 300), st.integers(1, 300), st.integers(1, 300), st.just(0)), min_size=1, max_size=5),
    output_dtype=st.one_of(st.just(0), st.just(0), st.integers(1, 16)),
    extreme=st.booleans(),
    nan=st.booleans(),
    hostile=st.one_of(st.none(), st.none(), st.none(), st.tuples(st.integers(0, 4), HOSTILE_BLOCKS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_convolve_stream_answers_match_numpy(
    stub: pb_grpc.ConvolutionServiceStub,
    kernel_dtype: str,
    taps: int,
    kernel_channels: Any,
    channels: int | None,
    block_dtypes: list[str],
    mixed: bool,
    sizes: list[int],
    output_dtype: int,
    extreme: bool,
    nan: bool,
    hostile: tuple[int, pb.Tensor] | None,
    seed: int,
) -> None:
    """Integer and bool kernels of any length from 1, mixed block dtypes, every output_dtype: the
    status is the contract's (narrowing INVALID_ARGUMENT, OUT_OF_RANGE only for what does not fit,
    never a wrap) and every OK answer equals np.convolve per channel (exactly for integers), with
    a warning whenever NaN or Inf came in or out."""
    rng = np.random.default_rng(seed)
    extreme = extreme and taps <= 32
    kdtype = np.dtype(kernel_dtype)
    if kernel_channels == "same":
        kernel_channels = channels
    kernel = _values(rng, kdtype, (taps,) if kernel_channels is None else (taps, kernel_channels), extreme)
    dtypes = [np.dtype(d) for d in (block_dtypes if mixed else block_dtypes[:1] * 5)]
    blocks: list[Any] = []
    for i, size in enumerate(sizes):
        dtype = dtypes[i % len(dtypes)]
        block = _values(rng, dtype, (size,) if channels is None else (size, channels), extreme)
        if nan and dtype.kind == "f" and size and i == len(sizes) - 1:
            block.reshape(-1)[int(rng.integers(block.size))] = rng.choice([np.nan, np.inf, -np.inf])
        blocks.append(block)
    if hostile is not None:
        blocks.insert(min(hostile[0], len(blocks)), hostile[1])
    messages = [pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(kernel), output_dtype=output_dtype))]
    messages += [pb.StreamRequest(block=b if isinstance(b, pb.Tensor) else codec.encode(b)) for b in blocks]

    # The contract, message by message: the first refusal ends the call.
    refusal: grpc.StatusCode | None = None
    valid: list[np.ndarray] = []
    requested = codec.NUMPY_BY_DTYPE.get(output_dtype)
    out = first = None
    if output_dtype and requested is None:
        refusal = INVALID
    for block in blocks if refusal is None else []:
        if isinstance(block, pb.Tensor):
            kind = _declared(block, MAX_ELEMENTS)
            refusal = {"malformed": INVALID, "huge": EXHAUSTED, "ok": INVALID}[kind]
            if kind == "malformed" and any(int(d) > codec.MAX_DIMENSION for d in block.shape) or kind == "malformed" and all(int(d) >= 0 for d in block.shape):
                refusal = MALFORMED_BLOCK  # see test_stream_block_of_a_shape_no_array_has_is_invalid_argument
            break
        if first is None:
            first = block
            natural = np.result_type(block.dtype, kdtype)
            if kernel.ndim == 2 and kernel.shape[1] != (1 if block.ndim == 1 else block.shape[1]):
                refusal = INVALID
                break
            if requested is not None and not _output_allowed(natural, requested.newbyteorder("=")):
                refusal = INVALID  # narrowing output_dtype
                break
            out = natural if requested is None else requested.newbyteorder("=")
        elif block.dtype != first.dtype or block.ndim != first.ndim or block.shape[1:] != first.shape[1:]:
            refusal = INVALID  # every block like the first
            break
        valid.append(block)
    c = 1 if first is None or first.ndim == 1 else first.shape[1]
    signal = np.concatenate([b.reshape(len(b), c).T for b in valid], axis=1) if valid else np.zeros((c, 0))
    h = np.broadcast_to(kernel.reshape(taps, -1), (taps, c)).T if out is not None else kernel.reshape(taps, -1).T
    allowed = {INVALID} if refusal is MALFORMED_BLOCK else {refusal or OK}
    reference = None
    if out is not None and out.kind in "biu":  # exact integers
        full = _exact_full(signal, h)
        emitted = full[:, : signal.shape[1]] if refusal is not None else full  # what was computed before the refusal
        info = None if out.kind == "b" else np.iinfo(out)
        if info is not None and emitted.size and (int(emitted.min()) < info.min or int(emitted.max()) > info.max):
            allowed = {OUT_OF_RANGE}  # an answer that does not fit is never wrapped
        else:
            bound = float(np.abs(signal.astype(np.float64)).max(initial=0)) * float(np.abs(h.astype(np.float64)).sum(axis=1).max())
            unsigned = first is not None and first.dtype.kind in "bu" and kdtype.kind in "bu" and out == np.uint64
            if bound * (1 + 1e-9) > (2**64 - 1 if unsigned else 2**63 - 1):
                allowed.add(OUT_OF_RANGE)  # the unary rule: the worst case must fit the accumulator
        reference = (full != 0) if out.kind == "b" else full
    elif out is not None:
        full64 = np.stack([np.convolve(signal[i].astype(np.float64), h[i].astype(np.float64)) for i in range(c)]) if signal.shape[1] else np.zeros((c, 0))
        with np.errstate(over="ignore", invalid="ignore"):
            reference = full64.astype(out)

    code, trailers, replies = _stream_outcome(stub.ConvolveStream, messages)
    case = (kernel.dtype, kernel.shape, [getattr(b, "dtype", None) for b in blocks], output_dtype, code)
    if out is not None and out.kind in "biu" and code != OK and code in allowed:  # the unary contract again
        whole = np.concatenate(valid) if valid else None
        if refusal is None and whole is not None and whole.size and code == OUT_OF_RANGE:
            unary = _outcome(stub.Convolve, _unary_request(whole, kernel, output_dtype))[0]
            event(f"exact stream OUT_OF_RANGE, unary {unary.name}")
            assert unary == OUT_OF_RANGE, ("a stream refused what Convolve computes", unary, case)
    event(f"{code.name} {'exact' if out is not None and out.kind in 'biu' else 'float' if out is not None else '-'}")
    assert code in allowed, case
    if code == EXHAUSTED:
        assert trailers.get(PUSHBACK) == "-1", (trailers, case)
    if code != OK or out is None:
        return
    outputs = [codec.decode(r.block) for r in replies if r.HasField("block")]
    for piece in outputs:
        assert piece.dtype == out, (piece.dtype, out, case)
    shape = (0,) if first is None or first.ndim == 1 else (0, c)
    result = np.concatenate(outputs) if outputs else np.zeros(shape, out)
    assert reference is not None
    expected = reference[0] if first is None or first.ndim == 1 else reference.T
    assert result.shape == expected.shape, (result.shape, expected.shape, case)
    warned = any(r.warnings for r in replies)
    if out.kind in "biu":
        assert np.array_equal(result.astype(object), expected.astype(object)), case
        assert not warned
        if signal.shape[1]:  # the unary contract: Convolve over axis 0 of the whole signal says the same
            whole = np.concatenate(valid)
            unary, _, response = _outcome(stub.Convolve, _unary_request(whole, kernel, output_dtype))
            event(f"exact stream OK, unary {unary.name}")
            assert unary in (OK, OUT_OF_RANGE), (unary, case)
            if unary == OK:
                np.testing.assert_array_equal(codec.decode(response.result), result)
        return
    if expected.size == 0:
        return
    nonfinite = not np.isfinite(signal.astype(np.float64)).all() or not np.isfinite(expected).all()
    if nonfinite:
        assert warned, ("NaN/Inf without a warning", case)
        return
    bound = float(np.abs(signal.astype(np.float64)).max(initial=0)) * float(np.abs(h.astype(np.float64)).sum(axis=1).max())
    tolerance = {2: 2e-3, 4: 2e-6, 8: 1e-10, 16: 1e-10}[out.itemsize if out.kind == "f" else out.itemsize // 2]
    assert np.max(np.abs(result.astype(np.complex128) - expected.astype(np.complex128)), initial=0) <= tolerance * (bound + 1), case
    if np.abs(expected).max(initial=0) < 0.25 * np.finfo(out).max:
        assert not warned, ([r.warnings for r in replies], case)


# -- ConvLayer / ConvTranspose geometry -----------------------------------------------------------

GEOMETRY = st.lists(st.integers(-2, 3), max_size=3)


def _lengths_bad(values: Any, nd: int) -> bool:
    return len(values) not in (0, 1, nd)


def _per_dim(values: Any, nd: int, default: int) -> list[int]:
    items = [int(v) for v in values] or [default]
    return items * nd if len(items) == 1 else items


def _layer_geometry_invalid(request: pb.ConvLayerRequest, nd: int) -> bool:
    """Invalid geometry by the contract (torch's rules): each case must be INVALID_ARGUMENT."""
    bad = (
        any(v < 1 for v in request.stride)
        or any(v < 1 for v in request.dilation)
        or request.groups < 0
        or any(v < 0 for v in request.padding.sizes)
        or any(_lengths_bad(v, nd) for v in (request.stride, request.dilation, request.padding.sizes))
    )
    if request.HasField("pool"):
        pool = request.pool
        bad = bad or pool.kind not in (pb.POOL_KIND_MAX, pb.POOL_KIND_AVG) or not pool.kernel_size
        bad = bad or any(v < 1 for v in pool.kernel_size) or any(v < 1 for v in pool.stride) or any(v < 0 for v in pool.padding)
        bad = bad or any(_lengths_bad(v, nd) for v in (pool.kernel_size, pool.stride, pool.padding))
        if not bad and pool.padding:
            bad = any(2 * p > k for p, k in zip(_per_dim(pool.padding, nd, 0), _per_dim(pool.kernel_size, nd, 1)))
    return bad


def _transpose_geometry_invalid(request: pb.ConvTransposeRequest, nd: int) -> bool:
    fields = (request.stride, request.dilation, request.padding, request.output_padding)
    if any(_lengths_bad(v, nd) for v in fields):
        return True
    if any(v < 1 for v in request.stride) or any(v < 1 for v in request.dilation) or request.groups < 0:
        return True
    if any(v < 0 for v in request.padding) or any(v < 0 for v in request.output_padding):
        return True
    return any(
        op >= s and op >= d for op, s, d in zip(_per_dim(request.output_padding, nd, 0), _per_dim(request.stride, nd, 1), _per_dim(request.dilation, nd, 1))
    )


POOLS = st.one_of(
    st.none(),
    st.builds(
        pb.Pool,
        kind=st.integers(0, 3),
        kernel_size=st.lists(st.integers(-1, 4), max_size=3),
        stride=st.lists(st.integers(-1, 3), max_size=3),
        padding=st.lists(st.integers(-1, 3), max_size=3),
    ),
)


LAYER_VIOLATIONS = [
    None,
    None,
    "random",
    "random",
    "stride",
    "dilation",
    "padding",
    "groups",
    "pool.stride",
    "pool.kernel_size",
    "pool.padding",
    "pool.padding_over_half",
    "pool.kind",
]


@settings(max_examples=150, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    nd=st.integers(1, 2),
    stride=GEOMETRY,
    dilation=GEOMETRY,
    padding=st.lists(st.integers(-3, 3), max_size=3),
    preset=st.sampled_from([0, 0, 0, 1, 2]),
    groups=st.integers(-1, 2),
    pool=POOLS,
    how=st.sampled_from(["unary", "chunked", "chunked_header_only"]),
    violation=st.sampled_from(LAYER_VIOLATIONS),
    base=st.tuples(
        st.integers(1, 2),
        st.integers(1, 2),
        st.integers(0, 1),
        st.integers(1, 2),
        st.integers(2, 3),
        st.integers(1, 2),
        st.integers(0, 1),
        st.integers(0, len(LAYER_VIOLATIONS)),
    ),
)
def test_conv_layer_invalid_geometry_is_invalid_argument(
    stub: pb_grpc.ConvolutionServiceStub,
    nd: int,
    stride: list[int],
    dilation: list[int],
    padding: list[int],
    preset: int,
    groups: int,
    pool: pb.Pool | None,
    how: str,
    violation: str | None,
    base: tuple[int, ...],
) -> None:
    """Negative padding, stride or dilation below 1, a pool stride or kernel_size of 0, pool padding
    over half the window: INVALID_ARGUMENT, also for a chunked call whose 32 MiB input has not
    arrived (refused from the header, before admission); valid geometry: any allowed status.

    ``violation`` breaks one rule of an otherwise valid geometry (so that each rule is seen to be
    enforced on its own); "random" takes the drawn values as they come."""
    if violation != "random":  # a valid geometry, then at most one rule broken
        s, d, p, kind, k, ps, pp, with_pool = base
        stride, dilation, padding, preset, groups = [s], [d], [p], 0, 1
        pool = pb.Pool(kind=kind, kernel_size=[k], stride=[ps], padding=[pp]) if violation and "pool" in violation or with_pool % 2 else None
        if violation in ("stride", "dilation", "padding"):
            {"stride": stride, "dilation": dilation, "padding": padding}[violation][0] = -1 if violation == "padding" or k == 3 else 0
        elif violation == "groups":
            groups = -1
        elif violation and pool is not None:
            field = violation.split(".")[1]
            if field == "padding_over_half":
                pool.padding[0] = k // 2 + 1
            elif field == "kind":
                pool.kind = pb.POOL_KIND_UNSPECIFIED
            else:
                getattr(pool, field)[0] = -1 if field == "padding" else 0
    x = np.ones((1, 2) + (6,) * nd, np.float32)
    w = np.ones((2, 1 if groups == 2 else 2) + (2,) * nd, np.float32)
    request = pb.ConvLayerRequest(
        weight=codec.encode(w), stride=stride, dilation=dilation, groups=groups, padding=pb.Padding(sizes=[] if preset else padding, preset=preset), pool=pool
    )
    if how == "unary":
        request.input.CopyFrom(codec.encode(x))
        code, _, _ = _outcome(stub.ConvLayer, request)
    elif how == "chunked":
        request.input.CopyFrom(codec.header(x))
        data = codec.wire_bytes(x).tobytes()
        code, _, _ = _stream_outcome(
            stub.ConvLayerChunked, [pb.ConvLayerRequestPart(header=request), pb.ConvLayerRequestPart(chunk=pb.TensorChunk(field="input", offset=0, data=data))]
        )
    else:
        request.input.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=(1, 2) + ((2**22,) if nd == 1 else (2**11, 2**11))))
        code, _, _ = _stream_outcome(stub.ConvLayerChunked, [pb.ConvLayerRequestPart(header=request)])
    event(f"{violation}: {'invalid' if _layer_geometry_invalid(request, nd) else 'valid'} {code.name}")
    assert (violation in (None, "random")) or _layer_geometry_invalid(request, nd), violation
    if _layer_geometry_invalid(request, nd):
        assert code == INVALID, (code, request.stride, request.dilation, request.padding, request.groups, request.pool, how)
    else:
        assert code in ALLOWED, code
        if how == "chunked_header_only":
            assert code != OK


TRANSPOSE_VIOLATIONS = [None, None, "random", "random", "stride", "dilation", "padding", "output_padding", "output_padding_too_large", "groups"]


@settings(max_examples=150, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    nd=st.integers(1, 2),
    stride=GEOMETRY,
    dilation=GEOMETRY,
    padding=GEOMETRY,
    output_padding=GEOMETRY,
    groups=st.integers(-1, 2),
    registered=st.booleans(),
    violation=st.sampled_from(TRANSPOSE_VIOLATIONS),
    base=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.integers(0, 2)),
)
def test_conv_transpose_invalid_geometry_is_invalid_argument(
    stub: pb_grpc.ConvolutionServiceStub,
    nd: int,
    stride: list[int],
    dilation: list[int],
    padding: list[int],
    output_padding: list[int],
    groups: int,
    registered: bool,
    violation: str | None,
    base: tuple[int, int, int, int],
) -> None:
    """Negative padding or output_padding, stride or dilation below 1, output_padding not below
    stride or dilation: INVALID_ARGUMENT, with inline or registered weights (``violation`` as in
    the ConvLayer test)."""
    if violation != "random":
        s, d, p, op = base
        stride, dilation, padding, output_padding, groups = [s], [d], [p], [min(op, max(s, d) - 1)], 1
        if violation in ("stride", "dilation"):
            {"stride": stride, "dilation": dilation}[violation][0] = 0
        elif violation in ("padding", "output_padding"):
            {"padding": padding, "output_padding": output_padding}[violation][0] = -1
        elif violation == "output_padding_too_large":
            output_padding = [max(s, d)]
        elif violation == "groups":
            groups = -1
    x = np.ones((1, 2) + (5,) * nd, np.float32)
    w = np.ones((2, 1 if groups == 2 else 2) + (3,) * nd, np.float32)
    request = pb.ConvTransposeRequest(input=codec.encode(x), stride=stride, dilation=dilation, padding=padding, output_padding=output_padding, groups=groups)
    if registered:
        request.weights_id = stub.RegisterWeights(pb.RegisterWeightsRequest(weight=codec.encode(w)), timeout=30).weights_id
    else:
        request.weight.CopyFrom(codec.encode(w))
    code, _, _ = _outcome(stub.ConvTranspose, request)
    event(f"{violation}: {'invalid' if _transpose_geometry_invalid(request, nd) else 'valid'} {code.name}")
    assert (violation in (None, "random")) or _transpose_geometry_invalid(request, nd), violation
    if _transpose_geometry_invalid(request, nd):
        assert code == INVALID, (code, stride, dilation, padding, output_padding, groups)
    else:
        assert code in ALLOWED, code


# -- shared memory: hostile requests and the capability --------------------------------------------

SHARED_TENSORS = st.builds(
    pb.SharedTensor,
    region=st.sampled_from(["convserve_fuzz_none", "../etc/passwd", "", "convserve/../x", "convserve" + "a" * 300, "psm_x"]),
    offset=st.one_of(st.integers(-8, 64), st.just(2**63 - 1)),
    dtype=st.integers(0, 16),
    shape=st.lists(DIMENSION, max_size=3),
    capability=st.one_of(st.just(b""), st.binary(min_size=16, max_size=16), st.binary(max_size=40)),
)
SHARED_REQUESTS = st.builds(
    pb.SharedSignalRequest,
    options=st.one_of(st.none(), st.builds(pb.SignalRequest, mode=st.integers(0, 4), in1=st.one_of(st.none(), ANY_TENSOR))),
    in1=SHARED_TENSORS,
    in2=SHARED_TENSORS,
    result=st.builds(
        pb.SharedBuffer,
        region=st.sampled_from(["convserve_fuzz_none", "../x", ""]),
        offset=st.integers(-2, 64),
        size=st.integers(-2, 2**40),
        capability=st.binary(max_size=20),
    ),
)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RunningServer]:
    running = start_server("--allow-shared-memory", "--max-elements", str(SHARED_MAX_ELEMENTS), "--log-level", "WARNING")
    try:
        yield running
    finally:
        assert stop_server(running) == 0


@pytest.fixture(scope="module")
def shared_stub(shared_server: RunningServer) -> Iterator[pb_grpc.ConvolutionServiceStub]:
    with grpc.insecure_channel(shared_server.target) as channel:
        yield pb_grpc.ConvolutionServiceStub(channel)


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(request=SHARED_REQUESTS, correlate=st.booleans())
def test_shared_memory_rpcs_never_fail_internally(shared_stub: pb_grpc.ConvolutionServiceStub, request: pb.SharedSignalRequest, correlate: bool) -> None:
    code = _status(shared_stub.CorrelateShared if correlate else shared_stub.ConvolveShared, request)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code


class _Region:
    """A region made as the client makes one (``convserve._shared_memory``): 0600, the 64-byte header, then data."""

    def __init__(self, purpose: str, size: int = 1 << 16) -> None:
        self.memory = shared_memory.SharedMemory(name=f"convserve_fuzz_{secrets.token_hex(4)}_{purpose}", create=True, size=size)
        self.capability = secrets.token_bytes(16)
        self.memory.buf[:HEADER_SIZE] = header(self.capability)

    @property
    def name(self) -> str:
        return self.memory.name.lstrip("/")

    def snapshot(self) -> bytes:
        return bytes(self.memory.buf)

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()


@pytest.fixture(scope="module")
def regions() -> Iterator[tuple[_Region, _Region]]:
    made = (_Region("in"), _Region("out"))
    try:
        yield made
    finally:
        for region in made:
            region.close()


CAPABILITIES = ["right", "right", "right", "empty", "random", "flipped", "short", "long", "other", "zeros"]


def _capability(kind: str, region: _Region, other: _Region, rng: np.random.Generator) -> bytes:
    right = region.capability
    flipped = bytearray(right)
    flipped[int(rng.integers(16))] ^= 1 << int(rng.integers(8))
    return {
        "right": right,
        "empty": b"",
        "random": secrets.token_bytes(16),
        "flipped": bytes(flipped),
        "short": right[:15],
        "long": right + b"\0",
        "other": other.capability,
        "zeros": bytes(16),
    }[kind]


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    caps=st.one_of(st.just(("right",) * 3), st.tuples(*[st.sampled_from(CAPABILITIES)] * 3)),
    dtype=st.sampled_from(["float64", "int16", "complex128"]),
    n=st.integers(1, 300),
    m=st.integers(1, 20),
    offsets=st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)),
    huge=st.sampled_from([None] * 6 + ["in1", "in2"]),
    correlate=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_shared_memory_capability_guards_real_regions(
    shared_stub: pb_grpc.ConvolutionServiceStub,
    regions: tuple[_Region, _Region],
    caps: tuple[str, str, str],
    dtype: str,
    n: int,
    m: int,
    offsets: tuple[int, int, int],
    huge: str | None,
    correlate: bool,
    seed: int,
) -> None:
    """Real regions with the client's header: the right capability everywhere computes numpy's
    answer into the result region (only there); any wrong, empty or borrowed capability is
    PERMISSION_DENIED, never OK, and leaves both regions byte for byte as they were; a declared
    shape beyond max_elements is RESOURCE_EXHAUSTED with pushback -1 and touches nothing."""
    rng = np.random.default_rng(seed)
    inputs, results = regions
    make = (
        (lambda s: rng.integers(-10, 11, s).astype(dtype))
        if dtype == "int16"
        else (lambda s: (rng.standard_normal(s) + (1j * rng.standard_normal(s) if dtype == "complex128" else 0)).astype(dtype))
    )
    in1, in2 = make(n), make(m)
    off1 = HEADER_SIZE + 64 * offsets[0]
    off2 = off1 + 64 * (-(-in1.nbytes // 64) + offsets[1])
    out_offset = HEADER_SIZE + 64 * offsets[2]
    inputs.memory.buf[off1 : off1 + in1.nbytes] = in1.tobytes()
    inputs.memory.buf[off2 : off2 + in2.nbytes] = in2.tobytes()
    code_of = codec.dtype_code(in1.dtype, "in1")
    shapes = {"in1": [n], "in2": [m]}
    if huge:
        shapes[huge] = [SHARED_MAX_ELEMENTS + 1] if rng.integers(2) else [2**12, 2**12]
    request = pb.SharedSignalRequest(
        in1=pb.SharedTensor(region=inputs.name, offset=off1, dtype=code_of, shape=shapes["in1"], capability=_capability(caps[0], inputs, results, rng)),
        in2=pb.SharedTensor(region=inputs.name, offset=off2, dtype=code_of, shape=shapes["in2"], capability=_capability(caps[1], inputs, results, rng)),
        result=pb.SharedBuffer(region=results.name, offset=out_offset, size=16 * (n + m), capability=_capability(caps[2], results, inputs, rng)),
    )
    before = inputs.snapshot(), results.snapshot()
    code, trailers, response = _outcome(shared_stub.CorrelateShared if correlate else shared_stub.ConvolveShared, request)
    after = inputs.snapshot(), results.snapshot()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code
    event(f"{'huge' if huge else 'right' if set(caps) == {'right'} else 'wrong'} {code.name}")
    if huge:
        _assert_never_fits(code, trailers, (huge, shapes))
        assert after == before
        return
    if set(caps) != {"right"}:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, caps)
        assert after == before, f"a call with capabilities {caps} changed a region"
        return
    assert code == OK, code
    assert after[0] == before[0], "the server wrote into the inputs region"
    expected = _reference_signal(in1, in2, correlate)
    dt, shape, nbytes = codec.check_declared(response.result.dtype, response.result.shape, "result")
    assert dt == in1.dtype and tuple(shape) == expected.shape
    result = np.frombuffer(after[1][out_offset : out_offset + nbytes], dt).reshape(shape)
    if dt.kind in "iu":
        np.testing.assert_array_equal(result, expected)
    else:
        assert np.max(np.abs(result - expected), initial=0) <= 1e-9 * (np.abs(expected).max(initial=0) + 1)
    assert after[1][:out_offset] == before[1][:out_offset] and after[1][out_offset + nbytes :] == before[1][out_offset + nbytes :], (
        "the server wrote outside the result"
    )


# -- afterwards --------------------------------------------------------------------------------------


def test_server_still_serves_after_fuzzing(server: RunningServer, shared_server: RunningServer, stub: pb_grpc.ConvolutionServiceStub) -> None:
    for running in (server, shared_server):
        assert running.process.poll() is None, "a server process died during the fuzzing"
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
    result = codec.decode(stub.Convolve(request, timeout=10).result)
    np.testing.assert_array_equal(result, [1, 2, 2, 1])
