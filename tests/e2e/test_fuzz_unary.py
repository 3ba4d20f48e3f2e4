"""Fuzzing the decoder and the unary RPCs with hypothesis: never INTERNAL, never a crash, always serving.

Beyond "an allowed status", the server's rules are checked exactly: invalid ConvLayer /
ConvTranspose geometry is INVALID_ARGUMENT (also from a chunked header before its data). The
other fuzz files (test_fuzz_chunked.py, test_fuzz_shared_memory.py, test_fuzz_stream.py) cover
the chunked, shared-memory and streaming RPCs; this file is the last of them that pytest runs, so
its last test checks that both servers still serve after all the fuzzing.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st


from convserve import InvalidArgumentError, codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.e2e.fuzz_strategies import ALLOWED, ANY_TENSOR, FUNCTION_FIXTURE, INTS, INVALID, OK, TENSORS, _outcome, _status, _stream_outcome


@settings(max_examples=300, deadline=None)
@given(TENSORS)
def test_decoder_accepts_or_refuses_cleanly(tensor: pb.Tensor) -> None:
    try:
        array = codec.decode(tensor, "t", max_elements=2**20)
    except InvalidArgumentError:
        return
    assert array.nbytes == len(tensor.data)


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


def _one_rule_broken(violation: str | None, base: tuple[int, ...]) -> tuple[list[int], list[int], list[int], int, int, pb.Pool | None]:
    """A valid geometry from ``base`` (stride, dilation, padding, preset, groups, pool), then at most
    the one rule ``violation`` broken."""
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
    return stride, dilation, padding, preset, groups, pool


def _layer_geometry_code(stub: pb_grpc.ConvolutionServiceStub, request: pb.ConvLayerRequest, x: np.ndarray, how: str, nd: int) -> grpc.StatusCode:
    """Send ``request`` with the input ``x`` unary, chunked with its data, or chunked with only a
    header declaring a 32 MiB input; the status."""
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
    return code


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
        stride, dilation, padding, preset, groups, pool = _one_rule_broken(violation, base)
    x = np.ones((1, 2) + (6,) * nd, np.float32)
    w = np.ones((2, 1 if groups == 2 else 2) + (2,) * nd, np.float32)
    request = pb.ConvLayerRequest(
        weight=codec.encode(w), stride=stride, dilation=dilation, groups=groups, padding=pb.Padding(sizes=[] if preset else padding, preset=preset), pool=pool
    )
    code = _layer_geometry_code(stub, request, x, how, nd)
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
