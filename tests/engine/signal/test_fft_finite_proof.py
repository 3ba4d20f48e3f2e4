"""The FFT methods' input pass proves the result finite: no pass over the result, and every NaN, Inf and overflow still warned about."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import convolve, correlate
from convserve_server.engine.info import NONFINITE_WARNING
from convserve_server.engine.signal import convolution
from convserve_server.engine.signal.finite_bound import sum_of_squares

RNG = np.random.default_rng(31)


@pytest.fixture
def result_checks(count_calls: Callable[[object, str], list[int]]) -> list[int]:
    """Counts the passes over a result (``convolution.has_nonfinite``)."""
    return count_calls(convolution, "has_nonfinite")


def _complex(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)


@pytest.mark.parametrize("method", ["auto", "fft", "overlap_add"])
@pytest.mark.parametrize(
    "x,h",
    [
        (RNG.standard_normal(5000), RNG.standard_normal(700)),
        (RNG.standard_normal((90, 80)).astype(np.float32), RNG.standard_normal((21, 19)).astype(np.float32)),
        (_complex((3000,)), _complex((400,))),
        (RNG.integers(0, 255, (70, 60)).astype(np.uint8), RNG.standard_normal((15, 15))),
    ],
)
def test_proven_inputs_save_the_pass_over_the_result(x: np.ndarray, h: np.ndarray, method: str, result_checks: list[int]) -> None:
    result, info = convolve(x, h, "same", method, return_info=True)
    assert info.method in ("fft", "overlap_add") and not info.warnings
    assert result_checks[0] == 0
    expected = ss.fftconvolve(x.astype(np.complex128 if np.iscomplexobj(x) else np.float64), h, "same")
    np.testing.assert_allclose(result, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_huge_finite_inputs_are_checked_after_and_their_overflow_warned_about(dtype: Any, result_checks: list[int]) -> None:
    big = np.finfo(dtype).max / 4
    x = np.full(4000, big, dtype)
    h = np.ones(900, dtype)
    result, info = convolve(x, h, "full", "fft", return_info=True)
    assert result_checks[0] == 1 and NONFINITE_WARNING in info.warnings
    assert not np.isfinite(result).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, complex(0, np.nan)])
def test_nan_and_inf_are_still_found(bad: Any) -> None:
    x, h = _complex((3000,)) if isinstance(bad, complex) else RNG.standard_normal(3000), RNG.standard_normal(400)
    x[1234] = bad
    result, info = convolve(x, h, "full", "fft", return_info=True)
    assert any("NaN" in w for w in info.warnings) or NONFINITE_WARNING in info.warnings
    auto, auto_info = correlate(x, h, "full", return_info=True)
    assert auto_info.method == "direct" and any("NaN" in w for w in auto_info.warnings)
    assert np.isfinite(auto).mean() > 0.5  # kept local


def test_a_cast_result_is_checked_again(result_checks: list[int]) -> None:
    x = np.full(3000, 3e4, np.float16)  # summed in float32, beyond float16's 65504 once cast back
    result, info = convolve(x, np.ones(500, np.float16), "full", "fft", return_info=True)
    assert result.dtype == np.float16 and result_checks[0] == 1
    assert NONFINITE_WARNING in info.warnings


def test_sum_of_squares_covers_every_dtype_and_layout() -> None:
    for a in (
        RNG.standard_normal((3, 4, 5)),
        RNG.standard_normal((6, 8)).astype(np.float32)[:, ::2],
        _complex((4, 6)),
        _complex((4, 6))[:, ::2],
        RNG.integers(0, 255, (30, 30)).astype(np.uint8),  # would wrap in uint8
        RNG.standard_normal(10).astype(np.float16),
    ):
        exact = np.abs(a.astype(np.complex128))
        assert sum_of_squares(a) == pytest.approx(float((exact**2).sum()), rel=1e-3)
        assert sum_of_squares(a, absolute=True) == pytest.approx(float(exact.sum()), rel=1e-3)


@pytest.mark.parametrize("kernel_dtype", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("method,shape", [("fft", (64,)), ("overlap_add", (3000,)), ("direct", (16, 16))])
def test_the_most_negative_integer_kernel_still_bounds_the_result(kernel_dtype: Any, method: str, shape: tuple[int, ...]) -> None:
    dtype = np.result_type(np.float32, kernel_dtype)  # float64 for int32 kernels
    x = np.full(shape, np.finfo(dtype).max / 4, dtype)  # every sum overflows
    h = np.full((4,) if len(shape) == 1 else (3, 3), np.iinfo(kernel_dtype).min, kernel_dtype)  # abs() wraps in the integer dtype
    result, info = convolve(x, h, "same", method, return_info=True)
    assert not np.isfinite(result).all() and NONFINITE_WARNING in info.warnings


def test_integer_magnitudes_are_summed_without_wrapping() -> None:
    assert sum_of_squares(np.array([-128, 127], np.int8), absolute=True) == 255
    assert sum_of_squares(np.array([-128, 127], np.int8)) == 128**2 + 127**2
