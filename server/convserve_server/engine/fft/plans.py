"""Cached pyFFTW plans with their aligned buffers: the plan cache and the checkout of one plan.

A plan is a ``pyfftw.FFTW`` object together with the aligned input and output arrays it was
planned for. Plans are cached per (kind, shape, dtype, axes, threads) in an LRU bounded by the
bytes of their buffers, so that a repeated shape neither plans nor faults fresh pages again
(reusing the buffers avoids the page first-touch cost; see docs/engine.md). A caller *checks out*
a plan for the duration of one transform and gives it back; two concurrent calls of one shape get
two plans, so execution runs in parallel (pyFFTW releases the GIL) while plan creation is
serialized by one lock (FFTW's planner is not thread safe: :data:`wisdom.PLANNER_LOCK`).

Engine settings (:mod:`convserve_server.engine.config`), read where they are used:

``fftw_planner_effort``
    ``FFTW_ESTIMATE`` (default) or ``FFTW_MEASURE``/``FFTW_PATIENT``/``FFTW_EXHAUSTIVE``. An
    ESTIMATE plan still uses any wisdom a more patient planning left, so the request path never
    waits for MEASURE planning of a new shape, yet profits from wisdom made off that path.
``fftw_planning_timelimit``
    Seconds FFTW may spend planning one transform (0: no limit).
``fftw_cache_bytes``
    Bytes of idle plan buffers kept (default 512 MiB); the cache follows a new configuration.
``fftw_threads``
    Most threads one transform uses (default: every core).
``fftw_wisdom``
    A wisdom file the server loads at start and saves at stop (:mod:`.wisdom`).
``fftw_background_planning_seconds``
    MEASURE planning of new large shapes off the request path (:mod:`.background`).

Bound on caller-chosen shapes (``fftw_max_planned_shapes``; :mod:`.budget` holds the rule): at
most that many distinct transforms are planned by FFTW in one process. Past the bound, a new
transform uses a plan made from existing wisdom if there is one (``FFTW_WISDOM_ONLY``, which adds
nothing), else numpy's pocketfft. The idle plan cache is bounded by bytes and by count
(:data:`DEFAULT_MAX_IDLE_PLANS`, :func:`set_max_idle_plans`).

The points from which a transform uses more than one thread are a calibrated constant of the
signal cost model, which registers where to read it with :func:`set_parallel_threshold` (this
module imports nothing of the signal code).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
import pyfftw

from convserve_server.engine import config, resources
from convserve_server.engine.fft import background, budget, ducc, rival, wisdom
from convserve_server.engine.fft.budget import NumpyTransform, planned_shapes

DEFAULT_MAX_IDLE_PLANS = 1024

_STATS = {"plans_created": 0, "plans_reused": 0, "unplanned_transforms": 0, "ducc0_plans": 0}
# Where :func:`threads_for` reads the points from which threads pay off, per backend (1 thread until registered).
_PARALLEL_MIN_POINTS: dict[str, Callable[[], float]] = {name: lambda: math.inf for name in ducc.BACKENDS}


def set_max_idle_plans(max_idle_plans: int) -> None:
    """Set the most idle plans the cache keeps (default :data:`DEFAULT_MAX_IDLE_PLANS`)."""
    if max_idle_plans < 0:
        raise ValueError(f"max_idle_plans must be non-negative, got {max_idle_plans}")
    CACHE.max_plans = max_idle_plans


def set_parallel_threshold(source: Callable[[], float], backend: str = ducc.FFTW) -> None:
    """Read the points from which a transform of ``backend`` uses more than one thread from ``source()``.

    The signal cost model registers its calibrated ``fftw_parallel_min_points`` and
    ``ducc0_parallel_min_points`` here when it is imported; until then every transform uses one thread.
    """
    _PARALLEL_MIN_POINTS[backend] = source


def planner_effort() -> str:
    """The planner effort of the request path: the setting ``fftw_planner_effort`` (default FFTW_ESTIMATE)."""
    return config.current().fftw_planner_effort


def planning_timelimit() -> float | None:
    """The planning time limit in seconds (setting ``fftw_planning_timelimit``), None for no limit."""
    limit = config.current().fftw_planning_timelimit
    return limit if limit > 0 else None


def max_threads() -> int:
    """Most FFTW threads per transform: the setting ``fftw_threads`` (default every core), capped
    by the current request's share of the cores (``resources.thread_share``)."""
    return resources.thread_limit(config.current().fftw_threads)


