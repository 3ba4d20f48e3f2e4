"""Every exception a call can end with, in one place.

(Start-up has two of its own, next to what raises them: ``settings.SettingsError`` for an invalid
setting and ``app.StartupError`` for a port or TLS file that cannot be used.)

The engine's own (invalid argument, out of range, cancelled) are re-exported here, so the server
imports its errors from this module only. ``convserve_server.transport.status`` maps each of them
to the gRPC status the caller gets; this module knows nothing of gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from convserve_server.engine.cancellation import Cancelled
from convserve_server.engine.errors import EngineError, InvalidArgumentError, OutOfRangeError, bounded_message

if TYPE_CHECKING:  # only the annotation of CallerGone.code; nothing of gRPC at run time
    import grpc

__all__ = [
    "CallerGone",
    "Cancelled",
    "EngineError",
    "FailedPrecondition",
    "IdleTimeout",
    "InvalidArgumentError",
    "LimitExceeded",
    "NotFound",
    "OutOfRangeError",
    "Overloaded",
    "PermissionDenied",
    "bounded_message",
]


class FailedPrecondition(Exception):
    """The server is not set up for this call (maps to FAILED_PRECONDITION)."""


class NotFound(Exception):
    """A referenced object (registered weights) is unknown or was evicted (maps to NOT_FOUND)."""


class PermissionDenied(Exception):
    """The caller may not use the object it named (a shared-memory region without its capability)."""


class IdleTimeout(Exception):
    """A chunked or streaming call that moved no message for ``idle_timeout_seconds`` (DEADLINE_EXCEEDED)."""


class CallerGone(Exception):
    """The caller cancelled or its deadline passed (seen as its request stream ending early).

    ``code`` is CANCELLED or DEADLINE_EXCEEDED; the call is recorded as such, never as a bad request.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Overloaded(Exception):
    """The server is full right now; retry after ``pushback_ms`` (RESOURCE_EXHAUSTED with that pushback)."""

    def __init__(self, message: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.pushback_ms = pushback_ms


class LimitExceeded(Exception):
    """A request that can never fit a configured limit (RESOURCE_EXHAUSTED, never worth retrying)."""
