"""A call that ends at its caller's deadline is recorded as DEADLINE_EXCEEDED even when the server's own deadline is a few milliseconds later."""

from __future__ import annotations

import pytest
import grpc

from convserve_server.transport.calls import DEADLINE_SKEW_SECONDS, CallRecord


class _Context:
    """The two things CallRecord reads of a servicer context."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def _record(remaining: float | None, elapsed: float) -> CallRecord:
    record = CallRecord("Convolve", _Context(remaining), 0)  # type: ignore[arg-type]
    record.started -= elapsed
    return record


@pytest.mark.parametrize(
    "remaining,elapsed,code",
    [
        (-0.01, 1.0, grpc.StatusCode.DEADLINE_EXCEEDED),
        (0.004, 1.0, grpc.StatusCode.DEADLINE_EXCEEDED),  # the caller's deadline, seen 4 ms early by the server
        (0.06, 1.0, grpc.StatusCode.CANCELLED),  # more than 5% of a 1 s timeout left: the caller went away
        (0.09, 10.0, grpc.StatusCode.DEADLINE_EXCEEDED),
        (DEADLINE_SKEW_SECONDS + 0.05, 100.0, grpc.StatusCode.CANCELLED),  # never more than DEADLINE_SKEW_SECONDS early
        (0.004, 0.02, grpc.StatusCode.CANCELLED),  # a cancel 4 ms before a 24 ms deadline is a cancel
        (None, 1.0, grpc.StatusCode.CANCELLED),  # no deadline at all
    ],
)
def test_the_code_of_a_call_the_caller_ended(remaining: float | None, elapsed: float, code: grpc.StatusCode) -> None:
    assert _record(remaining, elapsed).gone_code() == code
