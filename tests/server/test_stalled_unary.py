"""Unary calls that send their metadata and then stall cannot hold the server's call slots.

gRPC runs a unary handler only once the whole message is in, so before this a caller could open
``max_concurrent_calls`` unary calls, send nothing more, and lock every other caller out. Each
unary method is now served by a request-streaming wrapper that must get its one message within
``idle_timeout_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import convserve
from convserve.v1 import convserve_pb2 as pb

from tests.conftest import RunningServer, start_server, stop_server

SLOTS = 4
METHOD = "/convserve.v1.ConvolutionService/Convolve"


@pytest.fixture(scope="module")
def capped_server() -> Iterator[RunningServer]:
    server = start_server("--max-concurrent-calls", str(SLOTS), "--idle-timeout-seconds", "1")
    yield server
    assert stop_server(server) == 0


def _raw_unary(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """The Convolve method called with a request iterator: the way to send no message, or two."""
    return channel.stream_unary(METHOD, request_serializer=pb.SignalRequest.SerializeToString, response_deserializer=pb.SignalResponse.FromString)


def test_stalled_unary_calls_end_at_the_idle_timeout_and_free_their_slots(capped_server: RunningServer) -> None:
    release = threading.Event()

    def nothing() -> Iterator[pb.SignalRequest]:
        release.wait(120)
        return
        yield  # a generator that sends no message

    outcomes: list[str] = []
    ended: list[float] = []
    started = time.monotonic()

    def stall() -> None:
        with grpc.insecure_channel(capped_server.target) as channel:
            try:
                _raw_unary(channel)(nothing(), timeout=120)
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(f"{error.code().name}: {error.details()}")
            ended.append(time.monotonic() - started)

    stallers = [threading.Thread(target=stall) for _ in range(SLOTS)]
    for thread in stallers:
        thread.start()
    try:
        for thread in stallers:
            thread.join(60)  # far below their own 120 s deadline
        assert len(outcomes) == SLOTS, "stalled calls were still holding the server's slots after 60 s"
        assert all(o.startswith("DEADLINE_EXCEEDED") and "idle_timeout_seconds" in o for o in outcomes), outcomes
    finally:
        release.set()
    with convserve.Client(capped_server.target) as client:  # the default client gets in again
        np.testing.assert_allclose(client.convolve([1.0, 2.0], [1.0, 1.0]), [1.0, 3.0, 2.0])


def test_a_unary_method_takes_exactly_one_message(capped_server: RunningServer) -> None:
    request = pb.SignalRequest(in1=convserve.codec.encode(np.ones(3)), in2=convserve.codec.encode(np.ones(2)))
    with grpc.insecure_channel(capped_server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            _raw_unary(channel)(iter([request, request]), timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert "one request message" in (raised.value.details() or "")
        assert "x-request-id" in dict(raised.value.trailing_metadata() or ())  # logged and traceable like any failure
        response = _raw_unary(channel)(iter([request]), timeout=30)  # one message: served as unary
        np.testing.assert_allclose(convserve.codec.decode(response.result), np.convolve(np.ones(3), np.ones(2)))
