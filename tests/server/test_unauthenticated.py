"""Callers without the token are refused at the metadata: the server never buffers their bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import convserve
from convserve_server.transport import security
from convserve_server.settings import Settings

from tests.conftest import RunningServer, start_server, stop_server

MIB = 1 << 20
BODY = 256 * MIB
CALLS = 8
CONVOLVE = "/convserve.v1.ConvolutionService/Convolve"
CHUNKED = "/convserve.v1.ConvolutionService/ConvolveChunked"
# Separate connections: channels with different arguments never share one.
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def token_server() -> Iterator[RunningServer]:
    server = start_server("--auth-token", "s3cret", "--log-level", "WARNING")
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def payload() -> bytes:
    """One 256 MiB body shared by every call (a field-1 tag, then zeros)."""
    return b"\x0a" + bytes(BODY - 1)


def memory_mib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) // 1024
    return values


def send(target: str, index: int, method: str, payload: bytes, codes: list[grpc.StatusCode]) -> None:
    """One unauthenticated call on its own connection: unary (one message) or chunked (1 MiB parts)."""
    with grpc.insecure_channel(target, options=OPTIONS + [("convserve.test.connection", index)]) as channel:
        try:
            if method == CONVOLVE:
                channel.unary_unary(method)(payload, timeout=60)
            else:
                parts = (payload[i : i + MIB] for i in range(0, len(payload), MIB))
                for _ in channel.stream_stream(method)(parts, timeout=60):
                    pass
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())


@pytest.mark.parametrize("method", [CONVOLVE, CHUNKED], ids=["unary", "chunked"])
def test_big_unauthenticated_calls_are_refused_before_their_bodies(token_server: RunningServer, payload: bytes, method: str) -> None:
    pid = token_server.process.pid
    before = memory_mib(pid)["VmRSS"]
    codes: list[grpc.StatusCode] = []
    threads = [threading.Thread(target=send, args=(token_server.target, i, method, payload, codes)) for i in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * CALLS
    # What one connection can make the server hold unasked (its streams' HTTP/2 windows), per connection.
    bound = security.max_unread_bytes_per_connection(Settings()) // MIB
    growth = memory_mib(pid)["VmHWM"] - before
    assert growth < CALLS * bound, f"server peak RSS grew {growth} MiB for {CALLS} refused {BODY // MIB} MiB calls"
    # Health stays open and serving; the token still works.
    with grpc.insecure_channel(token_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with convserve.Client(token_server.target, token="s3cret", timeout=30) as client:
        np.testing.assert_allclose(client.convolve(np.ones(3), np.ones(2)), [1, 2, 2, 1])


@pytest.mark.parametrize("method", [CONVOLVE, CHUNKED, "/convserve.v1.ConvolutionService/NoSuchMethod"])
def test_the_refusal_does_not_depend_on_the_method(token_server: RunningServer, method: str) -> None:
    codes: list[grpc.StatusCode] = []
    send(token_server.target, 99, method, b"\x0a\x00", codes)
    assert codes == [grpc.StatusCode.UNAUTHENTICATED]


def test_transport_options_bound_the_windows() -> None:
    options = dict(security.transport_options(Settings()))
    assert options["grpc.http2.bdp_probe"] == 0  # BDP probing would grow a stream's window to 1 GiB
    assert options["grpc.http2.lookahead_bytes"] * Settings().max_concurrent_streams == security.max_unread_bytes_per_connection(Settings())
    assert security.max_unread_bytes_per_connection(Settings()) <= 64 * MIB
