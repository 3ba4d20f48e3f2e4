"""TLS / mutual TLS credentials and bearer-token authentication."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from .settings import Settings

# Health checks stay open so that orchestrators can probe without the token.
OPEN_METHODS = ("/grpc.health.v1.Health/",)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is set) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    pair = [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
    if settings.tls_client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(settings.tls_client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first (authentication when a token is set)."""
    return [TokenAuthInterceptor(settings.auth_token)] if settings.auth_token else []


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(OPEN_METHODS):
            return await continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(sent_bytes, self._expected):
            return await continuation(handler_call_details)
        return self._deny
