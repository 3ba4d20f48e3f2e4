"""Fixtures of these engine tests: engine settings changed for one test only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from convserve_server import engine
from convserve_server.engine import config


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
