"""Cached pyFFTW plans with their aligned buffers, and FFTW wisdom kept across restarts.

A plan is a ``pyfftw.FFTW`` object together with the aligned input and output arrays it was
planned for. Plans are cached per (kind, shape, dtype, axes, threads) in an LRU bounded by the
bytes of their buffers, so that a repeated shape neither plans nor faults fresh pages again
(DESIGN section 5). A caller *checks out* a plan for the duration of one transform and gives
it back; two concurrent calls of one shape get two plans, so execution runs in parallel (pyFFTW
releases the GIL) while plan creation is serialized by one lock (FFTW's planner is not thread
safe).

Settings (environment variables):

``CONVSERVE_FFTW_PLANNER_EFFORT``
    ``FFTW_ESTIMATE`` (default) or ``FFTW_MEASURE``/``FFTW_PATIENT``/``FFTW_EXHAUSTIVE``. An
    ESTIMATE plan still uses any wisdom a more patient planning left, so the request path never
    waits for MEASURE planning of a new shape, yet profits from wisdom made off that path.
``CONVSERVE_FFTW_PLANNING_TIMELIMIT``
    Seconds FFTW may spend planning one transform (default: no limit).
``CONVSERVE_FFTW_CACHE_BYTES``
    Bytes of idle plan buffers kept (default 512 MiB).
``CONVSERVE_FFTW_THREADS``
    Most threads one transform uses (default: every core).
``CONVSERVE_FFTW_WISDOM``
    A wisdom file the server loads at start and saves at stop (see :func:`load_wisdom`).
``CONVSERVE_FFTW_BACKGROUND_PLANNING_SECONDS``
    MEASURE planning of new large shapes off the request path (see :mod:`.fftw_background`).

Bound on caller-chosen shapes (:func:`configure`; :mod:`.fftw_budget` holds the rule): at most
``max_shapes`` distinct transforms are planned by FFTW in one process. Past the bound, a new
transform uses a plan made from existing wisdom if there is one (``FFTW_WISDOM_ONLY``, which adds
nothing), else numpy's pocketfft. The idle plan cache is bounded by bytes and by count
(:data:`DEFAULT_MAX_IDLE_PLANS`).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
import pyfftw

from convserve_server.engine.fft import budget as fftw_budget
from convserve_server.engine import resources
from convserve_server.engine.fft.budget import _BUDGET, DEFAULT_MAX_SHAPES, WISDOM_BYTES_PER_SHAPE, NumpyTransform, planned_shapes  # noqa: F401 (re-exported)

EFFORTS = ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")
DEFAULT_CACHE_BYTES = 512 << 20
DEFAULT_MAX_IDLE_PLANS = 1024

PLANNER_LOCK = threading.Lock()
_STATS = {"plans_created": 0, "plans_reused": 0, "wisdom_loaded": 0, "unplanned_transforms": 0}


def configure(max_shapes: int = DEFAULT_MAX_SHAPES, max_idle_plans: int = DEFAULT_MAX_IDLE_PLANS) -> None:
    """Set the most distinct transforms FFTW plans (setting ``fftw_max_planned_shapes``) and the most idle plans cached.

    The server calls it once at start; the engine never reads settings itself.
    """
    if max_idle_plans < 0:
        raise ValueError(f"max_idle_plans must be non-negative, got {max_idle_plans}")
    fftw_budget.set_max_shapes(max_shapes)
    CACHE.max_plans = max_idle_plans


def planner_effort() -> str:
    """Return the planner effort from ``CONVSERVE_FFTW_PLANNER_EFFORT`` (default FFTW_ESTIMATE)."""
    value = os.environ.get("CONVSERVE_FFTW_PLANNER_EFFORT", "FFTW_ESTIMATE").strip().upper()
    if not value.startswith("FFTW_"):
        value = "FFTW_" + value
    if value not in EFFORTS:
        raise ValueError(f"CONVSERVE_FFTW_PLANNER_EFFORT: expected one of {', '.join(EFFORTS)}; got {value!r}")
    return value


def planning_timelimit() -> float | None:
    """Return the planning time limit in seconds from ``CONVSERVE_FFTW_PLANNING_TIMELIMIT``."""
    value = os.environ.get("CONVSERVE_FFTW_PLANNING_TIMELIMIT")
    return float(value) if value else None


def max_threads() -> int:
    """Most FFTW threads per transform: ``CONVSERVE_FFTW_THREADS`` (default every core), capped
    by the current request's share of the cores (``resources.thread_share``)."""
    value = os.environ.get("CONVSERVE_FFTW_THREADS")
    configured = max(1, int(value)) if value else (os.cpu_count() or 1)
    return resources.thread_limit(configured)


def threads_for(points: int) -> int:
    """Threads for a transform of ``points`` points: one for small transforms, else all."""
    from convserve_server.engine.signal import cost_model as costs  # the calibrated threshold (costs imports this module's users)

    return max_threads() if points >= costs.constants()["fftw_parallel_min_points"] else 1