def threads_for(points: int, backend: str = ducc.FFTW) -> int:
    """Threads for a transform of ``points`` points by ``backend``: one for small transforms, else all."""
    return max_threads() if points >= _PARALLEL_MIN_POINTS[backend]() else 1


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
    fftw: Any  # pyfftw.FFTW, or a budget.NumpyTransform past the shape budget
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
    with wisdom.PLANNER_LOCK:
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
    key = (kind, shape, dtype.str, axes, threads, ducc.FFTW)
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
    key = (kind, shape, np.dtype(dtype).str, axes, threads, ducc.FFTW)
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
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used idle plans beyond the bounds (the lock held)."""
        while (self._bytes > self.max_bytes or self._count > self.max_plans) and self._idle:
            key, plans = next(iter(self._idle.items()))
            self._bytes -= plans.pop(0).nbytes
            self._count -= 1
            if not plans:
                del self._idle[key]

    def resize(self, max_bytes: int) -> None:
        """Bound the idle plans by ``max_bytes`` from now on, dropping the least recently used beyond it."""
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

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


CACHE = PlanCache(config.current().fftw_cache_bytes)
config.on_change(lambda new: CACHE.resize(new.fftw_cache_bytes))


@contextmanager
def plan(kind: str, shape: tuple[int, ...], dtype: np.dtype[Any], axes: tuple[int, ...], backend: str = ducc.FFTW) -> Iterator[Plan]:
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
    backend : {"fftw", "ducc0"}
        Who transforms: an FFTW plan, or a ducc0 call between the same kind of cached buffers
        (no planning, no wisdom, outside the shape budget).

    Yields
    ------
    Plan
        Fill ``plan.input``, call ``plan.fftw.execute()``, read ``plan.output``.
    """
    threads = threads_for(math.prod(shape), backend)
    key = (kind, tuple(shape), np.dtype(dtype).str, tuple(axes), threads, backend)
    if backend == ducc.FFTW and rival.prefers_ducc0(key[:5]):  # timed on this host: ducc0 beat the patient plan
        key = key[:5] + (ducc.DUCC0,)
        backend = ducc.DUCC0
    current = CACHE.take(key)
    if current is None:
        if backend == ducc.DUCC0:
            current = _ducc_plan(key)
        elif budget.admit(key[:4]):
            current = build(kind, tuple(shape), np.dtype(dtype), tuple(axes), threads)
            background.submit(key, _plan_patiently)
        else:
            current = _unplanned(kind, tuple(shape), np.dtype(dtype), tuple(axes), threads)
    try:
        yield current
    finally:
        CACHE.give_back(current)


def _ducc_plan(key: tuple[Any, ...]) -> Plan:
    """A ducc0 "plan" for ``key``: aligned buffers and the ducc0 call between them."""
    kind, shape, dtype, axes, threads, _ = key
    inp, out = build_buffers(kind, shape, dtype, axes)
    _STATS["ducc0_plans"] += 1
    return Plan(key, ducc.DuccTransform(kind, inp, out, axes, threads), inp, out, inp.nbytes + out.nbytes)


def _plan_patiently(key: tuple[Any, ...]) -> None:
    """Plan ``key`` with FFTW_MEASURE (leaving wisdom), then retire its ESTIMATE plans (background thread).

    The patient plan is then timed against ducc0 on the same buffers (:func:`.rival.ducc0_faster`); when
    ducc0 wins, this transform runs on ducc0 from now on. FFTW's MEASURE keeps the fastest plan *as
    it timed it*, and planning beside other work can keep a slow one: measured here, the same
    576^2 float32 forward and inverse pair took 0.55 ms in some processes and 0.99-1.05 ms in
    others, each stable within its process, where ducc0 took 0.70 ms in all.
    """
    kind, shape, dtype, axes, threads, _ = key
    patient = build(kind, shape, dtype, axes, threads, effort="FFTW_MEASURE", timelimit=background.seconds() or None)
    if rival.ducc0_faster(patient.key, patient.fftw, patient.input, patient.output):
        rival.DUCC0_FASTER.add(key[:5])
    retire(key)


def stats() -> dict[str, int]:
    """Counters: plans created, plans reused from the cache, wisdom files loaded, transforms run by
    numpy past the shape budget, ducc0 buffers made; idle plans cached (bytes, count); shapes planned."""
    return {
        "plans_created": _STATS["plans_created"],
        "plans_reused": _STATS["plans_reused"],
        "wisdom_loaded": wisdom.loaded(),
        "unplanned_transforms": _STATS["unplanned_transforms"],
        "ducc0_plans": _STATS["ducc0_plans"],
        "ducc0_faster_shapes": len(rival.DUCC0_FASTER),
        "cache_bytes": CACHE.nbytes,
        "cache_plans": len(CACHE),
        "planned_shapes": planned_shapes(),
    }


def wisdom_state() -> str:
    """A one-line summary of FFTW's wisdom and the plan cache, for server-info and logs."""
    sizes = wisdom.sizes()
    s = stats()
    queue = background.stats()
    return (
        f"effort={planner_effort()} wisdom_bytes(double,single)={sizes[0]},{sizes[1]} "
        f"plans_created={s['plans_created']} plans_reused={s['plans_reused']} "
        f"cache_bytes={s['cache_bytes']} background_plans={queue['background_plans']} "
        f"background_queued={queue['background_queued']} file={wisdom.wisdom_path() or '-'}"
    )
