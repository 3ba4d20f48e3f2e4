"""The FFT plumbing follows the engine configuration: cache bound, time limit, threads, shape budget, wisdom file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convserve_server.engine.fft import budget, plans, wisdom
from convserve_server.engine.signal import cost_model


def test_the_cache_byte_bound_follows_the_configuration(engine_config: Callable[..., None]) -> None:
    with plans.plan("r2c", (4096,), np.dtype(np.float64), (0,)):
        pass
    assert plans.CACHE.nbytes > 0
    engine_config(fftw_cache_bytes=0)
    assert plans.CACHE.max_bytes == 0 and plans.CACHE.nbytes == 0 and len(plans.CACHE) == 0  # shrunk at once
    engine_config(fftw_cache_bytes=64 << 20)
    assert plans.CACHE.max_bytes == 64 << 20


def test_a_planning_time_limit_of_zero_means_no_limit(engine_config: Callable[..., None]) -> None:
    engine_config(fftw_planning_timelimit=0.0)
    assert plans.planning_timelimit() is None
    engine_config(fftw_planning_timelimit=-1.0)  # FFTW's own "no limit"
    assert plans.planning_timelimit() is None
    engine_config(fftw_planning_timelimit=1.5)
    assert plans.planning_timelimit() == 1.5


def test_threads_follow_the_setting_and_the_cost_models_threshold(engine_config: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    engine_config(fftw_threads=3)
    assert plans.max_threads() == 3
    monkeypatch.setitem(cost_model.constants(), "fftw_parallel_min_points", 1000.0)
    assert plans.threads_for(999) == 1 and plans.threads_for(1000) == 3


def test_the_shape_budget_is_the_configured_one(engine_config: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(budget._BUDGET, "from_file", 0)
    with plans.plan("r2c", (4096,), np.dtype(np.float64), (0,)):  # at least one shape planned
        pass
    engine_config(fftw_max_planned_shapes=budget.planned_shapes())
    assert not budget.admit(("r2c", (4099, 7), "<f8", (0,)))  # a new shape past the bound
    engine_config(fftw_max_planned_shapes=budget.planned_shapes() + 1)
    assert budget.admit(("r2c", (4099, 7), "<f8", (0,)))


def test_the_wisdom_file_is_the_configured_one(engine_config: Callable[..., None], tmp_path: Path) -> None:
    engine_config(fftw_wisdom="")
    assert wisdom.wisdom_path() is None and wisdom.save_wisdom() is None
    assert wisdom.load_wisdom().startswith("no wisdom file configured")
    path = str(tmp_path / "wisdom")
    engine_config(fftw_wisdom=path)
    assert wisdom.save_wisdom() == path and "file=" + path in plans.wisdom_state()
