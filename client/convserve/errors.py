"""The client's exception tree and the one place that translates gRPC errors into it.

Every error a call can raise is a :class:`ConvserveError` carrying the gRPC status code, the
server's message and, for bad arguments, the offending fields. Classes for bad arguments derive
from :class:`ValueError` as scipy's and numpy's errors do, so ``client.convolve`` can replace
``scipy.signal.convolve`` in code that catches ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import grpc


class ConvserveError(Exception):
    """Base class of every error raised by convserve.

    Attributes
    ----------
    code : grpc.StatusCode
        The gRPC status of the failed call.
    details : str
        The server's (or the client's) explanation.
    field_violations : tuple of (str, str)
        ``(field, description)`` pairs for bad arguments; empty otherwise.
    """

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: tuple[tuple[str, str], ...] = (),
        retry_pushback_ms: int | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code if code is not None else self.default_code
        self.details = details
        self.field_violations = field_violations
        self.retry_pushback_ms = retry_pushback_ms

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgumentError(ConvserveError, ValueError):
    """A malformed tensor, a shape that does not fit the mode, or a bad option (INVALID_ARGUMENT)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRangeError(ConvserveError, OverflowError):
    """An integer result would not fit the output dtype (OUT_OF_RANGE); the message names one that would."""

    default_code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhaustedError(ConvserveError):
    """The request exceeds a limit, or the server is full (RESOURCE_EXHAUSTED)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(ConvserveError, TimeoutError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(ConvserveError):
    """The call was cancelled (CANCELLED)."""

    default_code = grpc.StatusCode.CANCELLED


class UnavailableError(ConvserveError, ConnectionError):
    """The server cannot be reached or is shutting down (UNAVAILABLE)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(ConvserveError, PermissionError):
    """Missing or wrong credentials (UNAUTHENTICATED)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class NotFoundError(ConvserveError, LookupError):
    """A referenced object is unknown to the server (NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ConvserveError):
    """The server is not set up for this call, e.g. shared memory is off (FAILED_PRECONDITION)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class InternalError(ConvserveError):
    """A server bug (INTERNAL); the server logged it with a request id."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ConvserveError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        OutOfRangeError,
        ResourceExhaustedError,
        DeadlineExceededError,
        CancelledError,
        UnavailableError,
        UnauthenticatedError,
        NotFoundError,
        FailedPreconditionError,
        InternalError,
    )
}

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def _field_violations(trailers: Any) -> tuple[tuple[str, str], ...]:
    """Read google.rpc.BadRequest field violations from the trailers, when the protos are installed."""
    blob = next((v for k, v in trailers if k == STATUS_DETAILS_KEY), None)
    if blob is None:
        return ()
    try:  # googleapis-common-protos is optional for the thin client
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return ()
    status = status_pb2.Status.FromString(blob)
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return tuple(violations)


def from_rpc_error(error: grpc.RpcError) -> ConvserveError:
    """Translate a gRPC error into the matching :class:`ConvserveError` subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    trailers = (error.trailing_metadata() if hasattr(error, "trailing_metadata") else None) or ()
    pushback_text = next((v for k, v in trailers if k == RETRY_PUSHBACK_KEY), None)
    pushback = int(pushback_text) if isinstance(pushback_text, str) and pushback_text.lstrip("-").isdigit() else None
    cls = _BY_CODE.get(code, ConvserveError)
    return cls(details, code=code, field_violations=_field_violations(trailers), retry_pushback_ms=pushback)
