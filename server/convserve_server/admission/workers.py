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

from convserve_server.engine import cancellation, resources
from convserve_server.errors import LimitExceeded, Overloaded

Result = TypeVar("Result")


class WorkerPool:
    """A thread pool with admission by estimated memory and by count."""

    # How often a caller waiting for a compute slot (a stream's next block) asks again.
    POLL_SECONDS = 0.01

    def __init__(self, workers: int, max_in_flight: int, memory_budget: int, pushback_ms: int = 50, cores: int | None = None) -> None:
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

    def check(self, nbytes: int) -> None:
        """Raise what :meth:`reserve` would raise now, without reserving anything.

        A chunked call asks this at its header, so that it does not upload data it could not
        compute on; it reserves only once its data is complete.
        """
        with self._lock:
            self._refusal(nbytes)

    def _refusal(self, nbytes: int) -> None:
        """Raise LimitExceeded or Overloaded if ``nbytes`` cannot be admitted now (under the lock)."""
        if nbytes > self.memory_budget:
            raise LimitExceeded(
                f"this request needs an estimated {nbytes} bytes of working memory; the server's budget is "
                f"{self.memory_budget} bytes (memory_budget_bytes), so it can never run here"
            )
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(
                f"server busy: {self._in_flight} requests in flight, the limit is {self.max_in_flight}; retry in {self.pushback_ms} ms", self.pushback_ms
            )
        if self._reserved + nbytes > self.memory_budget:
            raise Overloaded(
                f"server busy: this request needs an estimated {nbytes} bytes and {self.memory_budget - self._reserved} "
                f"of the {self.memory_budget}-byte budget are free; retry in {self.pushback_ms} ms",
                self.pushback_ms,
            )

    def reserve(self, nbytes: int) -> Reservation:
        """Admit a request of estimated ``nbytes`` bytes, or raise Overloaded / LimitExceeded at once."""
        with self._lock:
            self._refusal(nbytes)
            self._in_flight += 1
            self._reserved += nbytes
            self.on_change(self._in_flight, self._reserved)
        return Reservation(self, nbytes)

    async def reserve_within(self, nbytes: int, seconds: float) -> Reservation:
        """Admit ``nbytes`` bytes, waiting up to ``seconds`` for room (then raise Overloaded).

        For a stream's next block (the stream holds no slot between blocks: a block that arrives
        while the server is full waits instead of ending the stream), and for a chunked call whose
        data is complete (it waits one pushback at most, then the client re-sends).
        LimitExceeded (can never fit) is raised at once.
        """
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                return self.reserve(nbytes)
            except Overloaded:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
            await asyncio.sleep(self.POLL_SECONDS)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self._reserved -= nbytes
            self.on_change(self._in_flight, self._reserved)

    async def run(
        self, function: Callable[..., Result], *args: Any, nbytes: int = 0, reservation: Reservation | None = None, release: bool = True, inline: bool = False
    ) -> Result:
        """Run ``function(*args)`` on a worker under ``reservation`` (or a new one for ``nbytes`` bytes).

        The reservation is released when the work has stopped, not when the caller stops waiting.
        With ``release=False`` (a chunked result that is still being sent) the caller releases it
        after a success; when the work fails or the caller is cancelled, it is still released
        here, once the work has stopped. ``inline=True`` (tiny work, see :meth:`run_inline`) runs
        it right here, admitted the same way.
        """
        if inline and reservation is None:
            return self.run_inline(function, *args, nbytes=nbytes)
        if reservation is None:
            reservation = self.reserve(nbytes)
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

        caller_gone = threading.Event()

        def done(finished: Future[Result]) -> None:
            with self._lock:
                self._tokens.discard(token)
            if release or caller_gone.is_set() or finished.cancelled() or finished.exception() is not None:
                reservation.release()

        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            token.set()
            caller_gone.set()
            if future.done():  # finished before the cancel: ``done`` did not release it
                reservation.release()
            raise
        finally:
            # A failure's traceback holds this frame, and the future holds the failure: without
            # this, future -> exception -> traceback -> frame -> future is a cycle that keeps the
            # call's data (the arguments the work's frames hold) alive until the cyclic garbage
            # collector runs, after the reservation was released.
            del future

    def run_inline(self, function: Callable[..., Result], *args: Any, nbytes: int = 0) -> Result:
        """Run tiny work (estimated well under a millisecond) right here, on the caller's thread.

        It is admitted exactly as :meth:`run` admits (count and memory, or Overloaded /
        LimitExceeded at once) and released when it returns; it skips only the hop to a worker
        thread and back, which costs more than such work. It runs single-threaded and is not
        cancellable: it ends before a cancellation could be seen.
        """
        reservation = self.reserve(nbytes)
        try:
            with resources.thread_share(1):
                return function(*args)
        finally:
            reservation.release()

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

    def __init__(self, pool: WorkerPool, nbytes: int) -> None:
        self._pool = pool
        self.nbytes = nbytes
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slot and the memory back; later calls do nothing."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._pool._release(self.nbytes)


