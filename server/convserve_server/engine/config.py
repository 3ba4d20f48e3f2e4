"""The engine's configuration: one object, set once by whoever runs the engine.

The server builds an :class:`EngineConfig` from its settings at start and calls
:func:`convserve_server.engine.configure` (which lands in :func:`configure` here); a program
that uses the engine as a library may do the same, or keep the defaults. Engine modules read
the current values with :func:`current` (one attribute lookup) where they use them; a module
that holds state sized by a value (the plan cache's byte bound) registers a
callback with :func:`on_change`, which is called with the new configuration. No engine module
reads environment variables: the settings layer of the server is the only place that does.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

MIB = 1 << 20
FFTW_EFFORTS = ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of the engine; the server's settings of the same names fill it.

    Attributes
    ----------
    fftw_threads
        Most threads one transform uses.
    fftw_planner_effort
        FFTW planner flag for plans made on the request path (one of :data:`FFTW_EFFORTS`).
    fftw_planning_timelimit
        Seconds FFTW may spend planning one transform; 0 or less means no limit (FFTW's own -1).
    fftw_cache_bytes
        Bytes of idle plan buffers kept for reuse.
    fftw_max_planned_shapes
        Distinct transforms FFTW plans (and keeps wisdom for) in one process.
    fftw_background_planning_seconds
        FFTW_MEASURE time limit per new large shape, planned off the request path (0: off).
    fftw_wisdom
        Wisdom file loaded at start and saved at stop ("" for none).
    calibration
        Cost-model constants file written by ``convserve calibrate`` ("" for the default path).
    layer_cache_weights
        Inline ConvLayer weights whose prepared forms are kept (0 disables the cache).
    layer_cache_bytes
        Bytes those prepared forms may hold together.
    layer_onnxruntime
        Whether float32 ConvLayer calls may run on ONNX Runtime.
    layer_ort_spin
        Whether ONNX Runtime's intra-op threads spin between runs (faster calls, busier cores).
    """

    fftw_threads: int = os.cpu_count() or 1
    fftw_planner_effort: str = "FFTW_ESTIMATE"
    fftw_planning_timelimit: float = 0.0
    fftw_cache_bytes: int = 512 * MIB
    fftw_max_planned_shapes: int = 512
    fftw_background_planning_seconds: float = 0.0
    fftw_wisdom: str = ""
    calibration: str = ""
    layer_cache_weights: int = 16
    layer_cache_bytes: int = 256 * MIB
    layer_onnxruntime: bool = True
    layer_ort_spin: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "fftw_planner_effort", planner_effort(self.fftw_planner_effort))
        for name in ("fftw_threads", "fftw_max_planned_shapes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("fftw_cache_bytes", "fftw_background_planning_seconds", "layer_cache_weights", "layer_cache_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def planner_effort(text: str) -> str:
    """The FFTW flag of an effort name, with or without its prefix in any case (``measure``: ``FFTW_MEASURE``)."""
    value = text.strip().upper()
    value = value if value.startswith("FFTW_") else "FFTW_" + value
    if value not in FFTW_EFFORTS:
        raise ValueError(f"fftw_planner_effort must be one of {', '.join(FFTW_EFFORTS)}, got {text!r}")
    return value


FIELDS: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(EngineConfig))


def from_settings(settings: object) -> EngineConfig:
    """The configuration named by an object's attributes of the same names (the server's settings)."""
    return EngineConfig(**{name: getattr(settings, name) for name in FIELDS})


_current = EngineConfig()
_listeners: list[Callable[[EngineConfig], None]] = []
_lock = threading.Lock()


def current() -> EngineConfig:
    """The configuration in force."""
    return _current


def configure(config: EngineConfig) -> None:
    """Put ``config`` in force and tell every registered listener, in registration order."""
    global _current
    with _lock:
        _current = config
        listeners = list(_listeners)
    for listener in listeners:
        listener(config)


def on_change(listener: Callable[[EngineConfig], None]) -> None:
    """Call ``listener(config)`` on every later :func:`configure` (a module's state sized by a value)."""
    with _lock:
        _listeners.append(listener)
