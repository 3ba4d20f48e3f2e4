"""Remembered recipes: a repeated small direct call skips the layers, with the same result and the same warnings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import InvalidArgumentError, convolve, correlate, resources
from convserve_server.engine.info import NONFINITE_WARNING
from convserve_server.engine.signal import convolution, cost_model, recipes

RNG = np.random.default_rng(23)

CASES = [
    ((512, 512), (3, 3), "same", np.float32),
    ((300, 200), (7, 5), "same", np.float64),
    ((64, 80), (9, 11), "same", np.float32),
    ((1000,), (3,), "full", np.float64),
    ((1000,), (4,), "same", np.float32),
    ((1000,), (3,), "valid", np.float64),
    ((1000,), (64,), "full", np.float64),  # past OpenCV's summed kernels: numpy.convolve
    ((2000,), (150,), "same", np.float32),
    ((1000,), (200,), "valid", np.float64),
]


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


@pytest.mark.parametrize("function,reference", [(convolve, ss.convolve), (correlate, ss.correlate)])
@pytest.mark.parametrize("x_shape,h_shape,mode,dtype", CASES)
def test_a_repeated_call_runs_its_recipe_with_the_full_paths_result(
    function: Any, reference: Any, x_shape: tuple[int, ...], h_shape: tuple[int, ...], mode: str, dtype: Any, planned: list[int]
) -> None:
    x, h = RNG.standard_normal(x_shape).astype(dtype), RNG.standard_normal(h_shape).astype(dtype)
    full = function(x, h, mode)
    assert planned[0] == 1
    again, info = function(x, h, mode, return_info=True)
    assert planned[0] == 1  # no planning: the recipe ran
    assert info.method == "direct" and info.warnings == ()
    assert again.dtype == full.dtype and again.shape == full.shape and again.flags.c_contiguous
    np.testing.assert_array_equal(again, full)  # the same compiled call with the same arguments
    expected = reference(x.astype(np.float64), h.astype(np.float64), mode)
    np.testing.assert_allclose(again, expected, atol=1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("x_shape,h_shape,mode,dtype", CASES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, "huge"])
def test_values_a_recipe_cannot_prove_finite_go_the_full_way_and_are_warned_about(
    x_shape: tuple[int, ...], h_shape: tuple[int, ...], mode: str, dtype: Any, bad: Any, planned: list[int]
) -> None:
    x, h = RNG.standard_normal(x_shape).astype(dtype), RNG.standard_normal(h_shape).astype(dtype)
    convolve(x, h, mode)
    spot = tuple(n // 2 for n in x_shape)
    if bad == "huge":
        x[...] = np.finfo(dtype).max / 4
        h = np.abs(h) + 1  # every partial sum overflows
    else:
        x[spot] = bad
    result, info = convolve(x, h, mode, return_info=True)
    assert planned[0] == 2  # planned again: the recipe proved nothing
    assert NONFINITE_WARNING in info.warnings or any("NaN" in w for w in info.warnings)
    assert not np.isfinite(result).all()
    if bad is np.nan:  # direct keeps a NaN local: it reaches at most one output per kernel tap
        assert 0 < np.isnan(result).sum() <= np.prod(h_shape)


def test_a_kernel_that_became_separable_runs_as_two_passes(planned: list[int]) -> None:
    x = RNG.standard_normal((200, 240)).astype(np.float32)
    convolve(x, RNG.standard_normal((7, 7)).astype(np.float32), "same")
    gauss = np.exp(-(np.linspace(-2, 2, 7) ** 2))
    h = np.outer(gauss, gauss).astype(np.float32)
    result = convolve(x, h, "same")
    assert planned[0] == 2
    np.testing.assert_allclose(result, ss.convolve(x.astype(np.float64), h.astype(np.float64), "same"), atol=1e-4)


def test_non_contiguous_inputs_go_the_full_way(planned: list[int]) -> None:
    x = RNG.standard_normal((128, 96))
    h = RNG.standard_normal((3, 3))
    convolve(x, h, "same")
    transposed = np.asfortranarray(x)  # the same signature, another layout
    result = convolve(transposed, h, "same")
    assert planned[0] == 2
    np.testing.assert_allclose(result, ss.convolve(x, h, "same"), atol=1e-11)


def test_new_constants_and_another_thread_share_make_new_recipes(planned: list[int]) -> None:
    x, h = RNG.standard_normal((100, 100)), RNG.standard_normal((3, 3))
    convolve(x, h, "same")
    convolve(x, h, "same")
    assert planned[0] == 1
    with resources.thread_share(1):
        convolve(x, h, "same")
    assert planned[0] == 2
    cost_model.load()  # the constants again: what auto chose may have changed
    convolve(x, h, "same")
    assert planned[0] == 3


@pytest.mark.parametrize(
    "options",
    [
        dict(axes=(0, 1)),
        dict(boundary="reflect"),
        dict(fill_value=0.0),
        dict(output_dtype=np.float64),
        dict(mode=np.str_("same")),
    ],
)
def test_calls_with_other_options_never_have_a_recipe(options: dict[str, Any]) -> None:
    x, h = RNG.standard_normal((50, 60)), RNG.standard_normal((3, 3))
    arguments = dict(mode="same", method="auto", axes=None, boundary="fill", fill_value=0, output_dtype=None) | options
    assert recipes.attempt(x, h, correlate=False, **arguments) == (None, None, "")
    convolve(x, h, **arguments)
    convolve(x, h, **arguments)
    assert not recipes._RECIPES


@pytest.mark.parametrize("options", [dict(mode=["same"]), dict(boundary=np.array(["fill"])), dict(fill_value=np.zeros(3))])
def test_odd_option_types_still_get_the_planners_errors(options: dict[str, Any]) -> None:
    x, h = RNG.standard_normal((50, 60)), RNG.standard_normal((3, 3))
    convolve(x, h, "same")
    with pytest.raises(InvalidArgumentError):
        convolve(x, h, **({"mode": "same"} | options))


def test_lists_and_integers_take_the_full_path() -> None:
    assert recipes.attempt([1.0, 2.0], [1.0], "full", "auto", None, "fill", 0, None, False) == (None, None, "")
    x = RNG.integers(0, 9, (40, 40))
    convolve(x, np.ones((3, 3), int), "same")
    convolve(x, np.ones((3, 3), int), "same")
    assert not recipes._RECIPES  # exact integers have their own path


def test_one_signal_on_opencvs_row_filter_has_no_recipe() -> None:
    x, h = RNG.standard_normal(5000), RNG.standard_normal(20)  # 9 to 49 taps: OpenCV's row filter
    convolve(x, h, method="direct")
    convolve(x, h, method="direct")
    assert not recipes._RECIPES
