"""No silently wrong numbers: every dtype pair x every method against an exact or float64 reference.

The whole computation runs in the result's precision (a float32 or float16 operand with a
float64 result is not transformed in single precision); an ``output_dtype`` narrower than the
result is refused; NaN or Inf in an input gives a warning on every method.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from convserve_server.engine import InvalidArgumentError, convolve, correlate
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.signal.options import SUPPORTED_DTYPES
from convserve_server.engine.signal.overlap_add import choose_block

METHODS = ("direct", "fft", "overlap_add", "auto")
N, M = 3000, 40  # long enough for overlap_add's blocked path (checked below), still fast
# Tolerance relative to the reference's peak, by result dtype (integers and bool: exact).
TOLERANCE = {"float16": 1e-2, "float32": 1e-5, "complex64": 1e-5, "float64": 1e-12, "complex128": 1e-12}


def _values(rng: np.random.Generator, dtype: np.dtype[Any], n: int) -> np.ndarray:
    """Random values; integers small enough that no result dtype overflows (int8 x int8 included)."""
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0 if dtype.kind == "u" else -1, 2, n).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def _reference(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Exact integers (int64 of small values) or complex128 sums of the inputs' exact values."""
    if x.dtype.kind in "biu" and h.dtype.kind in "biu":
        return np.convolve(x.astype(np.int64), h.astype(np.int64))
    return np.convolve(x.astype(np.complex128), h.astype(np.complex128))


def _check(result: np.ndarray, reference: np.ndarray, label: str) -> float:
    """Assert ``result`` is within its dtype's tolerance of ``reference``; return the relative error."""
    dtype = result.dtype
    if dtype.kind == "b":
        np.testing.assert_array_equal(result, reference != 0, err_msg=label)
        return 0.0
    if dtype.kind in "iu":
        np.testing.assert_array_equal(result.astype(np.int64), reference, err_msg=label)
        return 0.0
    expected = reference if dtype.kind == "c" else reference.real
    peak = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(result.astype(np.complex128) - expected))) / peak
    assert error <= TOLERANCE[dtype.name], f"{label}: relative error {error:.3g} > {TOLERANCE[dtype.name]}"
    return error


def test_overlap_add_runs_its_blocked_path_at_this_size() -> None:
    assert choose_block(N, M) < fast_length(N + M - 1)


@pytest.mark.parametrize("first", [dt.name for dt in SUPPORTED_DTYPES])
def test_every_dtype_pair_and_method_is_accurate(first: str) -> None:
    rng = np.random.default_rng(sum(map(ord, first)))
    for second in SUPPORTED_DTYPES:
        x, h = _values(rng, np.dtype(first), N), _values(rng, second, M)
        reference = _reference(x, h)
        for method in METHODS:
            result, info = convolve(x, h, method=method, return_info=True)
            assert result.dtype == np.result_type(x.dtype, h.dtype)
            _check(result, reference, f"{first} x {second.name}, method {method} (ran {info.method})")


@pytest.mark.parametrize(
    "low, high", [("float32", "float64"), ("float16", "float64"), ("complex64", "complex128"), ("float32", "complex128"), ("float16", "complex64")]
)
def test_mixed_precision_fft_paths_run_in_the_result_precision(low: str, high: str) -> None:
    rng = np.random.default_rng(2)
    for n, m in ((20_000, 300), (4096, 4096)):  # long transforms: 1/L would be subnormal in float16
        x, h = _values(rng, np.dtype(high), n), _values(rng, np.dtype(low), m)
        reference = _reference(x, h)
        for method in ("fft", "overlap_add"):
            for a, b in ((x, h), (h, x)):
                _check(convolve(a, b, method=method), reference, f"{a.dtype} x {b.dtype} {method}")
        expected = np.correlate(x.astype(np.complex128), h.astype(np.complex128), "full")
        _check(correlate(x, h, method="fft"), expected, f"correlate {high} x {low}")
        circ = np.fft.ifft(np.fft.fft(x.astype(np.complex128)) * np.fft.fft(h.astype(np.complex128), n))
        _check(convolve(x, h, mode="circular", method="fft"), circ, f"circular {high} x {low}")


@pytest.mark.parametrize(
    "natural, narrower",
    [
        ((np.float64, np.float64), "float16"),
        ((np.float64, np.float32), "float32"),
        ((np.complex128, np.float64), "complex64"),
        ((np.int64, np.int64), "int32"),
        ((np.int16, np.uint8), "int8"),
    ],
)
def test_narrowing_output_dtype_is_refused(natural: tuple[Any, Any], narrower: str) -> None:
    x, h = np.ones(8, natural[0]), np.ones(3, natural[1])
    with pytest.raises(InvalidArgumentError) as error:
        convolve(x, h, output_dtype=narrower)
    assert error.value.field == "output_dtype" and "narrower" in str(error.value)


def test_wider_output_dtypes_are_honoured() -> None:
    for natural, wider in (
        (np.float32, "float64"),
        (np.float16, "float32"),
        (np.uint8, "uint16"),
        (np.uint8, "int16"),
        (np.int32, "float64"),
        (np.float64, "complex128"),
    ):
        result = convolve(np.full(8, 100, natural), np.ones(3, natural), output_dtype=wider)
        assert result.dtype == np.dtype(wider)
        np.testing.assert_array_equal(result, np.convolve(np.full(8, 100.0), np.ones(3)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_an_input_warns_on_every_method(method: str, bad: float) -> None:
    for x, h in ((np.ones(500), np.ones(5)), (np.ones(5), np.ones(500))):
        x = x.copy()
        x[len(x) // 2] = bad
        _, info = convolve(x, h, method=method, return_info=True)
        assert any("NaN or Inf" in text for text in info.warnings), (method, info.warnings)
    _, clean = convolve(np.ones(500), np.ones(5), method=method, return_info=True)
    assert not any("NaN" in text for text in clean.warnings)


def test_every_pair_is_covered() -> None:
    assert len(list(itertools.product(SUPPORTED_DTYPES, repeat=2))) == 14 * 14


def test_nan_in_a_layer_input_warns() -> None:
    from convserve_server.engine import conv_layer, conv_transpose

    x = np.ones((1, 2, 12, 12), np.float32)
    x[0, 0, 5, 5] = np.nan
    w = np.ones((3, 2, 3, 3), np.float32)
    for call in (lambda: conv_layer(x, w, return_info=True), lambda: conv_transpose(x, np.ones((2, 3, 3, 3), np.float32), return_info=True)):
        _, info = call()
        assert any("NaN or Inf" in text for text in info.warnings), info.warnings
    _, clean = conv_layer(np.ones((1, 2, 12, 12), np.float32), w, return_info=True)
    assert not clean.warnings
