"""Per-request share of the cores: how many threads one request's transforms may use.

The server's pool sets the share for each request (the cores divided among the requests running
at once); the FFT plumbing (``engine/fft/plans.py``) asks :func:`thread_limit`. Outside the server there is no limit.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("convserve_threads", default=None)


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
