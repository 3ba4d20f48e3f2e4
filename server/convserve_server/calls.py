"""Bookkeeping of one call: request id, metrics, structured log line and the failure status."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc

from . import metrics
from .pool import LimitExceeded, Overloaded
from .status import Failure, failure_for

log = logging.getLogger("convserve.server")
REQUEST_ID_KEY = "x-request-id"


class CallRecord:
    """Times a call and records its outcome once (metrics and one log line)."""

    def __init__(self, rpc: str, context: grpc.aio.ServicerContext, received: int) -> None:
        self.rpc = rpc
        self.context = context
        self.request_id = uuid.uuid4().hex[:16]
        self.started = time.perf_counter()
        self.received = received
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        metrics.BYTES_IN.labels(rpc).inc(received)
        self._undo: list[Callable[[], None]] = []

    def undo_on_failure(self, action: Callable[[], None]) -> None:
        """Run ``action`` (release a reservation...) if the guarded work fails or is cancelled."""
        self._undo.append(action)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn any failure inside into the call's status and a cancellation into its record.

        Every failure becomes a status (the server keeps serving); ``asyncio.CancelledError``
        (the caller cancelled or the deadline passed) is recorded and propagates. Actions given
        to :meth:`undo_on_failure` run first, in either case.
        """
        try:
            yield
        except Exception as error:
            self._run_undo()
            await self.fail(error)  # aborts the call (raises)
            raise
        except BaseException:
            self._run_undo()
            self.cancelled()
            raise

    def _run_undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _elapsed_ms(self) -> float:
        return round(1e3 * (time.perf_counter() - self.started), 2)

    def _count(self, code: grpc.StatusCode) -> None:
        metrics.REQUESTS.labels(self.rpc, code.name).inc()
        metrics.LATENCY.labels(self.rpc).observe(time.perf_counter() - self.started)

    def add_received(self, size: int) -> None:
        """Count bytes that arrived after the first message (chunks, stream blocks)."""
        self.received += size
        metrics.BYTES_IN.labels(self.rpc).inc(size)

    def ok(self, method: str, sent: int) -> None:
        """Record a successful call."""
        self._count(grpc.StatusCode.OK)
        metrics.BYTES_OUT.labels(self.rpc).inc(sent)
        if method:
            metrics.METHODS.labels(self.rpc, method).inc()
        log.info("call ok", extra={"request_id": self.request_id, "rpc": self.rpc, "method": method,
                                   "ms": self._elapsed_ms(), "bytes_in": self.received, "bytes_out": sent})

    def cancelled(self) -> None:
        """Record a call the client cancelled (or whose deadline passed)."""
        self._count(grpc.StatusCode.CANCELLED)
        log.info("call cancelled", extra={"request_id": self.request_id, "rpc": self.rpc, "ms": self._elapsed_ms()})

    async def fail(self, error: Exception) -> None:
        """Record a failed call and abort it with the mapped status (raises)."""
        failure: Failure = failure_for(error, self.request_id)
        self._count(failure.code)
        if isinstance(error, (Overloaded, LimitExceeded)):
            metrics.REJECTIONS.labels("busy" if isinstance(error, Overloaded) else "never_fits").inc()
        log.info("call failed", extra={"request_id": self.request_id, "rpc": self.rpc, "code": failure.code.name,
                                       "ms": self._elapsed_ms(), "detail": failure.message})
        await self.context.abort(failure.code, failure.message,
                                 trailing_metadata=((REQUEST_ID_KEY, self.request_id), *failure.trailers))
