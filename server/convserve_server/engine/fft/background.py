"""Background FFTW planning: patient plans for the shapes the request path planned in a hurry.

The request path plans with ``FFTW_ESTIMATE``: MEASURE planning of a new large shape takes
seconds to minutes here (see docs/engine.md). When background planning is on (the engine setting
``fftw_background_planning_seconds`` above 0), each new transform of at least :data:`MIN_POINTS`
points is queued once; one daemon thread plans it with ``FFTW_MEASURE`` bounded by that many
seconds, which leaves wisdom, then retires the cached ESTIMATE plans of that shape. The next call
of the shape makes an ESTIMATE plan from that wisdom (0.1 ms) that runs at MEASURE speed, and the
wisdom file keeps it across restarts.

Off by default (``0``): a planning thread uses a core for up to that many seconds per new shape,
and plan creation is serialised, so a request that needs a new plan meanwhile waits for it.

This module holds the queue and the thread only; :mod:`convserve_server.engine.fft.plans` submits
each new key together with the function that plans it patiently (so the dependency runs one way:
plans -> background).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from typing import Any

from convserve_server.engine import config

# Smaller transforms plan in well under a millisecond and ESTIMATE is close to MEASURE there.
MIN_POINTS = 1 << 15
# Shapes remembered as queued or planned (a bound on memory, not on correctness).
MAX_SEEN = 4096

Key = tuple[Any, ...]
Improve = Callable[[Key], None]

_QUEUE: queue.Queue[tuple[Key, Improve]] = queue.Queue()
_SEEN: set[Key] = set()
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None
_STATS = {"background_plans": 0}


def seconds() -> float:
    """Time limit of one background planning: the setting ``fftw_background_planning_seconds`` (0: off)."""
    return config.current().fftw_background_planning_seconds


def submit(key: Key, improve: Improve) -> None:
    """Queue a plan key ``(kind, shape, dtype, axes, threads)`` for patient planning, once.

    ``improve(key)`` runs on the planning thread: it plans the key with FFTW_MEASURE and retires
    the key's ESTIMATE plans; an exception leaves the ESTIMATE plans in use.
    """
    global _THREAD
    limit = seconds()
    if limit <= 0 or config.current().fftw_planner_effort != "FFTW_ESTIMATE" or math.prod(key[1]) < MIN_POINTS:
        return
    with _LOCK:
        if key in _SEEN or len(_SEEN) >= MAX_SEEN:
            return
        _SEEN.add(key)
        _QUEUE.put((key, improve))
        if _THREAD is None:
            _THREAD = threading.Thread(target=_work, name="convserve-fftw-planner", daemon=True)
            _THREAD.start()


def _work() -> None:
    """The planning thread: improve each queued shape in turn."""
    while True:
        key, improve = _QUEUE.get()
        try:
            improve(key)
            _STATS["background_plans"] += 1
        except Exception:  # noqa: BLE001 - a failed improvement leaves the ESTIMATE plan in use
            pass
        finally:
            _QUEUE.task_done()


def wait_idle() -> None:
    """Block until every queued shape is planned (benchmarks and tests)."""
    _QUEUE.join()


def stats() -> dict[str, int]:
    """Counters: shapes planned in the background, shapes waiting."""
    return dict(_STATS, background_queued=_QUEUE.qsize())