@dataclass
class Plan:
    """A planned transform with the buffers it runs on.

    Attributes
    ----------
    key : tuple
        The cache key (kind, shape, dtype, axes, threads).
    fftw : pyfftw.FFTW
        The plan; call ``execute()`` after filling ``input``.
    input, output : numpy.ndarray
        Aligned buffers; ``output`` is overwritten by each execution (unnormalised).
    nbytes : int
        Bytes of both buffers.
    """

    key: tuple[Any, ...]
    fftw: Any  # pyfftw.FFTW, or a fftw_budget.NumpyTransform past the shape budget
    input: npt.NDArray[Any]
    output: npt.NDArray[Any]
    nbytes: int
    generation: int = 0


# Bumped by :func:`retire` when better wisdom for a key exists: plans of older generations are
# dropped instead of being cached again.
_GENERATIONS: dict[tuple[Any, ...], int] = {}


def build(
    kind: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    axes: tuple[int, ...],
    threads: int,
    effort: str | None = None,
    timelimit: float | None = None,
    wisdom_only: bool = False,
) -> Plan:
    """Create a plan and its buffers (under the planner lock).

    Parameters
    ----------
    kind, shape, dtype, axes, threads
        As the cache key of :func:`plan`.
    effort : str, optional
        Planner flag; default :func:`planner_effort`.
    timelimit : float, optional
        Planning time limit in seconds; default :func:`planning_timelimit`.
    wisdom_only : bool
        Plan only from existing wisdom (adds none); RuntimeError when there is none.

    Returns
    -------
    Plan
    """
    dtype = np.dtype(dtype)
    inp, out = build_buffers(kind, shape, dtype, axes)
    direction = "FFTW_FORWARD" if kind in ("r2c", "c2c") else "FFTW_BACKWARD"
    flags = [effort or planner_effort()]
    if wisdom_only:
        flags.append("FFTW_WISDOM_ONLY")
    if kind == "c2r":
        flags.append("FFTW_DESTROY_INPUT")
    with PLANNER_LOCK:
        plan = pyfftw.FFTW(
            inp,
            out,
            axes=axes,
            direction=direction,
            flags=tuple(flags),
            threads=threads,
            planning_timelimit=timelimit if timelimit is not None else planning_timelimit(),
        )
        _STATS["plans_created"] += 1
    key = (kind, shape, dtype.str, axes, threads)
    return Plan(key, plan, inp, out, inp.nbytes + out.nbytes, _GENERATIONS.get(key, 0))


def retire(key: tuple[Any, ...]) -> None:
    """Drop the plans of ``key`` (idle now, checked out when given back): newer wisdom exists."""
    _GENERATIONS[key] = _GENERATIONS.get(key, 0) + 1
    CACHE.discard(key)


def _unplanned(kind: str, shape: tuple[int, ...], dtype: np.dtype[Any], axes: tuple[int, ...], threads: int) -> Plan:
    """A plan for a transform past the shape budget: from existing wisdom if FFTW has some, else numpy."""
    try:
        return build(kind, shape, dtype, axes, threads, effort="FFTW_ESTIMATE", wisdom_only=True)
    except RuntimeError:  # no wisdom for it: FFTW would add some
        pass
    like = build_buffers(kind, shape, dtype, axes)
    _STATS["unplanned_transforms"] += 1
    key = (kind, shape, np.dtype(dtype).str, axes, threads)
    return Plan(key, NumpyTransform(kind, like[0], like[1], axes), like[0], like[1], like[0].nbytes + like[1].nbytes, -1)


