"""Fuzzing ConvolveStream with hypothesis: any kernel, mixed blocks, output_dtype, answers checked against numpy.

The server's size rules are checked exactly: stream blocks declaring more than max_elements are
RESOURCE_EXHAUSTED with pushback -1; the answers equal np.convolve (exactly for integers;
OUT_OF_RANGE instead of a wrap, narrowing output_dtype refused, warnings for NaN/Inf).
"""

from __future__ import annotations

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
    OUT_OF_RANGE,
    PUSHBACK,
    _declared,
    _outcome,
    _stream_outcome,
    _stream_status,
)

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


def _stream_inputs(
    rng: np.random.Generator,
    kdtype: np.dtype[Any],
    taps: int,
    kernel_channels: Any,
    channels: int | None,
    block_dtypes: list[str],
    mixed: bool,
    sizes: list[int],
    extreme: bool,
    nan: bool,
    hostile: tuple[int, pb.Tensor] | None,
) -> tuple[np.ndarray, list[Any]]:
    """The kernel and the blocks of one stream: small values or a dtype's extremes, NaN or Inf in the
    last float block if ``nan``, and the ``hostile`` block (if any) inserted where it was drawn."""
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
    return kernel, blocks


def _stream_contract(blocks: list[Any], kernel: np.ndarray, kdtype: np.dtype[Any], output_dtype: int) -> tuple[Any, list[np.ndarray], Any, Any]:
    """The contract, message by message: the first refusal ends the call. The refusal (None, a
    status or MALFORMED_BLOCK), the blocks accepted before it, the output dtype (None until a valid
    first block) and the first block."""
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
    return refusal, valid, out, first


def _stream_expectation(
    refusal: Any, valid: list[np.ndarray], out: Any, first: Any, kernel: np.ndarray, kdtype: np.dtype[Any], taps: int
) -> tuple[set[Any], Any, np.ndarray, np.ndarray, int]:
    """The statuses allowed and the reference answer (exact for integers and bool, else computed in
    float64 and cast), with the accepted signal as (C, n), the kernel as (C, M) and C."""
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
    return allowed, reference, signal, h, c


def _check_refusal_like_unary(
    stub: pb_grpc.ConvolutionServiceStub,
    code: grpc.StatusCode,
    allowed: set[Any],
    refusal: Any,
    valid: list[np.ndarray],
    kernel: np.ndarray,
    output_dtype: int,
    out: Any,
    case: object,
) -> None:
    """An exact stream refused OUT_OF_RANGE with every block valid: Convolve over the whole signal
    refuses it too."""
    if out is not None and out.kind in "biu" and code != OK and code in allowed:  # the unary contract again
        whole = np.concatenate(valid) if valid else None
        if refusal is None and whole is not None and whole.size and code == OUT_OF_RANGE:
            unary = _outcome(stub.Convolve, _unary_request(whole, kernel, output_dtype))[0]
            event(f"exact stream OUT_OF_RANGE, unary {unary.name}")
            assert unary == OUT_OF_RANGE, ("a stream refused what Convolve computes", unary, case)


def _check_stream_answer(
    stub: pb_grpc.ConvolutionServiceStub,
    replies: list[Any],
    reference: Any,
    out: Any,
    first: Any,
    c: int,
    signal: np.ndarray,
    h: np.ndarray,
    valid: list[np.ndarray],
    kernel: np.ndarray,
    output_dtype: int,
    case: object,
) -> None:
    """An OK stream: every block in the output dtype, together numpy's answer per channel (exactly,
    and as Convolve says, for integers), with a warning whenever NaN or Inf came in or out."""
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
    kernel, blocks = _stream_inputs(rng, kdtype, taps, kernel_channels, channels, block_dtypes, mixed, sizes, extreme, nan, hostile)
    messages = [pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(kernel), output_dtype=output_dtype))]
    messages += [pb.StreamRequest(block=b if isinstance(b, pb.Tensor) else codec.encode(b)) for b in blocks]

    refusal, valid, out, first = _stream_contract(blocks, kernel, kdtype, output_dtype)
    allowed, reference, signal, h, c = _stream_expectation(refusal, valid, out, first, kernel, kdtype, taps)

    code, trailers, replies = _stream_outcome(stub.ConvolveStream, messages)
    case = (kernel.dtype, kernel.shape, [getattr(b, "dtype", None) for b in blocks], output_dtype, code)
    _check_refusal_like_unary(stub, code, allowed, refusal, valid, kernel, output_dtype, out, case)
    event(f"{code.name} {'exact' if out is not None and out.kind in 'biu' else 'float' if out is not None else '-'}")
    assert code in allowed, case
    if code == EXHAUSTED:
        assert trailers.get(PUSHBACK) == "-1", (trailers, case)
    if code != OK or out is None:
        return
    _check_stream_answer(stub, replies, reference, out, first, c, signal, h, valid, kernel, output_dtype, case)
