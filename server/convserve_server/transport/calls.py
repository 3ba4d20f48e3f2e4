"""Bookkeeping of one call: request id, metrics, structured log line and the failure status."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
import os
from collections.abc import AsyncIterator, Callable

import grpc

from convserve_server.ops import metrics
from convserve_server.errors import CallerGone, LimitExceeded, Overloaded
from convserve_server.transport.status import Failure, failure_for

log = logging.getLogger("convserve.server")
REQUEST_ID_KEY = "x-request-id"
# The most a caller's deadline may precede the server's and still count as the server's (see CallRecord.gone_code).
DEADLINE_SKEW_SECONDS = 0.1


class CallRecord:
    """Times a call and records its outcome once (metrics and one log line)."""

    def __init__(self, rpc: str, context: grpc.aio.ServicerContext, received: int) -> None:
        self.rpc = rpc
        self.context = context
        self.request_id = os.urandom(8).hex()
        self.started = time.perf_counter()
        self.received = received
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        metrics.bytes_in(rpc).inc(received)
        self._undo: list[Callable[[], None]] = []

    def undo_on_failure(self, action: Callable[[], None]) -> None:
        """Run ``action`` (release a reservation...) if the guarded work fails or is cancelled."""
        self._undo.append(action)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn any failure inside into the call's status and a cancellation into its record.

        Every failure becomes a status (the server keeps serving); ``asyncio.CancelledError``
        (the caller cancelled or the deadline passed) is recorded and propagates. Actions given
        to :meth:`undo_on_failure` run first, in either case. A failed call's frames are cleared
        once it has ended (see :meth:`_abort`), so what they hold goes with its reservation.
        """
        try:
            yield
        except CallerGone as gone:
            self._run_undo()
            self.cancelled(gone.code)
            await self._abort(gone.code, str(gone))  # the call is over anyway: nothing reaches the caller
            raise
        except Exception as error:
            self._run_undo()
            await self.fail(error)  # aborts the call (raises)
            raise
        except BaseException:
            self._run_undo()
            self.cancelled()
            raise

    async def _abort(self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        """End the call with ``code`` (raises gRPC's abort exception), and clear its frames when it is over.

        gRPC keeps the abort exception in the call's state; the exception's traceback holds the
        handler's frames, and they hold the call's context, which holds that state. The cycle kept
        every failed call's data (a chunked upload's arrays, a unary request message) alive until
        the cyclic garbage collector happened to run, long after its reservation was released:
        memory that no budget covered. Once the call is over, its frames are done and are cleared
        here, which frees what they held at once.
        """
        try:
            if trailers:
                await self.context.abort(code, message, trailing_metadata=trailers)
            else:
                await self.context.abort(code, message)
        except BaseException as aborted:
            self.context.add_done_callback(functools.partial(_clear_frames, aborted))
            raise

    def _run_undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _elapsed_ms(self) -> float:
        return round(1e3 * (time.perf_counter() - self.started), 2)

    def _count(self, code: grpc.StatusCode) -> None:
        metrics.requests(self.rpc, code.name).inc()
        metrics.latency(self.rpc).observe(time.perf_counter() - self.started)

    def add_received(self, size: int) -> None:
        """Count bytes that arrived after the first message (chunks, stream blocks)."""
        self.received += size
        metrics.bytes_in(self.rpc).inc(size)

    def ok(self, method: str, sent: int) -> None:
        """Record a successful call."""
        self._count(grpc.StatusCode.OK)
        metrics.bytes_out(self.rpc).inc(sent)
        if method:
            metrics.methods(self.rpc, method).inc()
        log.info(
            "call ok",
            extra={"request_id": self.request_id, "rpc": self.rpc, "method": method, "ms": self._elapsed_ms(), "bytes_in": self.received, "bytes_out": sent},
        )

    def gone_code(self) -> grpc.StatusCode:
        """DEADLINE_EXCEEDED if the caller's deadline has passed, else CANCELLED (the caller went away).

        The server's deadline runs from when the call's headers arrived, with the timeout rounded
        up on the wire, so when the caller's own deadline cancels the call the server may still see
        a few milliseconds left (seen here: a 1 s deadline recorded as cancelled at 1001.9 ms). A
        call that ends within 5% of its timeout (at most 0.1 s) of the server's deadline counts as
        past it.
        """
        remaining = self.context.time_remaining()
        if remaining is None:
            return grpc.StatusCode.CANCELLED
        total = self._elapsed_ms() / 1000 + max(remaining, 0.0)
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining <= min(DEADLINE_SKEW_SECONDS, 0.05 * total) else grpc.StatusCode.CANCELLED

    def cancelled(self, code: grpc.StatusCode | None = None) -> None:
        """Record a call the client cancelled, or whose deadline passed (told apart by the time remaining)."""
        code = code or self.gone_code()
        self._count(code)
        message = "call deadline exceeded" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "call cancelled"
        log.info(message, extra={"request_id": self.request_id, "rpc": self.rpc, "code": code.name, "ms": self._elapsed_ms(), "bytes_in": self.received})

    async def fail(self, error: Exception) -> None:
        """Record a failed call and abort it with the mapped status (raises)."""
        failure: Failure = failure_for(error, self.request_id)
        self._count(failure.code)
        if isinstance(error, (Overloaded, LimitExceeded)):
            metrics.REJECTIONS.labels("busy" if isinstance(error, Overloaded) else "never_fits").inc()
        log.info(
            "call failed",
            extra={"request_id": self.request_id, "rpc": self.rpc, "code": failure.code.name, "ms": self._elapsed_ms(), "detail": failure.message},
        )
        _clear_frames(error)  # the work's frames are done: drop what they hold now, before the status is sent
        await self._abort(failure.code, failure.message, ((REQUEST_ID_KEY, self.request_id), *failure.trailers))


def _clear_frames(error: BaseException, context: object = None) -> None:
    """Clear the locals of the finished frames in ``error``'s traceback and its causes', and cut the
    links to them, so that whatever still holds ``error`` holds none of the call's data.

    Frames still running are left alone (``traceback.clear_frames`` skips them); cutting the
    traceback also lets go of the frames they called (a finished frame keeps its caller, such as
    the worker thread's frame that ran the work with the call's arguments). Also a done callback
    of the call (``context`` is the call's context, unused).
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        pending.extend((current.__context__, current.__cause__))
        traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        current.__context__ = current.__cause__ = None