def build_buffers(kind: str, shape: tuple[int, ...], dtype: np.dtype[Any] | str, axes: tuple[int, ...]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The aligned input and output arrays of a transform (as :func:`build` makes them)."""
    dtype = np.dtype(dtype)
    complex_dtype = np.dtype(np.complex64 if dtype in (np.float32, np.complex64) else np.complex128)
    real_dtype = np.dtype(np.float32 if complex_dtype == np.complex64 else np.float64)
    half = list(shape)
    half[axes[-1]] = shape[axes[-1]] // 2 + 1
    if kind == "r2c":
        return pyfftw.empty_aligned(shape, real_dtype), pyfftw.empty_aligned(half, complex_dtype)
    if kind == "c2r":
        return pyfftw.empty_aligned(half, complex_dtype), pyfftw.empty_aligned(shape, real_dtype)
    return pyfftw.empty_aligned(shape, complex_dtype), pyfftw.empty_aligned(shape, complex_dtype)


class PlanCache:
    """An LRU of idle plans bounded by the bytes of their buffers and by their number.

    Parameters
    ----------
    max_bytes : int
        Idle plans beyond this many bytes are dropped, least recently used first.
    max_plans : int
        Idle plans beyond this many are dropped, least recently used first.
    """

    def __init__(self, max_bytes: int, max_plans: int = DEFAULT_MAX_IDLE_PLANS) -> None:
        self.max_bytes = max_bytes
        self.max_plans = max_plans
        self._idle: OrderedDict[tuple[Any, ...], list[Plan]] = OrderedDict()
        self._bytes = 0
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by idle plans."""
        return self._bytes

    def take(self, key: tuple[Any, ...]) -> Plan | None:
        """Remove and return an idle plan for ``key``, or None."""
        with self._lock:
            plans = self._idle.get(key)
            if not plans:
                return None
            plan = plans.pop()
            if not plans:
                del self._idle[key]
            self._bytes -= plan.nbytes
            self._count -= 1
            _STATS["plans_reused"] += 1
            return plan

    def give_back(self, plan: Plan) -> None:
        """Return a plan to the cache, evicting the least recently used beyond the bound."""
        if plan.nbytes > self.max_bytes or self.max_plans < 1 or plan.generation != _GENERATIONS.get(plan.key, 0):
            return
        with self._lock:
            self._idle.setdefault(plan.key, []).append(plan)
            self._idle.move_to_end(plan.key)
            self._bytes += plan.nbytes
            self._count += 1
            while (self._bytes > self.max_bytes or self._count > self.max_plans) and self._idle:
                key, plans = next(iter(self._idle.items()))
                self._bytes -= plans.pop(0).nbytes
                self._count -= 1
                if not plans:
                    del self._idle[key]

    def discard(self, key: tuple[Any, ...]) -> None:
        """Drop the idle plans of ``key``."""
        with self._lock:
            for dropped in self._idle.pop(key, []):
                self._bytes -= dropped.nbytes
                self._count -= 1

    def clear(self) -> None:
        """Drop every idle plan."""
        with self._lock:
            self._idle.clear()
            self._bytes = 0
            self._count = 0


CACHE = PlanCache(int(os.environ.get("CONVSERVE_FFTW_CACHE_BYTES", DEFAULT_CACHE_BYTES)))


@contextmanager
def plan(kind: str, shape: tuple[int, ...], dtype: np.dtype[Any], axes: tuple[int, ...]) -> Iterator[Plan]:
    """Check out a plan for one transform; it returns to the cache afterwards.

    Parameters
    ----------
    kind : {"r2c", "c2r", "c2c", "c2c_inverse"}
        Real-to-complex forward, complex-to-real inverse, or complex forward/inverse.
    shape : tuple of int
        The real (or complex) array's shape in the time domain.
    dtype : numpy.dtype
        The working dtype; single precision plans for float32/complex64.
    axes : tuple of int
        Axes transformed (non-negative); the last one is halved for real transforms.

    Yields
    ------
    Plan
        Fill ``plan.input``, call ``plan.fftw.execute()``, read ``plan.output``.
    """
    threads = threads_for(math.prod(shape))
    key = (kind, tuple(shape), np.dtype(dtype).str, tuple(axes), threads)
    current = CACHE.take(key)
    if current is None:
        if fftw_budget.admit(key[:4]):
            current = build(kind, tuple(shape), np.dtype(dtype), tuple(axes), threads)
            from convserve_server.engine.fft import background as fftw_background  # imports this module

            fftw_background.submit(key)
        else:
            current = _unplanned(kind, tuple(shape), np.dtype(dtype), tuple(axes), threads)
    try:
        yield current
    finally:
        CACHE.give_back(current)


def stats() -> dict[str, int]:
    """Counters: plans created, plans reused from the cache, wisdom files loaded, transforms run by
    numpy past the shape budget; idle plans cached (bytes, count); shapes planned."""
    return dict(_STATS, cache_bytes=CACHE.nbytes, cache_plans=len(CACHE), planned_shapes=planned_shapes())


def wisdom_path() -> str | None:
    """The wisdom file named by ``CONVSERVE_FFTW_WISDOM``, or None."""
    return os.environ.get("CONVSERVE_FFTW_WISDOM") or None


def load_wisdom(path: str | None = None) -> str:
    """Load FFTW wisdom from ``path`` (default ``CONVSERVE_FFTW_WISDOM``) and say what happened.

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
            parts = [bytes(p) for p in handle.read().split(b"\n--convserve-wisdom--\n")]
        if len(parts) != 3:
            return f"rejected {path}: not a convserve wisdom file"
        with PLANNER_LOCK:
            accepted = pyfftw.import_wisdom(tuple(parts))
        fftw_budget.count_wisdom_file(sum(len(p) for p, ok in zip(parts, accepted) if ok))  # counts against the budget
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
    """Save FFTW's accumulated wisdom to ``path`` (default ``CONVSERVE_FFTW_WISDOM``) atomically.

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
        handle.write(b"\n--convserve-wisdom--\n".join(parts))
    os.replace(temporary, path)
    return path


def wisdom_state() -> str:
    """A one-line summary of FFTW's wisdom and the plan cache, for server-info and logs."""
    with PLANNER_LOCK:
        sizes = [len(p) for p in pyfftw.export_wisdom()]
    s = stats()
    from convserve_server.engine.fft import background as fftw_background

    background = fftw_background.stats()
    return (
        f"effort={planner_effort()} wisdom_bytes(double,single)={sizes[0]},{sizes[1]} "
        f"plans_created={s['plans_created']} plans_reused={s['plans_reused']} "
        f"cache_bytes={s['cache_bytes']} background_plans={background['background_plans']} "
        f"background_queued={background['background_queued']} file={wisdom_path() or '-'}"
    )
