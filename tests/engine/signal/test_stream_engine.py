"""ConvolveStream's engine (StreamConvolver) keeps the unary integer contract exactly.

For every integer and bool dtype and kernel lengths 1..N, a signal pushed in random block sizes
gives either the unary ``engine.convolve`` result (same values, same dtype) or, when the unary
call refuses with OUT_OF_RANGE, OUT_OF_RANGE too: never INTERNAL, never a wrapped value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from convserve_server.engine import OutOfRangeError, convolve
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.signal.streaming import StreamConvolver

INTEGER_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
MAX_TAPS = 6


def _values(rng: np.random.Generator, dtype: np.dtype[Any], n: int, big: bool) -> np.ndarray:
    """Random values of ``dtype``: small ones, or (``big``) some near the dtype's limits."""
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    info = np.iinfo(dtype)
    low, high = (info.min // 2, info.max // 2) if big else (max(info.min, -3), min(info.max, 4))
    return rng.integers(low, high, n, dtype=dtype, endpoint=True)


def _blocks(rng: np.random.Generator, signal: np.ndarray) -> list[np.ndarray]:
    """``signal`` cut at random places (blocks of 0 to 12 samples)."""
    blocks, start = [], 0
    while start < len(signal):
        size = int(rng.integers(0, 13))
        blocks.append(signal[start : start + size])
        start += size
    return blocks


def _stream(kernel: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    convolver = StreamConvolver(kernel)
    return np.concatenate([convolver.push(b) for b in blocks] + [convolver.close()])


def _outcome(function: Any) -> tuple[str, Any]:
    try:
        return "ok", function()
    except OutOfRangeError as exc:
        return "out_of_range", exc


@pytest.mark.parametrize("name", INTEGER_DTYPES)
def test_stream_matches_unary_for_every_integer_dtype_and_kernel_length(name: str) -> None:
    dtype = np.dtype(name)
    rng = np.random.default_rng(sum(map(ord, name)))
    refused = 0
    for taps in range(1, MAX_TAPS + 1):
        for big in (False, True):
            signal = _values(rng, dtype, int(rng.integers(1, 40)), big)
            kernel = _values(rng, dtype, taps, big)
            unary = _outcome(lambda s=signal, k=kernel: convolve(s, k, method="direct"))
            stream = _outcome(lambda s=signal, k=kernel: _stream(k, _blocks(rng, s)))
            assert unary[0] == stream[0], (name, taps, big, unary, stream)
            if unary[0] == "ok":
                assert stream[1].dtype == unary[1].dtype
                np.testing.assert_array_equal(stream[1], unary[1])
            else:
                refused += 1
    if name not in ("bool",):
        assert refused, "the big values should make some calls overflow"


@pytest.mark.parametrize("name", INTEGER_DTYPES)
def test_one_tap_integer_kernel_streams(name: str) -> None:
    dtype = np.dtype(name)
    signal = _values(np.random.default_rng(5), dtype, 30, False)
    kernel = np.ones(1, dtype)
    np.testing.assert_array_equal(_stream(kernel, [signal[:7], signal[7:7], signal[7:]]), convolve(signal, kernel))


def test_int64_overflow_is_out_of_range_not_wrapped() -> None:
    signal = np.array([2**62, 2**62, 3], np.int64)
    kernel = np.array([2, 1], np.int64)
    with pytest.raises(OutOfRangeError) as unary:
        convolve(signal, kernel)
    convolver = StreamConvolver(kernel)
    with pytest.raises(OutOfRangeError) as stream:
        convolver.push(signal)
        convolver.close()
    assert stream.value.suggested_dtype == unary.value.suggested_dtype == "float64"


def test_uint64_results_above_int64_are_exact() -> None:
    signal = np.array([2**62, 2**62 + 1, 2**62 + 3, 5], np.uint64)
    kernel = np.array([1, 1], np.uint64)
    expected = convolve(signal, kernel)
    assert expected.dtype == np.uint64 and int(expected.max()) > 2**63
    np.testing.assert_array_equal(_stream(kernel, [signal[:1], signal[1:3], signal[3:]]), expected)
    with pytest.raises(OutOfRangeError):  # 2^63 + 2^63 does not fit uint64, in both paths
        _stream(kernel, [np.array([2**63, 2**63], np.uint64)])
    with pytest.raises(OutOfRangeError):
        convolve(np.array([2**63, 2**63], np.uint64), kernel)


def test_multichannel_integer_stream_matches_per_channel_unary() -> None:
    rng = np.random.default_rng(9)
    signal = rng.integers(-100, 100, (50, 3)).astype(np.int16)
    kernel = rng.integers(-5, 5, (4, 3)).astype(np.int16)
    out = _stream(kernel, _blocks(rng, signal))
    for c in range(3):
        np.testing.assert_array_equal(out[:, c], convolve(signal[:, c], kernel[:, c]))


def test_narrowing_output_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        StreamConvolver(np.ones(3), output_dtype="float16").push(np.ones(10))
    assert error.value.field == "output_dtype"
    with pytest.raises(InvalidArgumentError):
        StreamConvolver(np.ones(3, np.int64), output_dtype="int32").push(np.ones(10, np.int64))
    wider = StreamConvolver(np.ones(3, np.float32), output_dtype="float64")
    assert wider.push(np.ones(1000, np.float32)).dtype == np.float64


def test_nan_in_a_block_gives_a_warning_once() -> None:
    convolver = StreamConvolver(np.ones(5))
    convolver.push(np.ones(100))
    assert convolver.take_warnings() == ()
    block = np.ones(100)
    block[10] = np.nan
    convolver.push(block)
    convolver.close()
    taken = convolver.take_warnings()
    assert taken and all("NaN or Inf" in text for text in taken)
    assert convolver.take_warnings() == ()
