"""Background FFTW planning: patient plans for the shapes the request path planned in a hurry.

The request path plans with ``FFTW_ESTIMATE`` (DESIGN section 5: MEASURE planning of a new large
shape takes seconds to minutes here). When background planning is on, each new transform of at
least :data:`MIN_POINTS` points is queued once; one daemon thread plans it with ``FFTW_MEASURE``
bounded by ``CONVSERVE_FFTW_BACKGROUND_PLANNING_SECONDS``, which leaves wisdom, then retires the
cached ESTIMATE plans of that shape. The next call of the shape makes an ESTIMATE plan from that
wisdom (0.1 ms) that runs at MEASURE speed, and the wisdom file keeps it across restarts.

Off by default (``0``): a planning thread uses a core for up to that many seconds per new shape,
and plan creation is serialised, so a request that needs a new plan meanwhile waits for it.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from typing import Any

from convserve_server.engine.fft import plans as fftw_plans

# Smaller transforms plan in well under a millisecond and ESTIMATE is close to MEASURE there.
MIN_POINTS = 1 << 15
# Shapes remembered as queued or planned (a bound on memory, not on correctness).
MAX_SEEN = 4096

Key = tuple[Any, ...]

_QUEUE: queue.Queue[Key] = queue.Queue()
_SEEN: set[Key] = set()
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None
_STATS = {"background_plans": 0}


def seconds() -> float:
    """Time limit of one background planning from ``CONVSERVE_FFTW_BACKGROUND_PLANNING_SECONDS`` (0: off)."""
    value = os.environ.get("CONVSERVE_FFTW_BACKGROUND_PLANNING_SECONDS", "").strip()
    return max(0.0, float(value)) if value else 0.0


def submit(key: Key) -> None:
    """Queue a plan key ``(kind, shape, dtype, axes, threads)`` for patient planning, once."""
    global _THREAD
    limit = seconds()
    if limit <= 0 or fftw_plans.planner_effort() != "FFTW_ESTIMATE" or math.prod(key[1]) < MIN_POINTS:
        return
    with _LOCK:
        if key in _SEEN or len(_SEEN) >= MAX_SEEN:
            return
        _SEEN.add(key)
        _QUEUE.put(key)
        if _THREAD is None:
            _THREAD = threading.Thread(target=_work, name="convserve-fftw-planner", daemon=True)
            _THREAD.start()


def _work() -> None:
    """The planning thread: MEASURE each queued shape, then retire its ESTIMATE plans."""
    while True:
        kind, shape, dtype, axes, threads = _QUEUE.get()
        try:
            fftw_plans.build(kind, shape, dtype, axes, threads, effort="FFTW_MEASURE", timelimit=seconds() or None)
            fftw_plans.retire((kind, shape, dtype, axes, threads))
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
