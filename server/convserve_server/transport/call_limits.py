"""Caps on calls in progress: for the whole server and per authenticated identity.

A call counts from the moment its handler starts, which is as soon as its metadata is in (every
handler is request-streaming, see below), until it returns, raises, is cancelled or aborted.
Beyond a cap the call is refused with RESOURCE_EXHAUSTED and a trailing
``grpc-retry-pushback-ms`` of ``pushback_ms`` (the default client waits that long and retries),
*before its body is read*. Each method's counted handler is built once and reused, so a call
pays for a count and a release, nothing more.

Identity (``max_calls_per_identity``):

* with mutual TLS, the client certificate's subject (``x509_subject``, else the peer
  identities): each certificate is its own identity. gRPC Python shows it only to a running
  handler (``context.auth_context()``); the request-streaming wrapper below checks it before it
  reads the one message;
* else, with ``--auth-token``, the SHA-256 of the bearer token: every holder of the one token
  is one identity, so the identity cap bounds all token holders together;
* without authentication there is no identity and only the global cap applies (per-address
  limits mean nothing on loopback or behind a balancer).

Unary-request methods are served through a request-streaming wrapper: a unary handler runs only
once gRPC has received the whole message, so a caller that sends the metadata and then stalls
(or trickles its body) would make the server buffer it with no count and no limit on it. The
wrapper runs at once and reads the one message within ``idle_timeout`` (the setting
``idle_timeout_seconds``), then checks that no second message follows; a call that does not
deliver its message in time ends with DEADLINE_EXCEEDED and stops counting.

Health checks (``/grpc.health.v1.Health/``) are never counted nor refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from convserve_server.transport.calls import CallRecord
from convserve_server.errors import IdleTimeout, InvalidArgumentError

OPEN_METHODS = ("/grpc.health.v1.Health/",)
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# How often shutdown looks whether the calls in progress have ended.
DRAIN_POLL_SECONDS = 0.01


@functools.lru_cache(maxsize=256)
def response_streaming(method: str) -> bool:
    """Whether ``/pkg.Service/Method`` streams its responses (False when the method is unknown)."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        return bool(descriptor_pool.Default().FindMethodByName(f"{service}.{name}").server_streaming)
    except KeyError:
        return False


