"""Fixtures of these engine tests: engine settings changed for one test only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from convserve_server import engine
from convserve_server.engine import config
from convserve_server.engine.fft import ducc
from convserve_server.engine.signal import cost_model


@pytest.fixture
def engine_config() -> Iterator[Callable[..., None]]:
    """``engine_config(fftw_planner_effort=..., layer_onnxruntime=False)`` puts engine settings in force; the old configuration returns after the test."""
    saved = config.current()

    def change(**values: Any) -> None:
        engine.configure(dataclasses.replace(config.current(), **values))

    try:
        yield change
    finally:
        engine.configure(saved)


@pytest.fixture
def fft_backend(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``fft_backend("fftw")`` makes the cost model choose that FFT backend for every float call
    (the other backend's transforms are predicted a million times slower) for one test only."""

    def force(name: str) -> None:
        constants = cost_model.constants()
        for other in ducc.BACKENDS:
            if other != name:
                for shape_class in cost_model.SHAPE_CLASSES:
                    key = f"{other}_{shape_class}_per_point_log"
                    monkeypatch.setitem(constants, key, constants[key] * 1e6)

    return force


@pytest.fixture
def count_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, str], list[int]]:
    """``count_calls(module, "name")`` wraps ``module.name`` to count its calls for one test and returns the counter (``counter[0]``)."""

    def install(module: object, name: str) -> list[int]:
        count = [0]
        original = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
        return count

    return install