class WaitingBudget:
    """Admission of calls that wait for their caller's data (chunked uploads, open streams).

    They hold no compute slot while they wait; instead each holds a :class:`Ticket` for the
    bytes it may make the server keep meanwhile (a chunked upload's declared streamed tensors,
    a stream's kernel state and its blocks in flight). Count and bytes are both bounded; past
    either, a call is refused at once with Overloaded (or LimitExceeded when it could never fit).
    """

    def __init__(self, max_streams: int, max_bytes: int, pushback_ms: int = 50) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.pushback_ms = pushback_ms
        self._lock = threading.Lock()
        self._streams = 0
        self._bytes = 0
        self.on_change: Callable[[int, int], None] = lambda streams, held: None

    @property
    def streams(self) -> int:
        """Calls holding a ticket now."""
        return self._streams

    @property
    def held_bytes(self) -> int:
        """Bytes the tickets hold together."""
        return self._bytes

    def _never_fits(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise LimitExceeded(
                f"{what} would hold {size} bytes while waiting for data; waiting calls may hold at most "
                f"{self.max_bytes} bytes together (waiting_budget_bytes), so it can never be taken here"
            )

    def _busy(self, message: str) -> Overloaded:
        return Overloaded(f"server busy: {message}; retry in {self.pushback_ms} ms", self.pushback_ms)

    def admit(self, size: int, what: str) -> Ticket:
        """A ticket for one waiting call holding ``size`` bytes, or Overloaded / LimitExceeded at once."""
        self._never_fits(size, what)
        with self._lock:
            if self._streams >= self.max_streams:
                raise self._busy(f"{self._streams} chunked or streaming calls are waiting for data, the limit is {self.max_streams} (max_waiting_streams)")
            if self._bytes + size > self.max_bytes:
                raise self._busy(
                    f"{what} would hold {size} bytes while waiting for data and "
                    f"{self.max_bytes - self._bytes} of the {self.max_bytes}-byte waiting budget "
                    f"(waiting_budget_bytes) are free"
                )
            self._streams += 1
            self._bytes += size
            self.on_change(self._streams, self._bytes)
        return Ticket(self, size, what)

    def _resize(self, ticket: Ticket, size: int) -> None:
        self._never_fits(size, ticket.what)
        with self._lock:
            if size > ticket.size and self._bytes + size - ticket.size > self.max_bytes:
                raise self._busy(
                    f"{ticket.what} now needs {size} bytes while waiting for data and "
                    f"{self.max_bytes - self._bytes + ticket.size} of the {self.max_bytes}-byte waiting "
                    f"budget (waiting_budget_bytes) are free for it"
                )
            self._bytes += size - ticket.size
            ticket.size = size
            self.on_change(self._streams, self._bytes)

    def _release(self, size: int) -> None:
        with self._lock:
            self._streams -= 1
            self._bytes -= size
            self.on_change(self._streams, self._bytes)


class Ticket:
    """One waiting call's share of the :class:`WaitingBudget`; :meth:`release` gives it back (once)."""

    def __init__(self, budget: WaitingBudget, size: int, what: str) -> None:
        self._budget = budget
        self.size = size
        self.what = what
        self._released = False

    def resize(self, size: int) -> None:
        """Hold ``size`` bytes from now on (Overloaded / LimitExceeded if that does not fit; the old size stays)."""
        if not self._released and size != self.size:
            self._budget._resize(self, size)

    def release(self) -> None:
        """Give the share back; later calls do nothing (tickets live on the event loop: no lock)."""
        if self._released:
            return
        self._released = True
        self._budget._release(self.size)
