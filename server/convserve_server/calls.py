"""Bookkeeping of one call: request id, metrics, structured log line and the failure status."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from prometheus_client import Gauge

from . import metrics
from .pool import LimitExceeded, Overloaded
from .status import CallerGone, Failure, failure_for

log = logging.getLogger("convserve.server")
REQUEST_ID_KEY = "x-request-id"
# Gauges of the waiting budget (to move into metrics.py with the others).
WAITING_STREAMS = Gauge("convserve_waiting_streams", "Chunked uploads and streams waiting for data (they hold no compute slot)",
                        registry=metrics.REGISTRY)
WAITING_BYTES = Gauge("convserve_waiting_bytes", "Bytes held by the calls waiting for data (the waiting budget in use)",
                      registry=metrics.REGISTRY)


def waiting_changed(streams: int, held: int) -> None:
    """Update the waiting-budget gauges (called by the waiting budget on every change)."""
    WAITING_STREAMS.set(streams)
    WAITING_BYTES.set(held)


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
        except CallerGone as gone:
            self._run_undo()
            self.cancelled(gone.code)
            await self.context.abort(gone.code, str(gone))  # the call is over anyway: nothing reaches the caller
            raise
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

    def gone_code(self) -> grpc.StatusCode:
        """DEADLINE_EXCEEDED if the caller's deadline has passed, else CANCELLED (the caller went away)."""
        remaining = self.context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED

    def cancelled(self, code: grpc.StatusCode | None = None) -> None:
        """Record a call the client cancelled, or whose deadline passed (told apart by the time remaining)."""
        code = code or self.gone_code()
        self._count(code)
        message = "call deadline exceeded" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "call cancelled"
        log.info(message, extra={"request_id": self.request_id, "rpc": self.rpc, "code": code.name,
                                 "ms": self._elapsed_ms(), "bytes_in": self.received})

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
