"""The worker pool: runs compute off the event loop, with admission bounded by memory and count.

A request is admitted only if its estimated memory fits what is left of the budget and fewer
than ``max_in_flight`` requests are admitted; otherwise it is refused at once (never queued
without bound). A request that could never fit the budget is refused as such. numpy and FFTW
release the GIL, so the threads compute on every core. When the caller goes away, the request's
cancel token is set; the engine stops at its next block and only then is the budget released.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from .engine import cancellation, resources

Result = TypeVar("Result")


class Overloaded(Exception):
    """The server is full right now; retry after ``pushback_ms``."""

    def __init__(self, message: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.pushback_ms = pushback_ms


class LimitExceeded(Exception):
    """A request that can never fit a configured limit (never worth retrying)."""


class WorkerPool:
    """A thread pool with admission by estimated memory and by count."""

    def __init__(self, workers: int, max_in_flight: int, memory_budget: int, pushback_ms: int = 50,
                 cores: int | None = None) -> None:
        self.workers = workers
        self.cores = cores or os.cpu_count() or 1
        self.max_in_flight = max_in_flight
        self.memory_budget = memory_budget
        self.pushback_ms = pushback_ms
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convserve-worker")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._reserved = 0
        self._tokens: set[threading.Event] = set()  # cancellation tokens of the work submitted and not done
        self.on_change: Callable[[int, int], None] = lambda in_flight, reserved: None

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished (including cancelled ones still stopping)."""
        return self._in_flight

    @property
    def reserved_bytes(self) -> int:
        """Memory reserved by admitted requests."""
        return self._reserved

    def reserve(self, cost: int) -> Reservation:
        """Admit a request of estimated ``cost`` bytes, or raise Overloaded / LimitExceeded at once."""
        if cost > self.memory_budget:
            raise LimitExceeded(
                f"this request needs an estimated {cost} bytes of working memory; the server's budget is "
                f"{self.memory_budget} bytes (memory_budget_bytes), so it can never run here"
            )
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise Overloaded(
                    f"server busy: {self._in_flight} requests in flight, the limit is {self.max_in_flight}; "
                    f"retry in {self.pushback_ms} ms", self.pushback_ms)
            if self._reserved + cost > self.memory_budget:
                raise Overloaded(
                    f"server busy: this request needs an estimated {cost} bytes and {self.memory_budget - self._reserved} "
                    f"of the {self.memory_budget}-byte budget are free; retry in {self.pushback_ms} ms", self.pushback_ms)
            self._in_flight += 1
            self._reserved += cost
            self.on_change(self._in_flight, self._reserved)
        return Reservation(self, cost)

    def _release(self, cost: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self._reserved -= cost
            self.on_change(self._in_flight, self._reserved)

    async def run(self, function: Callable[..., Result], *args: Any, cost: int = 0,
                  reservation: Reservation | None = None, release: bool = True) -> Result:
        """Run ``function(*args)`` on a worker under ``reservation`` (or a new one for ``cost`` bytes).

        The reservation is released when the work has stopped, not when the caller stops waiting;
        with ``release=False`` (a stream's many blocks) the caller releases it.
        """
        if reservation is None:
            reservation = self.reserve(cost)
        token = threading.Event()
        context = contextvars.copy_context()

        def work() -> Result:
            running = min(self._in_flight, self.workers)  # requests sharing the cores now
            with cancellation.scope(token), resources.thread_share(self.cores // max(1, running)):
                cancellation.check()  # cancelled while queued: do not start
                return function(*args)

        with self._lock:
            self._tokens.add(token)
        try:
            future: Future[Result] = self._executor.submit(context.run, work)
        except BaseException:
            with self._lock:
                self._tokens.discard(token)
            if release:
                reservation.release()
            raise

        def done(_: Future[Result]) -> None:
            with self._lock:
                self._tokens.discard(token)
            if release:
                reservation.release()

        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            token.set()
            raise

    def cancel_running(self) -> int:
        """Set the cancellation token of every queued or running piece of work; return how many."""
        with self._lock:
            tokens = list(self._tokens)
        for token in tokens:
            token.set()
        return len(tokens)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads; with ``wait=False`` return at once (cancel the work first to stop it soon)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


class Reservation:
    """Admitted memory and a slot of the pool; :meth:`release` gives them back (once)."""

    def __init__(self, pool: WorkerPool, cost: int) -> None:
        self._pool = pool
        self.cost = cost
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slot and the memory back; later calls do nothing."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._pool._release(self.cost)
