"""The client's retry rule and the gRPC service config that makes gRPC apply it to unary calls (no I/O)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import grpc

from convserve.errors import ConvserveError

# gRPC retries transparently only requests that fit its per-call retry buffer (256 KiB by default);
# larger ones are retried by the client itself under the same rule.
RETRY_BUFFER_BYTES = 256 * 1024
SERVICE = "convserve.v1.ConvolutionService"
# gRPC's own retries (the service config's retryPolicy) apply to these unary methods only: on the
# client-streaming methods they have aborted the caller's process (promise_based_filter.cc ILLEGAL
# STATE: FORWARDED_BATCH, seen with grpcio 1.85). The client retries its streams itself (fresh stream).
UNARY_METHODS = ("Convolve", "Correlate", "ConvLayer", "ConvTranspose", "RegisterWeights", "ConvolveShared", "CorrelateShared", "GetServerInfo")
STREAMING_METHODS = ("ConvolveChunked", "CorrelateChunked", "ConvLayerChunked", "ConvolveStream")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE and on RESOURCE_EXHAUSTED with a non-negative pushback.

    Attributes
    ----------
    max_attempts : int
        Attempts in all, the first included (gRPC caps this at 5).
    initial_backoff, max_backoff : float
        Seconds; the n-th wait is random in [0, min(max_backoff, initial * multiplier**n)].
    multiplier : float
        Growth of the backoff.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff <= 0 or self.max_backoff <= 0 or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}: max_attempts >= 1, positive backoffs, multiplier >= 1")

    def service_config(self) -> str:
        """The gRPC service config that makes gRPC apply this policy itself to the unary methods.

        Streaming methods get no ``retryPolicy`` (the client retries them itself); a single attempt
        gets none at all.
        """
        if self.max_attempts == 1:
            return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}]}]})
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": SERVICE, "method": method} for method in UNARY_METHODS],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff}s",
                            "maxBackoff": f"{self.max_backoff}s",
                            "backoffMultiplier": self.multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                        },
                    }
                ]
            }
        )

    def delay(self, attempt: int, error: ConvserveError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None when ``error`` must not be retried."""
        if attempt + 1 >= self.max_attempts:
            return None
        if error.code == grpc.StatusCode.UNAVAILABLE:
            pass
        elif error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_pushback_ms is not None and error.retry_pushback_ms >= 0:
            return error.retry_pushback_ms / 1000.0
        else:
            return None
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier**attempt))
