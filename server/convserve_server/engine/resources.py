"""Per-request share of the cores, and the engine's one thread pool for splitting a call's work.

The server's pool sets the share for each request (the cores divided among the requests running
at once); the FFT plumbing (``engine/fft/plans.py``) and every split of a call's work ask
:func:`thread_limit`. Outside the server there is no limit. :func:`submit` and :func:`run_split`
run work on one process-wide pool, each task in a copy of the caller's context (so the request's
thread share and cancellation token follow it). Tasks never wait on the pool themselves, so the
pool cannot deadlock.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# The cores this process may run on (its CPU affinity where the OS has one).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()

_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("convserve_threads", default=None)
# The current request's thread share, None outside a share (the variable's own getter: one C call).
current_share = _THREADS.get


@contextmanager
def thread_share(threads: int) -> Iterator[None]:
    """Limit the enclosed engine work to ``threads`` threads."""
    reset = _THREADS.set(max(1, threads))
    try:
        yield
    finally:
        _THREADS.reset(reset)


def thread_limit(default: int) -> int:
    """The current request's thread share, or ``default`` outside a share."""
    share = _THREADS.get()
    return default if share is None else min(default, share)


def submit(fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Run ``fn(*args)`` on the engine's pool, in a copy of the caller's context."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, CORES), thread_name_prefix="convserve-engine")
        pool = _POOL
    return pool.submit(contextvars.copy_context().run, fn, *args)


def run_split(fn: Callable[[int, int], T], total: int, parts: int) -> list[T]:
    """``fn(lo, hi)`` over ``parts`` contiguous slices of ``range(total)``, in parallel; their results in order.

    The first slice runs in the calling thread, the others on the pool (numpy, FFTW and OpenCV
    release the GIL). Every slice has finished (or failed) before this returns or raises.
    """
    parts = max(1, min(parts, total))
    bounds = [total * i // parts for i in range(parts + 1)]
    if parts == 1:
        return [fn(0, total)]
    futures = [submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        first = fn(bounds[0], bounds[1])
    finally:
        concurrent.futures.wait(futures)
    return [first] + [future.result() for future in futures]
