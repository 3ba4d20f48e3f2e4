"""The client's exception tree and the one place that translates gRPC errors into it.

Every error a call can raise is a :class:`ConvserveError` carrying the gRPC status code, the
server's message and, for bad arguments, the offending fields. Classes for bad arguments derive
from :class:`ValueError` as scipy's and numpy's errors do, so ``client.convolve`` can replace
``scipy.signal.convolve`` in code that catches ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import re

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


class GradientNotComputedWarning(UserWarning):
    """A torch tensor that requires grad went to the server, which computes no gradient.

    The result comes back with ``requires_grad=False``: nothing flows back to the input or the
    weights in ``loss.backward()``. Warned once per process (filter it with
    ``warnings.simplefilter("ignore", convserve.GradientNotComputedWarning)``).
    """


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


class PermissionDeniedError(ConvserveError, PermissionError):
    """The caller may not use the object it named, e.g. a shared-memory region without its capability (PERMISSION_DENIED)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(ConvserveError, LookupError):
    """A referenced object is unknown to the server (NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ConvserveError):
    """The server is not set up for this call, e.g. shared memory is off (FAILED_PRECONDITION)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class InternalError(ConvserveError):
    """A server bug (INTERNAL); the server logged it with a request id."""

    default_code = grpc.StatusCode.INTERNAL


class ProxyError(ConvserveError):
    """An HTTP error or a stream reset from something between the client and the server.

    A proxy in front of the service (nginx, Envoy, a cloud load balancer) answered with an HTTP
    status instead of a gRPC one (413 when a request exceeds its body limit, 502/503/504 when it
    cannot reach the servers behind it), or a proxy or the network reset the HTTP/2 stream
    (RST_STREAM). The message says what to change. When gRPC counts the failure as UNAVAILABLE
    (HTTP 429, 502, 503, 504) the error is a :class:`ProxyUnavailableError`, also an
    :class:`UnavailableError`, and is retried like one. A REFUSED_STREAM reset, which any HTTP/2 peer
    sends (the server too, beyond ``--max-concurrent-streams``), stays an :class:`UnavailableError`
    with the same kind of hint.

    Attributes
    ----------
    http_status : int or None
        The HTTP status the proxy answered with, when it answered with one.
    reset_code : int or None
        The HTTP/2 error code of the RST_STREAM, when the stream was reset.
    """

    def __init__(self, details: str, *, http_status: int | None = None, reset_code: int | None = None, **kwargs: Any) -> None:
        super().__init__(details, **kwargs)
        self.http_status = http_status
        self.reset_code = reset_code


class ProxyUnavailableError(ProxyError, UnavailableError):
    """A :class:`ProxyError` that gRPC counts as UNAVAILABLE (HTTP 429, 502, 503, 504)."""

    default_code = grpc.StatusCode.UNAVAILABLE


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
        PermissionDeniedError,
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


_HTTP_STATUS = re.compile(r"Received http2 (?:header with status|:status header with non-200 OK status): ?(\d{3})")
_RESET = re.compile(r"RST_STREAM with error code (\d+)")
# What to change, by the HTTP status a proxy answered with.
_HTTP_HINTS = {
    400: "the proxy rejected the request as malformed: check that it speaks HTTP/2 (gRPC) to the server "
    "(nginx: grpc_pass, not proxy_pass; Envoy: http2_protocol_options on the cluster)",
    401: "the proxy asks for credentials of its own: configure its authentication, or exempt the service",
    403: "the proxy refused the request: check its access rules for /convserve.v1.ConvolutionService/",
    404: "the proxy has no route for /convserve.v1.ConvolutionService/: route it to the servers with grpc_pass (nginx) "
    "or a gRPC route (Envoy), or check the target's port",
    413: "the request is larger than the proxy in front of the service accepts: raise the proxy's body limit, "
    "e.g. nginx `client_max_body_size 0;` (its default is 1 MiB) or Envoy's max_request_bytes",
    429: "the proxy is rate-limiting this client: slow down, or raise the proxy's rate limit",
    431: "the request's headers are larger than the proxy accepts: raise its header limits (nginx large_client_header_buffers / http2_max_header_size)",
    502: "the proxy could not get an answer from the servers behind it: check that `convserve serve` runs there and "
    "that the proxy's upstream points at it over HTTP/2 (nginx grpc_pass grpc://host:port)",
    503: "the proxy has no healthy server behind it: start `convserve serve` behind the proxy, or check its health checks",
    504: "the proxy timed out waiting for the server: raise its timeouts for long calls "
    "(nginx grpc_read_timeout / grpc_send_timeout, Envoy route timeout) or send smaller requests",
}
REFUSED_STREAM = 7  # HTTP/2 error code: the stream was not processed, safe to retry
_RESET_HINTS = {
    REFUSED_STREAM: "the peer refused the stream (REFUSED_STREAM): the server or a proxy in front of it has too many streams "
    "open on this connection (convserve serve --max-concurrent-streams, nginx http2_max_concurrent_streams); "
    "retry later or open fewer at once",
    8: "a proxy or the server cancelled the stream (CANCEL): check the proxy's timeouts and its error log",
    11: "the peer asks this client to slow down (ENHANCE_YOUR_CALM): fewer calls or pings at once",
}
_UNREACHABLE = (
    "failed to connect",
    "connection refused",
    "errors resolving",
    "dns resolution failed",
    "name resolution",
    "no address",
    "connect failed",
    "network is unreachable",
    "no route to host",
)


