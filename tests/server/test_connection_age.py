"""max_connection_age_seconds: connections are recycled (clients look the name up again); calls in progress finish."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

import convserve

from tests.conftest import start_server, stop_server


def test_connections_are_recycled_and_calls_in_progress_finish() -> None:
    server = start_server("--max-connection-age-seconds", "0.5")
    try:
        with convserve.Client(server.target, timeout=120) as client:
            states: list[grpc.ChannelConnectivity] = []
            recycled = threading.Event()

            def watch(state: grpc.ChannelConnectivity) -> None:
                states.append(state)
                if grpc.ChannelConnectivity.READY in states and state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
                    recycled.set()

            client._channel.subscribe(watch, try_to_connect=False)
            kernel = np.ones(2001)
            started = time.perf_counter()
            client.convolve(np.ones(50_000), kernel, method="direct")
            per_sample = (time.perf_counter() - started) / 50_000
            long_input = np.ones(int(min(2e7, max(50_000, 2.0 / max(per_sample, 1e-9)))))  # about 2 s: past the connection's age
            result = client.convolve(long_input, kernel, method="direct")
            assert result.shape == (len(long_input) + 2000,) and float(result[5000]) == 2001.0
            assert recycled.wait(30), f"the connection was never closed by the server: states {states}"
            assert client.convolve([1.0, 2.0], [1.0]).tolist() == [1.0, 2.0]  # a new connection serves the next call
            client._channel.unsubscribe(watch)
    finally:
        stop_server(server)
