"""Recipes that prove their result finite after computing it, OpenCV kernels with zero taps, the kernel
memo, and the FFT recipe for one short signal: each gives the full path's result and warnings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import convolve, correlate
from convserve_server.engine.info import NONFINITE_WARNING
from convserve_server.engine.signal import convolution, recipes

RNG = np.random.default_rng(31)


@pytest.fixture(autouse=True)
def no_recipes() -> Iterator[None]:
    """Each test starts and ends with no recipe remembered."""
    recipes.forget()
    yield
    recipes.forget()


@pytest.fixture
def planned(count_calls: Callable[[object, str], list[int]]) -> list[int]:
    """Counts the calls that went through the planner (the full path)."""
    return count_calls(convolution, "plan_signal_call")


def _warned(info: Any) -> bool:
    return NONFINITE_WARNING in info.warnings or any("NaN" in w for w in info.warnings)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_a_signal_recipe_finds_a_bad_value_anywhere_in_its_result(bad: float, where: str, planned: list[int]) -> None:
    x, h = RNG.standard_normal(5000), np.array([0.0, 1.0, 0.0])  # zero taps: numpy multiplies them too
    convolve(x, h, "same")
    x[{"first": 0, "last": -1, "middle": 2500}[where]] = bad
    result, info = convolve(x, h, "same", return_info=True)
    assert planned[0] == 2 and _warned(info)
    assert not np.isfinite(result).all()


def _full_path(function: Any, *args: Any) -> tuple[np.ndarray, Any]:
    """The full path's result and info for the same call (no recipe remembered)."""
    recipes.forget()
    return function(*args, return_info=True)


def test_a_nan_that_reaches_no_output_is_treated_as_the_full_path_treats_it(planned: list[int]) -> None:
    x = RNG.standard_normal((100, 120)).astype(np.float32)
    shift = np.zeros((3, 3), np.float32)
    shift[2, 2] = 1.0  # "same": output[a, b] = x[a - 1, b - 1], so x[-1, -1] reaches no output
    convolve(x, shift, "same")
    x[-1, -1] = np.nan
    result, info = convolve(x, shift, "same", return_info=True)
    assert planned[0] == 1  # the recipe ran: its result is finite
    np.testing.assert_array_equal(result[1:, 1:], x[:-1, :-1])
    full, full_info = _full_path(convolve, x, shift, "same")
    np.testing.assert_array_equal(result, full)
    assert info.warnings == full_info.warnings == ()  # a direct method warns of what its result holds


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_opencv_kernel_with_every_tap_finds_a_bad_value_in_its_result(bad: float, planned: list[int]) -> None:
    x = RNG.standard_normal((100, 120)).astype(np.float32)
    h = RNG.uniform(0.5, 1.0, (3, 3)).astype(np.float32)
    convolve(x, h, "same")
    x[-1, -1] = bad
    result, info = convolve(x, h, "same", return_info=True)
    assert planned[0] == 2 and _warned(info)
    assert not np.isfinite(result[-1, -1])


@pytest.mark.parametrize("function,reference", [(convolve, ss.convolve), (correlate, ss.correlate)])
def test_a_kernel_changed_in_place_is_seen(function: Any, reference: Any, planned: list[int]) -> None:
    x = RNG.standard_normal((90, 70))
    h = RNG.standard_normal((5, 5))
    function(x, h, "same")
    function(x, h, "same")
    h[...] = RNG.standard_normal((5, 5))  # the memo holds its own copy and compares bytes
    np.testing.assert_allclose(function(x, h, "same"), reference(x, h, "same", method="direct"), atol=1e-11)
    gauss = np.exp(-(np.linspace(-2, 2, 5) ** 2))
    h[...] = np.outer(gauss, gauss)  # now separable: two 1-D passes on the full path
    np.testing.assert_allclose(function(x, h, "same"), reference(x, h, "same", method="direct"), atol=1e-11)
    assert planned[0] == 2
    x[-1, -1] = np.nan
    h[...] = RNG.standard_normal((5, 5))
    result, info = function(x, h, "same", return_info=True)
    full, full_info = _full_path(function, x, h, "same")
    assert _warned(info) and info.warnings == full_info.warnings
    np.testing.assert_array_equal(result, full)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m,mode", [(1000, 1025, "full"), (1000, 1025, "same"), (3000, 400, "valid"), (4000, 900, "same")])
def test_a_short_signal_by_fft_runs_its_recipe(dtype: Any, n: int, m: int, mode: str, planned: list[int]) -> None:
    x, h = RNG.standard_normal(n).astype(dtype), RNG.standard_normal(m).astype(dtype)
    first = convolve(x, h, mode, "fft")
    again, info = convolve(x, h, mode, "fft", return_info=True)
    assert planned[0] == 1 and info.method == "fft" and info.warnings == ()
    assert again.dtype == first.dtype and again.shape == first.shape and again.flags.c_contiguous
    np.testing.assert_array_equal(again, first)
    scale = float(np.abs(first).max())
    np.testing.assert_allclose(again, ss.convolve(x.astype(np.float64), h.astype(np.float64), mode), atol=scale * (1e-5 if dtype == np.float32 else 1e-12))


@pytest.mark.parametrize("bad", [np.nan, np.inf, "huge"])
def test_an_fft_recipe_leaves_what_it_cannot_prove_to_the_full_path(bad: Any, planned: list[int]) -> None:
    x, h = RNG.standard_normal(1000), RNG.standard_normal(1025)
    convolve(x, h, method="fft")
    if bad == "huge":
        x[...] = np.finfo(np.float64).max / 16  # finite, but the transform's bound overflows
    else:
        x[500] = bad
    result, info = convolve(x, h, method="fft", return_info=True)
    assert planned[0] == 2
    if bad == "huge":
        assert not np.isfinite(result).all() and NONFINITE_WARNING in info.warnings
    else:
        assert any("spreads it over the output" in w for w in info.warnings)


def test_a_long_output_or_a_correlation_by_fft_has_no_recipe() -> None:
    x, h = RNG.standard_normal(40_000), RNG.standard_normal(2000)
    convolve(x, h, method="fft")
    correlate(x[:1000], h[:1025], method="fft")  # correlate's kernel is a flipped view, not in2
    assert not any(recipe.kind == "fft" for recipe in recipes._RECIPES.values())
    np.testing.assert_allclose(correlate(x[:1000], h[:1025], method="fft"), ss.correlate(x[:1000], h[:1025]), atol=1e-10)
