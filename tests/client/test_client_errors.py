"""Failures outside the server reach the caller with a message that says what to change.

A proxy in front of the service answering with an HTTP status (413 at nginx's default 1 MiB body
limit, 502/503/504) or resetting the stream (RST_STREAM) raises :class:`convserve.ProxyError`, never
UNKNOWN or InternalError ("a server bug"); an unreachable server names the target and how to start
``convserve serve`` there. The proxy is a minimal HTTP/2 peer on a raw socket (no dependency): the
client preface, SETTINGS, then each request's HEADERS answered with an HPACK-literal ``:status``
(or an RST_STREAM).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import convserve

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING = 0x0, 0x1, 0x3, 0x4, 0x6
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
CHUNKED = np.ones(1_000_000)  # 8 MB: a chunked call
SMALL = np.ones(10)  # a unary call


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(index: int, value: bytes) -> bytes:
    """HPACK literal header field without indexing, its name from the static table (RFC 7541 6.2.2)."""
    return (bytes([index]) if index < 15 else bytes([15, index - 15])) + bytes([len(value)]) + value


class Http2Stub:
    """Answers every HTTP/2 request with ``status`` (and an HTML body), or resets it with ``reset_code``."""

    def __init__(self, status: int | None = None, reset_code: int | None = None) -> None:
        self.status, self.reset_code = status, reset_code
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    @staticmethod
    def _read(connection: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = connection.recv(size - len(data))
            if not more:
                raise EOFError
            data += more
        return data

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                assert self._read(connection, len(PREFACE)) == PREFACE
                connection.sendall(frame(SETTINGS, 0, 0))
                while True:
                    head = self._read(connection, 9)
                    kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                    payload = self._read(connection, int.from_bytes(head[:3], "big"))
                    if kind == SETTINGS and not flags & ACK:
                        connection.sendall(frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        connection.sendall(frame(PING, ACK, 0, payload))
                    elif kind == HEADERS:
                        self.requests += 1
                        connection.sendall(self._answer(stream))
            except (EOFError, OSError):
                return

    def _answer(self, stream: int) -> bytes:
        if self.reset_code is not None:
            return frame(RST_STREAM, 0, stream, struct.pack(">I", self.reset_code))
        headers = literal(8, str(self.status).encode()) + literal(31, b"text/html")  # :status, content-type
        body = f"<html><center><h1>{self.status}</h1></center><hr><center>nginx</center></html>".encode()
        return (
            frame(HEADERS, END_HEADERS, stream, headers) + frame(DATA, END_STREAM, stream, body) + frame(RST_STREAM, 0, stream, struct.pack(">I", 0))
        )  # as nginx does after an early answer


@pytest.fixture()
def proxy() -> Iterator[Any]:
    stubs: list[Http2Stub] = []

    def start(**answer: int) -> Http2Stub:
        stubs.append(Http2Stub(**answer))
        return stubs[-1]

    yield start
    for stub in stubs:
        stub.close()


def _error(target: str, signal: np.ndarray) -> convserve.ConvserveError:
    with convserve.Client(target, timeout=10) as client:
        with pytest.raises(convserve.ConvserveError) as caught:
            client.convolve(signal, [1.0, 2.0])
    return caught.value


@pytest.mark.parametrize("signal", [SMALL, CHUNKED], ids=["unary", "chunked"])
def test_http_413_from_a_proxy_says_to_raise_its_body_limit(proxy: Any, signal: np.ndarray) -> None:
    stub = proxy(status=413)
    error = _error(stub.target, signal)
    assert isinstance(error, convserve.ProxyError) and not isinstance(error, convserve.InternalError)
    assert error.http_status == 413
    assert "client_max_body_size 0" in str(error) and "413" in str(error)


@pytest.mark.parametrize("reset_code", [0, 2])
def test_a_reset_stream_is_a_proxy_error_not_a_server_bug(proxy: Any, reset_code: int) -> None:
    stub = proxy(reset_code=reset_code)
    for signal in (SMALL, CHUNKED):
        error = _error(stub.target, signal)
        assert isinstance(error, convserve.ProxyError) and not isinstance(error, convserve.InternalError)
        assert error.reset_code == reset_code and "reset the stream" in str(error)


def test_a_refused_stream_stays_unavailable_with_a_hint(proxy: Any) -> None:
    stub = proxy(reset_code=7)  # REFUSED_STREAM: any HTTP/2 peer, the server too, beyond its stream limit
    error = _error(stub.target, SMALL)
    assert isinstance(error, convserve.UnavailableError) and not isinstance(error, convserve.ProxyError)
    assert "--max-concurrent-streams" in str(error)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_error_is_a_proxy_error_and_still_unavailable(proxy: Any, status: int) -> None:
    stub = proxy(status=status)
    error = _error(stub.target, SMALL)
    assert isinstance(error, convserve.ProxyUnavailableError) and isinstance(error, convserve.UnavailableError)
    assert error.http_status == status and "proxy" in str(error)
    assert stub.requests == convserve.RetryPolicy().max_attempts  # retried like any UNAVAILABLE


def test_asyncio_client_reports_proxy_errors_too(proxy: Any) -> None:
    stub = proxy(status=413)

    async def call() -> None:
        async with convserve.AsyncClient(stub.target, timeout=10) as client:
            await client.convolve(CHUNKED, [1.0, 2.0])

    with pytest.raises(convserve.ProxyError, match="client_max_body_size"):
        asyncio.run(call())


@pytest.fixture()
def closed_port() -> Iterator[int]:
    """A loopback port that is bound (so nothing else takes it) but does not listen: connections are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def test_an_unreachable_server_is_named_with_how_to_start_it(closed_port: int) -> None:
    target = f"127.0.0.1:{closed_port}"
    with convserve.Client(target, timeout=10) as client:
        with pytest.raises(convserve.UnavailableError) as caught:
            client.convolve(SMALL, [1.0])
    message = str(caught.value)
    assert f"cannot reach the convserve server at {target}" in message
    assert f"convserve serve --host 127.0.0.1 --port {closed_port}" in message

    async def call() -> None:
        async with convserve.AsyncClient(target, timeout=10) as client:
            await client.convolve(CHUNKED, [1.0])

    with pytest.raises(convserve.UnavailableError, match=f"start it there with `convserve serve --host 127.0.0.1 --port {closed_port}`"):
        asyncio.run(call())
