"""A long 1-D signal's NaN/Inf check on the inputs, run beside numpy.convolve: it proves finite results and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from convserve_server.engine import convolve, correlate
from convserve_server.engine.info import NONFINITE_WARNING, FiniteCheck
from convserve_server.engine.signal import direct, direct_fast, finite_bound

RNG = np.random.default_rng(31)
N = direct_fast.CONCURRENT_CHECK_MIN + 1000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_inputs_prove_a_finite_result(dtype) -> None:
    x, h = RNG.standard_normal(N).astype(dtype), RNG.standard_normal(3).astype(dtype)
    checked = FiniteCheck()
    result = direct.linear_region(x, h, (0,), [0], [N + 2], np.dtype(dtype), checked)
    assert checked.nonfinite is False
    np.testing.assert_array_equal(result, np.convolve(x, h))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["signal", "kernel"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_nan_or_inf_in_an_input_is_reported(bad: float, where: str, mode: str) -> None:
    x, h = RNG.standard_normal(N), RNG.standard_normal(3)
    (x if where == "signal" else h)[1] = bad
    for run in (convolve, correlate):
        result, info = run(x, h, mode, "direct", return_info=True)
        assert NONFINITE_WARNING in info.warnings
        assert not np.isfinite(result).all()


def test_finite_inputs_whose_result_overflows_are_reported() -> None:
    x = np.full(N, 1e308)
    h = np.full(3, 1.0)
    result, info = convolve(x, h, "same", "direct", return_info=True)
    assert np.isinf(result).any() and NONFINITE_WARNING in info.warnings


def test_huge_finite_inputs_with_a_finite_result_are_not_reported() -> None:
    x = np.full(N, 1e200)  # the sum of squares overflows: not proven, so the result is checked itself
    h = np.array([1e-10, 0.0, 0.0])
    checked = FiniteCheck()
    result = direct.linear_region(x, h, (0,), [0], [N + 2], np.dtype(np.float64), checked)
    assert checked.nonfinite is None and np.isfinite(result).all()
    assert NONFINITE_WARNING not in convolve(x, h, return_info=True)[1].warnings


def test_the_bound_is_what_it_says() -> None:
    x = RNG.standard_normal(1000)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert finite_bound.finite_bound(x, np.ones(3), f64)
    assert not finite_bound.finite_bound(x * 1e154, np.ones(3), f64)  # squares overflow
    assert not finite_bound.finite_bound(np.full(1000, 1e150), np.full(3, 1e158), f64)  # the product may overflow
    assert not finite_bound.finite_bound(x, np.ones(3), f64, growth=1e308)
    x32 = RNG.standard_normal(1000).astype(np.float32)
    assert finite_bound.finite_bound(x32, np.ones(3, np.float32), f32)
    assert finite_bound.finite_bound(x32 * 1e18, np.ones(3, np.float32), f32)  # the squares are summed in float64: no overflow
    assert not finite_bound.finite_bound(x32 * 1e37, np.ones(3, np.float32), f32)  # partial sums may pass float32's largest value
    assert finite_bound.finite_bound(x32 * 1e37, np.ones(3, np.float32), f64)
    assert not finite_bound.finite_bound(x32.reshape(10, 10, 10) * 1e37, np.ones(3, np.float32), f32)  # 3-D: the numpy sum
    image = RNG.standard_normal((30, 40))[:, ::-2]  # any layout
    assert finite_bound.finite_bound(image, np.ones((3, 3)), f64)
    image[3, 4] = np.nan
    assert not finite_bound.finite_bound(image, np.ones((3, 3)), f64)


@pytest.mark.parametrize("dtype,k", [(np.float32, 15), (np.float64, 9)])
def test_opencv_dft_path_proves_finite_inputs_and_still_reports_overflow(dtype, k: int) -> None:
    import scipy.signal as ss

    x, h = RNG.standard_normal((120, 90)).astype(dtype), RNG.standard_normal((k, k)).astype(dtype)
    checked = FiniteCheck()
    result = direct.linear_region(x, h, (0, 1), [k // 2, k // 2], [120, 90], np.dtype(dtype), checked)
    assert checked.nonfinite is False
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(result, ss.convolve(x.astype(np.float64), h.astype(np.float64), "same"), atol=tolerance * np.abs(result).max())
    huge = np.clip(x, -1, 1) * dtype(np.finfo(dtype).max / 4)  # finite inputs whose convolution overflows
    assert np.isfinite(huge).all()
    result, info = convolve(huge, h, "same", "direct", return_info=True)
    assert NONFINITE_WARNING in info.warnings and not np.isfinite(result).all()
    x[60, 45] = np.nan  # NaN stays local: not OpenCV's DFT path
    result, info = convolve(x, h, "same", "direct", return_info=True)
    assert NONFINITE_WARNING in info.warnings and 0 < np.isnan(result).sum() <= k * k


def test_a_one_thread_request_checks_in_its_own_thread() -> None:
    from convserve_server.engine import resources

    x, h = RNG.standard_normal(N), RNG.standard_normal(3)
    checked = FiniteCheck()
    with resources.thread_share(1):
        direct.linear_region(x, h, (0,), [0], [N + 2], np.dtype(np.float64), checked)
    assert checked.nonfinite is False  # proven in this thread, in front of numpy (no second thread to run beside it)
    with resources.thread_share(1):
        x[7] = np.nan
        assert NONFINITE_WARNING in convolve(x, h, return_info=True)[1].warnings
