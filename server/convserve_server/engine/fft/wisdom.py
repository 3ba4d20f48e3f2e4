"""FFTW wisdom kept across restarts, and the lock that serialises FFTW's planner.

FFTW's planner (and its wisdom, which every plan adds to) is global and not thread safe, so plan
creation, wisdom import and wisdom export all hold :data:`PLANNER_LOCK`. The wisdom file is the
engine setting ``fftw_wisdom`` (``""`` for none): the server loads it at start and saves it at stop.
Its format is FFTW's three wisdom strings (double, single, long double) joined by
:data:`SEPARATOR`. Wisdom loaded from a file counts against the bound on planned shapes
(:mod:`convserve_server.engine.fft.budget`).
"""

from __future__ import annotations

import os
import threading

import pyfftw

from convserve_server.engine import config
from convserve_server.engine.fft import budget

PLANNER_LOCK = threading.Lock()
SEPARATOR = b"\n--convserve-wisdom--\n"
_STATS = {"wisdom_loaded": 0}


def wisdom_path() -> str | None:
    """The wisdom file of the engine setting ``fftw_wisdom``, or None."""
    return config.current().fftw_wisdom or None


def loaded() -> int:
    """Wisdom files loaded in this process."""
    return _STATS["wisdom_loaded"]


def sizes() -> list[int]:
    """Bytes of FFTW's accumulated wisdom per precision (double, single, long double)."""
    with PLANNER_LOCK:
        return [len(part) for part in pyfftw.export_wisdom()]


def load_wisdom(path: str | None = None) -> str:
    """Load FFTW wisdom from ``path`` (default: the ``fftw_wisdom`` setting) and say what happened.

    ``pyfftw.import_wisdom`` does not raise on bad wisdom: it returns one boolean per precision
    (double, single, long double), which are checked here.

    Returns
    -------
    str
        A one-line description for the server's log ("loaded ...", "no wisdom file ...", or
        "rejected ...").
    """
    path = path or wisdom_path()
    if not path:
        return "no wisdom file configured (CONVSERVE_FFTW_WISDOM)"
    if not os.path.exists(path):
        return f"no wisdom file at {path} yet"
    try:
        with open(path, "rb") as handle:
            parts = [bytes(p) for p in handle.read().split(SEPARATOR)]
        if len(parts) != 3:
            return f"rejected {path}: not a convserve wisdom file"
        with PLANNER_LOCK:
            accepted = pyfftw.import_wisdom(tuple(parts))
        budget.count_wisdom_file(sum(len(p) for p, ok in zip(parts, accepted) if ok))  # counts against the budget
    except OSError as exc:
        return f"rejected {path}: {exc}"
    names = ("double", "single", "long double")
    ok = [name for name, flag in zip(names, accepted) if flag]
    bad = [name for name, flag, part in zip(names, accepted, parts) if not flag and part]
    _STATS["wisdom_loaded"] += 1
    if bad:
        return f"loaded {path} partially: accepted {', '.join(ok) or 'none'}; rejected {', '.join(bad)}"
    return f"loaded {path}: {', '.join(ok) or 'empty'}"


def save_wisdom(path: str | None = None, timeout: float = -1) -> str | None:
    """Save FFTW's accumulated wisdom to ``path`` (default: the ``fftw_wisdom`` setting) atomically.

    ``timeout`` bounds the wait for the planner (a background MEASURE planning holds it for up to
    its time limit); a negative value waits as long as it takes.

    Returns
    -------
    str or None
        The path written, or None when no path is configured or the planner stayed busy.
    """
    path = path or wisdom_path()
    if not path:
        return None
    if not PLANNER_LOCK.acquire(timeout=timeout):
        return None
    try:
        parts = pyfftw.export_wisdom()
    finally:
        PLANNER_LOCK.release()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(SEPARATOR.join(parts))
    os.replace(temporary, path)
    return path
