"""TLS / mutual TLS credentials, bearer-token authentication, and what a caller can make the server hold.

* :func:`interceptors`: the bearer-token check (refusing at the metadata, before any of the body
  is read), then the caps on calls in progress (:mod:`.call_limits`).
* :func:`transport_options`: HTTP/2 flow-control settings that bound what one connection can
  make the server buffer before a handler asks for it (:func:`max_unread_bytes_per_connection`).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from convserve_server.transport.call_limits import OPEN_METHODS, CallLimitInterceptor, refusing_handler  # health checks stay open
from convserve_server.settings import Settings

DENIED = "missing or wrong bearer token (metadata 'authorization')"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is set) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    pair = [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
    if settings.tls_client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(settings.tls_client_ca).read_bytes(), require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


# Bytes one HTTP/2 stream may receive before the server asks for them (its initial window).
STREAM_WINDOW_BYTES = 1 << 20


def transport_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC server options that bound what a connection can make the server buffer unasked.

    A stream's request bytes arrive into its HTTP/2 window before any handler has looked at the
    call (and an unauthenticated call's handler never reads them). With the window fixed at
    :data:`STREAM_WINDOW_BYTES` (gRPC's BDP probing would grow it up to 1 GiB per stream) a
    connection holds at most ``max_concurrent_streams x STREAM_WINDOW_BYTES`` unread bytes:
    64 MiB with the default 64 streams. A call that reads its message still gets it at full
    speed: gRPC opens the window (1 MiB at a time) as the message is read.
    """
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES)]


def max_unread_bytes_per_connection(settings: Settings) -> int:
    """The bound :func:`transport_options` sets on one connection's unread request bytes."""
    return settings.max_concurrent_streams * STREAM_WINDOW_BYTES


def interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first: authentication (when a token is set), then the
    caps on calls in progress (so that unauthenticated calls never count against an identity)."""
    chain: list[grpc.aio.ServerInterceptor] = [TokenAuthInterceptor(settings.auth_token)] if settings.auth_token else []
    chain.append(
        CallLimitInterceptor(
            settings.max_concurrent_calls,
            settings.max_calls_per_identity,
            token=settings.auth_token,
            certificate_identities=bool(settings.tls_client_ca),
            pushback_ms=settings.busy_pushback_ms,
            idle_timeout=settings.idle_timeout_seconds,
        )
    )
    return chain


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    The refusal comes from the metadata alone, before any of the request body is read (see
    :func:`.call_limits.refusing_handler`), and the calls after this interceptor never see it.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass a call with the right bearer token (or to an open method); refuse any other with UNAUTHENTICATED."""
        method = handler_call_details.method or ""
        if method.startswith(OPEN_METHODS):
            return await continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(sent_bytes, self._expected):
            return await continuation(handler_call_details)
        return refusing_handler(method, grpc.StatusCode.UNAUTHENTICATED, DENIED)