def refusing_handler(method: str, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` without reading one request message.

    It is request-streaming whatever the method is: for a unary-request handler gRPC Python
    receives and assembles the whole message before calling it, while a request-streaming
    handler runs as soon as the metadata is in, so the body is never read (what HTTP/2 flow
    control let in before the refusal is dropped). Its response side has the method's kind.
    """

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details, trailing_metadata=trailing_metadata)

    if response_streaming(method):
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


def token_identity(token: str) -> str:
    """The identity of a bearer token: ``token:`` and the first 16 hex digits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def certificate_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The client certificate's subject (or peer identities) of an mTLS call, else None."""
    auth = context.auth_context() or {}
    values = auth.get("x509_subject") or context.peer_identities() or ()
    if not values:
        return None
    return "cert:" + b"|".join(bytes(v) for v in values).decode(errors="replace")


class Limiter:
    """Counts of calls in progress, globally and per identity (thread-safe)."""

    def __init__(self, max_calls: int, max_per_identity: int) -> None:
        self.max_calls = max_calls
        self.max_per_identity = max_per_identity
        self.lock = threading.Lock()
        self.total = 0
        self.per_identity: dict[str, int] = {}

    def acquire(self, identity: str | None) -> str | None:
        """Count one call; None when it fits, else why not (the call is then not counted)."""
        with self.lock:
            if self.total >= self.max_calls:
                return f"the server has {self.total} calls in progress (max_concurrent_calls={self.max_calls}): retry later"
            if identity is not None and self.per_identity.get(identity, 0) >= self.max_per_identity:
                return f"this identity has {self.per_identity[identity]} calls in progress (max_calls_per_identity={self.max_per_identity}): retry later"
            self.total += 1
            if identity is not None:
                self.per_identity[identity] = self.per_identity.get(identity, 0) + 1
            return None

    def add_identity(self, identity: str) -> str | None:
        """Count an already counted call against ``identity`` too; None when it fits, else why not."""
        with self.lock:
            held = self.per_identity.get(identity, 0)
            if held >= self.max_per_identity:
                return f"this identity has {held} calls in progress (max_calls_per_identity={self.max_per_identity}): retry later"
            self.per_identity[identity] = held + 1
            return None

    def release(self, identity: str | None, counted: bool = True) -> None:
        """Stop counting one call (and its identity's share)."""
        with self.lock:
            if counted:
                self.total -= 1
            if identity is not None:
                left = self.per_identity.get(identity, 0) - 1
                if left > 0:
                    self.per_identity[identity] = left
                else:
                    self.per_identity.pop(identity, None)


def _is_async(handler: grpc.RpcMethodHandler) -> bool:
    """Whether the handler's behaviour is a coroutine or async generator function."""
    behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


class Ticket:
    """One counted call; released once, when its handler ends."""

    def __init__(self, limiter: Limiter, identity: str | None) -> None:
        self._limiter = limiter
        self.identity = identity
        self._released = False

    def bind(self, identity: str) -> str | None:
        """Count the call against ``identity`` too (mTLS); None when it fits, else why not."""
        refused = self._limiter.add_identity(identity)
        if refused is None:
            with self._limiter.lock:
                self.identity = identity
        return refused

    def release(self) -> None:
        """Stop counting the call (idempotent)."""
        with self._limiter.lock:
            if self._released:
                return
            self._released = True
        self._limiter.release(self.identity)


class CallLimitInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls beyond ``max_calls`` in progress, or beyond ``max_per_identity`` for one identity.

    Parameters
    ----------
    max_calls, max_per_identity : int
        The caps (settings ``max_concurrent_calls`` and ``max_calls_per_identity``).
    token : str
        The server's bearer token when auth is on (without mTLS): every call that gets past the
        token check carries it, so all of them are this one identity (worked out once, here).
    certificate_identities : bool
        Identify callers by their client certificate (mTLS).
    pushback_ms : int
        The ``grpc-retry-pushback-ms`` sent with a refusal.
    idle_timeout : float
        Seconds a unary-request call has to deliver its one message.
    """

    def __init__(
        self, max_calls: int, max_per_identity: int, token: str = "", certificate_identities: bool = False, pushback_ms: int = 50, idle_timeout: float = 30.0
    ) -> None:
        self.idle_timeout = idle_timeout
        self.limiter = Limiter(max_calls, max_per_identity)
        self._identity = token_identity(token) if token and not certificate_identities else None
        self._certificates = certificate_identities
        self._trailers = ((PUSHBACK_KEY, str(max(0, pushback_ms))),)
        self._closing: str | None = None
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def close(self, why: str) -> None:
        """Refuse every new call with UNAVAILABLE (``why``) from now on: the server is shutting down.

        gRPC's own ``server.stop()`` stops taking calls from its queue, but a connection made in
        that moment can still have its call queued, and that call is cancelled only when the
        server ends. So shutdown closes here first and drains (:meth:`drained`) while the server
        still runs: every late call gets a clean UNAVAILABLE at once.
        """
        self._closing = why

    async def drained(self, timeout: float) -> bool:
        """Wait until no counted call is in progress, at most ``timeout`` s; whether none is."""
        deadline = time.monotonic() + timeout
        while self.limiter.total > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(DRAIN_POLL_SECONDS, left))
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's counted handler, built once per method (the call is counted when it starts)."""
        method = handler_call_details.method or ""
        limited = self._handlers.get(method)
        if limited is not None:
            return limited
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_METHODS):
            return handler
        limited = self._limited(handler, method.rsplit("/", 1)[-1])
        self._handlers[method] = limited  # only methods that have a handler: a bounded set
        return limited

    async def _admit(self, context: grpc.aio.ServicerContext) -> Ticket:
        """Count the call, or end it (UNAVAILABLE when closing, RESOURCE_EXHAUSTED beyond a cap) before any of its body is read."""
        if self._closing is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._closing)
        refused = self.limiter.acquire(self._identity)
        if refused is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused, trailing_metadata=self._trailers)
        ticket = Ticket(self.limiter, self._identity)
        if self._certificates:
            identity = certificate_identity(context)
            refused = None if identity is None else ticket.bind(identity)
            if refused is not None:
                ticket.release()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused, trailing_metadata=self._trailers)
        return ticket

    def _limited(self, handler: grpc.RpcMethodHandler, rpc: str) -> grpc.RpcMethodHandler:
        """The same method, request-streaming: counted from its start, released when it ends.

        Every kind is served request-streaming, so that the call is counted (or refused) as soon as
        its metadata is in, before gRPC reads any of its body: a unary-request handler would run
        only once the whole message had arrived. A unary request's one message then has to arrive
        within ``idle_timeout`` (:func:`read_one`).
        """
        if not _is_async(handler):
            raise TypeError(f"{rpc}: the server's handlers are coroutines or async generators")
        behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        one_message = not handler.request_streaming
        idle_timeout = self.idle_timeout
        admit = self._admit

        if not handler.response_streaming:

            async def run(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                ticket = await admit(context)
                try:
                    request = await read_one(context, idle_timeout, rpc) if one_message else requests
                    return await behaviour(request, context)
                finally:
                    ticket.release()

            return grpc.stream_unary_rpc_method_handler(run, handler.request_deserializer, handler.response_serializer)

        async def generate(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            ticket = await admit(context)
            try:
                request = await read_one(context, idle_timeout, rpc) if one_message else requests
                if inspect.isasyncgenfunction(behaviour):
                    async for response in behaviour(request, context):
                        yield response
                else:
                    await behaviour(request, context)
            finally:
                ticket.release()

        return grpc.stream_stream_rpc_method_handler(generate, handler.request_deserializer, handler.response_serializer)


async def read_one(context: grpc.aio.ServicerContext, idle_timeout: float, rpc: str) -> Any:
    """A unary request's one message: it must arrive within ``idle_timeout`` and be the only one.

    A call that breaks either rule is logged, counted and answered with a request id, like any
    other failure (DEADLINE_EXCEEDED for the timeout, INVALID_ARGUMENT otherwise).
    """
    failure: Exception | None = None
    request: Any = None
    try:
        async with asyncio.timeout(idle_timeout):  # not wait_for: it can swallow a cancel (3.11)
            request = await context.read()
            extra = grpc.aio.EOF if request is grpc.aio.EOF else await context.read()
    except TimeoutError:
        failure = IdleTimeout(
            f"the request message did not arrive within {idle_timeout:g} s: a unary "
            "message must arrive whole within idle_timeout_seconds (raise it on the server "
            "for slow links, or send large inputs chunked, which the client does above 4 MiB)"
        )
    else:
        if request is grpc.aio.EOF:
            failure = InvalidArgumentError("request", "the call ended before its request message")
        elif extra is not grpc.aio.EOF:
            failure = InvalidArgumentError("request", "a unary method takes exactly one request message")
    if failure is not None:
        await CallRecord(rpc, context, 0).fail(failure)
    return request
