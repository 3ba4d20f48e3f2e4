"""Background FFTW planning: off by default; when on, new large shapes get MEASURE plans off the request path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import EngineConfig, convolve
from convserve_server.engine.fft import background, plans, rival

RNG = np.random.default_rng(11)
REAL_CHECK = rival.ducc0_faster  # the fixture below replaces it in most tests


@pytest.fixture(autouse=True)
def fftw_keeps_its_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests follow FFTW's own plans: the timed check against ducc0 always lets FFTW keep them."""
    monkeypatch.setattr(rival, "ducc0_faster", lambda *plan: False)


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


def test_a_patient_plan_that_loses_to_ducc0_hands_its_transform_to_ducc0(
    engine_config: Callable[..., None], fft_backend: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine_config(fftw_background_planning_seconds=2.0)
    fft_backend("fftw")
    judged: list[tuple[object, ...]] = []

    def ducc0_wins(key: tuple[object, ...], *buffers: object) -> bool:
        judged.append(key)
        return True

    monkeypatch.setattr(rival, "ducc0_faster", ducc0_wins)
    x, h = RNG.standard_normal((173, 211)), RNG.standard_normal((7, 9))  # a shape no other test uses
    expected = ss.fftconvolve(x, h)
    first = convolve(x, h, method="fft")
    background.wait_idle()
    assert judged and all(key[-1] == "fftw" for key in judged)
    made = plans.stats()["ducc0_plans"]
    second = convolve(x, h, method="fft")
    assert plans.stats()["ducc0_plans"] > made  # the FFTW-chosen transforms now run on ducc0 buffers
    with plans.plan(*judged[0][:4]) as plan:
        assert plan.key[-1] == "ducc0"
    for result in (first, second):
        np.testing.assert_allclose(result, expected, atol=1e-10)


class _Repeated:
    """A transform run ``times`` times per call: a backend made much slower than the other, whatever the machine."""

    def __init__(self, execute: Callable[[], object], times: int) -> None:
        self.run, self.times = execute, times

    def execute(self) -> None:
        for _ in range(self.times):
            self.run()


def test_the_timed_check_finds_the_faster_backend_on_the_patient_plans_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    timed_check = REAL_CHECK
    patient = plans.build("c2r", (96, 100), np.float64, (0, 1), 1, effort="FFTW_ESTIMATE")
    assert timed_check(patient.key, _Repeated(patient.fftw.execute, 30), patient.input, patient.output) is True
    original = rival.ducc.DuccTransform.execute
    monkeypatch.setattr(rival.ducc.DuccTransform, "execute", lambda self: _Repeated(lambda: original(self), 30).execute())
    assert timed_check(patient.key, patient.fftw, patient.input, patient.output) is False
    assert np.isfinite(patient.output).all()  # the runs read finite values, even after c2r destroyed its input


class _Everything(set):  # type: ignore[type-arg]
    """A set that holds every transform: as if each patient FFTW plan had lost to ducc0."""

    def __contains__(self, item: object) -> bool:
        return True


def test_exact_integer_transforms_stay_on_fftw_where_ducc0_timed_faster(fft_backend: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    fft_backend("fftw")
    monkeypatch.setattr(rival, "DUCC0_FASTER", _Everything())
    x, h = RNG.integers(-1000, 1000, 3011), RNG.integers(-1000, 1000, 263)  # shapes no other test uses
    made = plans.stats()["ducc0_plans"]
    np.testing.assert_array_equal(convolve(x, h, method="fft"), np.convolve(x, h))  # exact, on FFTW's proven path
    assert plans.stats()["ducc0_plans"] == made
    floats = convolve(x.astype(np.float64), h.astype(np.float64), method="fft")
    assert plans.stats()["ducc0_plans"] > made  # float transforms of the same shapes go to ducc0
    np.testing.assert_allclose(floats, np.convolve(x, h), atol=1e-6)
