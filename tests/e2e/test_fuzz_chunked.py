"""Fuzzing the chunked RPCs with hypothesis: hostile headers and chunk sequences.

The server's size rules are checked exactly: declared sizes beyond max_elements are
RESOURCE_EXHAUSTED with pushback -1; chunk sequences are assembled or refused, never answered wrongly.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.e2e.fuzz_strategies import (
    ALLOWED,
    ANY_TENSOR,
    EXHAUSTED,
    FUNCTION_FIXTURE,
    INVALID,
    MAX_ELEMENTS,
    OK,
    TENSORS,
    _assert_never_fits,
    _declared,
    _reference_signal,
    _stream_outcome,
)

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


def _reference_layer(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, padding: int, dilation: int) -> np.ndarray:
    """torch.nn.functional.conv1d in numpy (cross-correlation, zero padding)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    taps = w.shape[-1]
    count = (xp.shape[-1] - dilation * (taps - 1) - 1) // stride + 1
    index = np.arange(count)[:, None] * stride + np.arange(taps)[None, :] * dilation
    out = np.einsum("nctk,ock->not", xp[:, :, index], w)
    return out if b is None else out + b[None, :, None]


MUTATIONS = ["none", "empty_chunks", "offset", "overflow", "field", "truncate", "header_again", "chunk_first", "inline_partial"]


def _chunked_arrays(
    kind: str, rng: np.random.Generator, n: int, m: int, dtype: str, geometry: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], Any, np.ndarray, Any]:
    """The tensors of one ``kind`` of chunked call, its header request (tensors not set yet),
    numpy's answer and the part message type."""
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
    return arrays, request, expected, wrap


def _interleaved_chunks(request: Any, arrays: dict[str, np.ndarray], streamed: list[str], sizes: list[int], rng: np.random.Generator) -> list[pb.TensorChunk]:
    """Put the tensors in the header (the ``streamed`` ones declared only, the others inline) and cut
    the streamed ones into chunks of ``sizes`` in turn, interleaved at random."""
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
    return order


def _mutated_parts(
    mutation: str, request: Any, wrap: Any, order: list[pb.TensorChunk], arrays: dict[str, np.ndarray], streamed: list[str], rng: np.random.Generator
) -> list[Any]:
    """The call's messages, the header first, with one ``mutation`` of the sequence ("none" leaves
    it intact) applied to a streamed tensor drawn at random."""
    first = next(iter(arrays))
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
    return parts


def _check_assembled(code: grpc.StatusCode, replies: list[Any], expected: np.ndarray, dtype: str) -> None:
    """An intact sequence: OK, and the chunked result is numpy's answer (exactly, in the input's
    dtype, for integers)."""
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
    arrays, request, expected, wrap = _chunked_arrays(kind, rng, n, m, dtype, geometry)
    first = next(iter(arrays))
    streamed = [name for name in arrays if name == first or not inline]
    order = _interleaved_chunks(request, arrays, streamed, sizes, rng)
    parts = _mutated_parts(mutation, request, wrap, order, arrays, streamed, rng)

    code, _, replies = _stream_outcome(getattr(stub, kind), parts)
    event(f"{kind} {mutation} {code.name}")
    if mutation not in ("none", "empty_chunks"):
        assert code == INVALID, (code, mutation)
        return
    _check_assembled(code, replies, expected, dtype)
