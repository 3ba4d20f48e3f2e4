"""Background FFTW planning: off by default; when on, new large shapes get MEASURE plans off the request path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.signal as ss

from convserve_server.engine import EngineConfig, convolve
from convserve_server.engine.fft import background, plans

RNG = np.random.default_rng(11)


def test_off_by_default_plans_nothing_in_the_background(engine_config: Callable[..., None], fft_backend: Callable[[str], None]) -> None:
    engine_config(fftw_background_planning_seconds=EngineConfig().fftw_background_planning_seconds)
    fft_backend("fftw")
    before = background.stats()
    convolve(RNG.standard_normal(70_001), RNG.standard_normal(301), method="fft")
    background.wait_idle()
    assert background.stats() == before


def test_a_new_large_shape_is_planned_once_then_its_estimate_plans_are_retired(engine_config: Callable[..., None], fft_backend: Callable[[str], None]) -> None:
    engine_config(fftw_background_planning_seconds=2.0)
    fft_backend("fftw")
    x, h = RNG.standard_normal((181, 197)), RNG.standard_normal((9, 8))  # a shape no other test uses
    expected = ss.fftconvolve(x, h)
    before = background.stats()["background_plans"]
    first = convolve(x, h, method="fft")
    background.wait_idle()
    planned = background.stats()["background_plans"] - before
    assert planned >= 2  # the forward and inverse transforms of this shape
    created = plans.stats()["plans_created"]
    second = convolve(x, h, method="fft")  # the retired plans are made anew, from the new wisdom
    assert plans.stats()["plans_created"] > created
    third = convolve(x, h, method="fft")
    background.wait_idle()
    assert background.stats()["background_plans"] - before == planned  # queued once per shape
    for result in (first, second, third):
        np.testing.assert_allclose(result, expected, atol=1e-10)


def test_small_shapes_are_not_queued(engine_config: Callable[..., None], fft_backend: Callable[[str], None]) -> None:
    engine_config(fftw_background_planning_seconds=2.0)
    fft_backend("fftw")
    before = background.stats()["background_plans"]
    convolve(RNG.standard_normal(1001), RNG.standard_normal(77), method="fft")
    background.wait_idle()
    assert background.stats()["background_plans"] == before


def test_retired_plans_are_not_cached_again() -> None:
    key = ("r2c", (4100,), np.dtype(np.float64).str, (0,), 1, "fftw")
    plan = plans.build("r2c", (4100,), np.float64, (0,), 1)
    plans.retire(key)
    plans.CACHE.give_back(plan)
    assert plans.CACHE.take(key) is None
