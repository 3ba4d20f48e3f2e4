"""The worker pool: runs compute off the event loop, with bounded admission.

At most ``max_concurrent_requests`` calls are admitted (computing on ``workers`` threads or
waiting for one); the next is refused at once with :class:`Overloaded`, never queued without
bound. numpy and FFTW release the GIL, so threads compute on every core.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

Result = TypeVar("Result")


class Overloaded(Exception):
    """The pool is full; retry after ``pushback_ms``."""

    def __init__(self, in_flight: int, limit: int, pushback_ms: int) -> None:
        super().__init__(f"server busy: {in_flight} requests in flight, the limit is {limit}; retry in {pushback_ms} ms")
        self.pushback_ms = pushback_ms


class WorkerPool:
    """A thread pool with a bound on admitted work."""

    def __init__(self, workers: int, max_in_flight: int, pushback_ms: int = 50) -> None:
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.pushback_ms = pushback_ms
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convserve-worker")
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished."""
        return self._in_flight

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """Run ``function(*args)`` on a worker, or raise Overloaded at once when full."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise Overloaded(self._in_flight, self.max_in_flight, self.pushback_ms)
            self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            with self._lock:
                self._in_flight -= 1

    def shutdown(self) -> None:
        """Finish queued work and stop the threads."""
        self._executor.shutdown(wait=True)