def _proxy_error(details: str, target: str | None) -> tuple[int | None, int | None, str] | None:
    """``(http_status, reset_code, message)`` when ``details`` says a non-gRPC peer answered or reset the stream."""
    where = f" on the way to {target}" if target else ""
    match = _HTTP_STATUS.search(details)
    if match is not None:
        status = int(match.group(1))
        hint = _HTTP_HINTS.get(
            status,
            "a proxy (or a server that is not convserve) answered instead of the service: "
            "check the proxy's configuration and its error log, or the target's port",
        )
        return status, None, f"HTTP {status} from a proxy{where}, not from the convserve server: {hint} (gRPC: {details})"
    match = _RESET.search(details)
    if match is not None:
        reset = int(match.group(1))
        hint = _RESET_HINTS.get(
            reset,
            "a proxy or the network reset the stream before the server answered: check the "
            "proxy's body limit and timeouts (nginx client_max_body_size 0, grpc_read_timeout; "
            "Envoy max_request_bytes, stream_idle_timeout) and its error log",
        )
        return None, reset, f"the HTTP/2 stream{where} was reset (RST_STREAM, error code {reset}): {hint} (gRPC: {details})"
    return None


def _unreachable(details: str, target: str | None) -> str:
    """The message of an UNAVAILABLE error: says where and how to start the server when it cannot be reached."""
    lowered = details.lower()
    if target is None or not any(text in lowered for text in _UNREACHABLE) or "handshake" in lowered or "ssl" in lowered:
        return details
    address = target.split("///")[-1].removeprefix("ipv4:").removeprefix("ipv6:").split(",")[0]
    host, _, port = address.rpartition(":")
    start = f"convserve serve --host {host.strip('[]') or '127.0.0.1'} --port {port}" if port.isdigit() else "convserve serve"
    return f"cannot reach the convserve server at {target} ({details}); is it running? start it there with `{start}`"


def from_rpc_error(error: grpc.RpcError, target: str | None = None) -> ConvserveError:
    """Translate a gRPC error into the matching :class:`ConvserveError` subclass.

    ``target`` is the address the client dialled; it goes into the message when the server
    cannot be reached.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    proxy = _proxy_error(details, target)
    if proxy is not None:
        http_status, reset_code, explained = proxy
        if reset_code == REFUSED_STREAM:  # any HTTP/2 peer, most often the server itself: an UnavailableError
            details = explained
        else:
            proxy_cls = ProxyUnavailableError if code == grpc.StatusCode.UNAVAILABLE else ProxyError
            return proxy_cls(explained, code=code, http_status=http_status, reset_code=reset_code)
    elif code == grpc.StatusCode.UNAVAILABLE:
        details = _unreachable(details, target)
    trailers = (error.trailing_metadata() if hasattr(error, "trailing_metadata") else None) or ()
    pushback_text = next((v for k, v in trailers if k == RETRY_PUSHBACK_KEY), None)
    pushback = int(pushback_text) if isinstance(pushback_text, str) and pushback_text.lstrip("-").isdigit() else None
    cls = _BY_CODE.get(code, ConvserveError)
    return cls(details, code=code, field_violations=_field_violations(trailers), retry_pushback_ms=pushback)
