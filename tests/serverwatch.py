"""Test helpers that wait for events instead of sleeping: the server's metrics, its health, and
work sized from a measurement (so that no test depends on this machine's speed)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import convserve

from .conftest import RunningServer


def metrics_url(server: RunningServer) -> str:
    """The /metrics address a server started with ``--metrics-port`` >= 0 printed (its 2nd line)."""
    assert server.process.stdout is not None
    line = server.process.stdout.readline()
    assert "metrics on http://" in line, line
    return line.strip().rsplit(" ", 1)[-1]


def gauge(url: str, name: str) -> float:
    """The value of an unlabelled metric (for example ``convserve_in_flight_requests``)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_in_flight(url: str, count: int, timeout: float = 60.0, ended: Callable[[], bool] | None = None) -> None:
    """Return once the server has admitted at least ``count`` requests that are not finished.

    ``ended`` (for example a call's ``Future.done``) says when waiting is pointless: a call the
    test meant to catch running has already ended.
    """
    deadline = time.monotonic() + timeout
    while gauge(url, "convserve_in_flight_requests") < count:
        assert ended is None or not ended(), "a call ended before the server was seen running it"
        assert time.monotonic() < deadline, f"fewer than {count} requests in flight after {timeout} s"
        time.sleep(0.01)


def wait_not_serving(target: str, timeout: float = 30.0) -> None:
    """Return once health no longer answers SERVING (shutting down, or gone)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                return
            time.sleep(0.01)
    raise AssertionError(f"{target} still SERVING after {timeout} s")


def seconds_per_sample(target: str, kernel: np.ndarray, method: str = "direct", shortest: float = 0.2) -> float:
    """Measured compute time per signal sample of ``convolve(x, kernel)`` on this server.

    The signal doubles until one call takes ``shortest`` seconds (so that fixed costs do not
    count), after one warm-up call.
    """
    rng = np.random.default_rng(7)
    n = max(2 * kernel.size, 1 << 14)
    with convserve.Client(target, timeout=300) as client:
        client.convolve(rng.standard_normal(n), kernel, method=method)
        while True:
            x = rng.standard_normal(n)
            started = time.perf_counter()
            client.convolve(x, kernel, method=method)
            elapsed = time.perf_counter() - started
            if elapsed >= shortest or n >= 1 << 26:
                return elapsed / n
            n *= 2


def kernel_lasting(target: str, x: np.ndarray, seconds: float, shortest: float = 0.2) -> np.ndarray:
    """A complex ``(k, k)`` kernel that ``convolve(x, kernel, method="direct")`` needs about
    ``seconds`` for here, for a 2-D complex ``x``.

    Direct convolution of complex images is one pass over ``x`` per tap, with a cancellation check
    between taps, so its time grows with the taps and the data stays small. The kernel grows
    until one call takes ``shortest`` seconds, and its taps are then scaled to ``seconds``.
    """
    rng = np.random.default_rng(9)
    side = 3
    with convserve.Client(target, timeout=300) as client:
        client.convolve(x, np.ones((side, side), np.complex128), method="direct")  # warm-up
        while True:
            started = time.perf_counter()
            client.convolve(x, np.ones((side, side), np.complex128), method="direct")
            elapsed = time.perf_counter() - started
            if elapsed >= shortest or side >= 1024:
                break
            side *= 2
    side = max(1, round(side * (seconds / elapsed) ** 0.5))
    return rng.standard_normal((side, side)) + 1j * rng.standard_normal((side, side))


def signal_lasting(target: str, kernel: np.ndarray, seconds: float, method: str = "direct", most: int = 1 << 25) -> np.ndarray:
    """A float64 signal that ``convolve(signal, kernel, method=method)`` needs about ``seconds``
    for here (at most ``most`` samples).

    Direct convolution costs the same per sample at any length. The FFT methods cost more per
    sample on short signals (one transform of about the kernel's size), so for them the rate is
    measured again on a quarter of the predicted length and the length scaled from that.
    """
    n = int(seconds / seconds_per_sample(target, kernel, method))
    if method != "direct":
        quarter = np.random.default_rng(10).standard_normal(min(most, max(n // 4, kernel.size)))
        with convserve.Client(target, timeout=300) as client:
            started = time.perf_counter()
            client.convolve(quarter, kernel, method=method)
            n = int(quarter.size * seconds / (time.perf_counter() - started))
    return np.random.default_rng(8).standard_normal(min(most, max(n, kernel.size)))
