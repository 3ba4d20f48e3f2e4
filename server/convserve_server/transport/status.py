"""The one place that turns exceptions into gRPC statuses (the exceptions are in :mod:`convserve_server.errors`).

Every failure of a call becomes exactly one status: the engine's and the server's own errors
each map to their code (with a BadRequest detail naming the field for INVALID_ARGUMENT, and a
retry pushback for RESOURCE_EXHAUSTED); anything else is INTERNAL and logged with the request id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from convserve_server.errors import (
    CallerGone,
    Cancelled,
    FailedPrecondition,
    IdleTimeout,
    InvalidArgumentError,
    LimitExceeded,
    NotFound,
    OutOfRangeError,
    Overloaded,
    PermissionDenied,
)

log = logging.getLogger("convserve.server")


@dataclass(frozen=True)
class Failure:
    """A status to send: code, message and trailing metadata."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str | bytes], ...] = ()


def _details(code: int, message: str, field: str, description: str) -> tuple[str, bytes]:
    """``grpc-status-details-bin`` holding a google.rpc.Status with one BadRequest violation."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]))
    status = status_pb2.Status(code=code, message=message, details=[detail])
    return ("grpc-status-details-bin", status.SerializeToString())


def failure_for(error: BaseException, request_id: str) -> Failure:
    """Map an exception raised while serving a call to the status the caller gets."""
    if isinstance(error, InvalidArgumentError):
        message = str(error)
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, message, (_details(code_pb2.INVALID_ARGUMENT, message, error.field, error.description),))
    if isinstance(error, OutOfRangeError):
        return Failure(grpc.StatusCode.OUT_OF_RANGE, str(error))
    if isinstance(error, Overloaded):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), (("grpc-retry-pushback-ms", str(error.pushback_ms)),))
    if isinstance(error, LimitExceeded):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), (("grpc-retry-pushback-ms", "-1"),))
    if isinstance(error, FailedPrecondition):
        return Failure(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    if isinstance(error, PermissionDenied):
        return Failure(grpc.StatusCode.PERMISSION_DENIED, str(error))
    if isinstance(error, NotFound):
        return Failure(grpc.StatusCode.NOT_FOUND, str(error))
    if isinstance(error, IdleTimeout):
        return Failure(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    if isinstance(error, CallerGone):
        return Failure(error.code, str(error))
    if isinstance(error, Cancelled):
        return Failure(grpc.StatusCode.CANCELLED, str(error))
    if isinstance(error, MemoryError):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory for this request", (("grpc-retry-pushback-ms", "-1"),))
    log.exception("internal error in request %s", request_id, exc_info=error)
    return Failure(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); the server logged it")
