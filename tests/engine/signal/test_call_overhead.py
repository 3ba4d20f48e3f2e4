"""The per-call path: signature checks memoised, value checks on every call, one cheap NaN/Inf pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import InvalidArgumentError, OutOfRangeError, convolve
from convserve_server.engine.info import NONFINITE_WARNING, has_nonfinite
from convserve_server.engine.signal import recipes, signature
from convserve_server.engine.signal.convolution import execute
from convserve_server.engine.signal.planner import plan_signal_call

RNG = np.random.default_rng(2002)


def test_a_repeated_signature_is_checked_once_but_its_values_every_time() -> None:
    signature.call_shape.cache_clear()
    x, h = RNG.standard_normal(1000), RNG.standard_normal(3)
    convolve(x, h)
    recipes.forget()  # a remembered recipe would skip the planner altogether (tests/engine/signal/test_recipes.py)
    convolve(x + 1, h)
    info = signature.call_shape.cache_info()
    assert info.misses == 1 and info.hits == 1
    x[500] = np.nan  # same signature, new values: the NaN is still found and kept local
    result, call = convolve(x, h, method="auto", return_info=True)
    assert call.method == "direct" and NONFINITE_WARNING in call.warnings
    assert np.isnan(result).sum() == 3
    small, kernel = np.full(64, 10, np.int8), np.ones(3, np.int8)
    np.testing.assert_array_equal(convolve(small, kernel), np.convolve(small.astype(np.int64), kernel.astype(np.int64)))
    with pytest.raises(OutOfRangeError):  # same signature, values whose sum does not fit int8
        convolve(np.full(64, 100, np.int8), kernel)


def test_a_bad_signature_is_refused_on_every_call() -> None:
    x, h = RNG.standard_normal((4, 5)), RNG.standard_normal((2, 2))
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match="mode"):
            convolve(x, h, mode="fulll")
        with pytest.raises(InvalidArgumentError, match="axes"):
            convolve(x, h, axes=(0, 0))
        with pytest.raises(InvalidArgumentError, match="in1"):
            convolve(np.zeros((0, 3)), h)
        with pytest.raises(InvalidArgumentError, match="in2"):
            convolve(x, np.ones(2, dtype="datetime64[s]"))


def test_unhashable_options_and_array_likes_take_the_same_checks() -> None:
    x, h = RNG.standard_normal((6, 7, 3)), RNG.standard_normal((3, 2))
    expected = ss.fftconvolve(x, h[:, :, None], axes=(0, 1))
    np.testing.assert_allclose(convolve(x, h, axes=[0, 1]), expected, atol=1e-12)
    np.testing.assert_allclose(convolve(x.tolist(), h.tolist(), axes=np.array([0, 1])), expected, atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="axes"):
        convolve(x, h, axes=[0, 5])


def test_the_signature_includes_what_the_plan_depends_on() -> None:
    x32, h32 = RNG.standard_normal(50).astype(np.float32), RNG.standard_normal(5).astype(np.float32)
    plan = plan_signal_call(x32, h32, "same", "fft", None, "fill", 0, None, correlate=False)
    assert plan.work_dtype == np.float32 and plan.output_shape == (50,)
    widened = plan_signal_call(x32, h32, "same", "fft", None, "fill", 0.5, None, correlate=False)
    assert widened.work_dtype == np.float64  # a nonzero fill widens in1, as numpy.pad does
    correlated = plan_signal_call(x32, h32, "full", "fft", None, "fill", 0, "float64", correlate=True)
    assert correlated.out_dtype == np.float64 and correlated.output_shape == (54,)
    np.testing.assert_allclose(execute(correlated), np.correlate(x32.astype(np.float64), h32.astype(np.float64), "full"), atol=1e-5)
    scalar = plan_signal_call(np.float64(2.0), np.float64(3.0), "full", "auto", None, "fill", 0, None, correlate=False)
    assert execute(scalar).shape == () and float(execute(scalar)) == 6.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64, np.complex128])
def test_the_nonfinite_check_finds_nan_and_both_infinities(dtype: type) -> None:
    base = np.ones((9, 11), dtype)
    assert not has_nonfinite(base) and not has_nonfinite(base[:, ::2])
    for value in (np.nan, np.inf, -np.inf):
        for imaginary in (False, True) if np.dtype(dtype).kind == "c" else (False,):
            bad = base.copy()
            bad[4, 6] = complex(0, value) if imaginary else value
            assert has_nonfinite(bad) and has_nonfinite(bad[:, ::2]) and has_nonfinite(bad.T)
    huge = np.full(16, np.finfo(dtype).max / 2, dtype)  # squares overflow, yet every value is finite
    assert not has_nonfinite(huge)
    assert not has_nonfinite(np.arange(5)) and not has_nonfinite(np.zeros(0, dtype))


@pytest.mark.parametrize("kernel", [(7, 8), (9, 9), (11, 11), (1, 50)])
def test_integer_kernels_of_50_taps_and_more_stay_exact_on_the_direct_path(kernel: tuple[int, int]) -> None:
    # OpenCV filters through a DFT from 50 taps (from 130 for float32 into float32): integers must not go there.
    x = RNG.integers(0, 256, (120, 90)).astype(np.uint8)
    h = RNG.integers(-3, 4, kernel).astype(np.int16)
    expected = ss.convolve(x.astype(np.int64), h.astype(np.int64), "same", method="direct")
    for method in ("direct", "auto"):
        np.testing.assert_array_equal(convolve(x, h, "same", method), expected)
    image = RNG.standard_normal((120, 90))
    image[60, 45] = np.nan
    result = convolve(image, RNG.standard_normal(kernel), "same", "direct")
    assert np.isnan(result).sum() == kernel[0] * kernel[1]  # the NaN stays local


def test_the_cheap_rank_one_test_keeps_every_kernel_the_svd_accepts() -> None:
    from convserve_server.engine.signal import separable

    gauss = np.exp(-(np.linspace(-2, 2, 15) ** 2))
    outer = np.outer(RNG.standard_normal(9), RNG.standard_normal(11))  # rank 1 up to rounding: the SVD accepts it
    assert separable.is_separable(np.outer(gauss, gauss).astype(np.float32), np.dtype(np.float32))
    assert separable.is_separable(outer, np.dtype(np.float64))
    assert not separable.is_separable(outer + 1e-6 * RNG.standard_normal(outer.shape), np.dtype(np.float64))
    assert not separable.is_separable(RNG.standard_normal((63, 63)), np.dtype(np.float64))
    assert not separable.is_separable(np.zeros((7, 7)), np.dtype(np.float64))
    kernel = np.outer(gauss, gauss).astype(np.float32)
    image = RNG.standard_normal((64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        convolve(image, kernel, "same", "direct"), ss.convolve(image.astype(np.float64), kernel.astype(np.float64), "same"), atol=1e-5 * 20
    )
