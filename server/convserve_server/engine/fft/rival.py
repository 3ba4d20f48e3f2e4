"""A patient FFTW plan timed against ducc0 on the same buffers: which backend this host runs faster.

FFTW's MEASURE keeps the plan that was fastest when it timed its candidates; timing beside other
work can keep a slow one. :func:`ducc0_faster` times the plan and a ducc0 transform between the
same buffers, interleaved, and says whether ducc0's median is lower.
"""

from __future__ import annotations

import contextvars
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy.typing as npt

from convserve_server.engine.fft import ducc

# Timed rounds (one call of each backend per round) behind a verdict.
ROUNDS = 7
# Transforms (kind, shape, dtype, axes, threads) whose patient FFTW plan lost to ducc0 when timed.
DUCC0_FASTER: set[tuple[Any, ...]] = set()
_FFTW_PINNED: contextvars.ContextVar[bool] = contextvars.ContextVar("convserve_fftw_pinned", default=False)


def prefers_ducc0(transform: tuple[Any, ...]) -> bool:
    """Whether an FFTW transform (kind, shape, dtype, axes, threads) runs on ducc0: it lost when timed, and the caller is not pinned to FFTW."""
    return transform in DUCC0_FASTER and not _FFTW_PINNED.get()


@contextmanager
def fftw_pinned() -> Iterator[None]:
    """Keep the enclosed FFTW transforms on FFTW even where ducc0 timed faster (exact integer
    results: their round-off bound is the one proven on FFTW's path)."""
    reset = _FFTW_PINNED.set(True)
    try:
        yield
    finally:
        _FFTW_PINNED.reset(reset)


def ducc0_faster(key: tuple[Any, ...], fftw: Any, inp: npt.NDArray[Any], out: npt.NDArray[Any]) -> bool:
    """Whether ducc0 transforms ``inp`` into ``out`` faster than the FFTW plan ``fftw`` (medians of interleaved rounds).

    ``key`` is the plan's cache key (kind, shape, dtype, axes, threads, backend). Each run reads
    the same finite values (a complex-to-real transform destroys its input).
    """
    kind, _, _, axes, threads, _ = key
    other = ducc.DuccTransform(kind, inp, out, axes, threads)
    times: dict[str, list[float]] = {ducc.FFTW: [], ducc.DUCC0: []}
    for _ in range(ROUNDS):
        for name, run in ((ducc.FFTW, fftw.execute), (ducc.DUCC0, other.execute)):
            inp[...] = 1
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return statistics.median(times[ducc.DUCC0]) < statistics.median(times[ducc.FFTW])
