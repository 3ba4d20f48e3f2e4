"""Overload, deadlines, cancellation, retries and SIGTERM with calls in flight (loopback only)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import convserve
from convserve.errors import ConvserveError

from tests.conftest import RunningServer, start_server, status_kib, stop_server
from tests.serverwatch import metrics_url, signal_lasting, wait_in_flight, wait_not_serving

# Direct convolution with this kernel costs the same per signal sample all along the signal; the
# tests size the signal from a measurement on the server under test (serverwatch.signal_lasting).
SLOW_KERNEL = np.random.default_rng(1).standard_normal(3001)
NO_RETRY = convserve.RetryPolicy(max_attempts=1)


def _busy(server: RunningServer, url: str, seconds: float = 1.0) -> concurrent.futures.Future[object]:
    """Start one call on ``server`` that computes for about ``seconds`` (measured here) in the
    background; return once the server's metrics show it admitted."""
    x = signal_lasting(server.target, SLOW_KERNEL, seconds)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    client = convserve.Client(server.target, retry=NO_RETRY, timeout=60)
    future = pool.submit(client.convolve, x, SLOW_KERNEL, method="direct")
    future.add_done_callback(lambda _: client.close())
    pool.shutdown(wait=False)
    wait_in_flight(url, 1, ended=future.done)
    return future


@pytest.fixture()
def small_server() -> Iterator[RunningServer]:
    """One worker, one admitted request at a time, a 300 MB budget and a 1 s pushback."""
    server = start_server(
        "--workers",
        "1",
        "--max-concurrent-requests",
        "1",
        "--memory-budget-bytes",
        str(300 * 2**20),
        "--busy-pushback-ms",
        "1000",
        "--fftw-threads",
        "1",
        "--metrics-port",
        "0",
    )
    yield server
    assert stop_server(server) == 0


@pytest.fixture()
def small_metrics(small_server: RunningServer) -> str:
    """The /metrics address of ``small_server``."""
    return metrics_url(small_server)


CALLERS = 12


def test_overload_replies_ok_or_resource_exhausted_and_memory_stays_bounded() -> None:
    budget = 200 * 2**20
    server = start_server("--workers", "2", "--max-concurrent-requests", "4", "--memory-budget-bytes", str(budget), "--fftw-threads", "1")
    try:
        pid = server.process.pid
        baseline = status_kib(pid, "VmRSS") * 1024
        x = np.random.default_rng(2).standard_normal(1_000_000)
        h = np.random.default_rng(3).standard_normal(257)  # ~0.1 s of direct work per call
        expected = np.convolve(x, h)
        outcomes: list[str] = []
        rejection_ms: list[float] = []

        def call(_: int) -> None:
            with convserve.Client(server.target, retry=NO_RETRY, timeout=120) as client:
                started = time.perf_counter()
                try:
                    result = client.convolve(x, h, method="direct")
                    assert np.allclose(result, expected)
                    outcomes.append("OK")
                except ConvserveError as error:
                    outcomes.append(error.code.name)
                    rejection_ms.append(1e3 * (time.perf_counter() - started))

        with concurrent.futures.ThreadPoolExecutor(CALLERS) as burst:
            list(burst.map(call, range(4 * CALLERS)))
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes.count("RESOURCE_EXHAUSTED") > 0 and outcomes.count("OK") >= 4
        peak = status_kib(pid, "VmHWM") * 1024
        # Allowance outside the admission budget: for every concurrent caller gRPC holds its received
        # request (the message bytes and the parsed message) and the reply being serialized, and
        # glibc keeps freed blocks of that size in its arenas (measured: about 3 request sizes per
        # caller), plus 128 MiB for the interpreter's and libraries' own growth.
        allowance = CALLERS * 3 * x.nbytes + 128 * 2**20
        assert peak - baseline <= budget + allowance, (peak - baseline, budget, allowance)
        print(
            f"\noverload: {outcomes.count('OK')} OK, {outcomes.count('RESOURCE_EXHAUSTED')} RESOURCE_EXHAUSTED, "
            f"median rejection {np.median(rejection_ms):.1f} ms, peak RSS growth {(peak - baseline) / 2**20:.0f} MiB "
            f"(budget {budget / 2**20:.0f} MiB)"
        )
        with convserve.Client(server.target, timeout=60) as client:  # after the burst every request succeeds
            for _ in range(3):
                assert np.allclose(client.convolve(x, h), expected)
    finally:
        assert stop_server(server) == 0


def test_request_that_can_never_fit_is_refused_without_retry(small_server: RunningServer) -> None:
    with convserve.Client(small_server.target, timeout=30) as client:
        with pytest.raises(convserve.ResourceExhaustedError) as raised:
            client.convolve(np.ones(4_000_000), np.ones(4_000_000), method="fft")
    assert raised.value.retry_pushback_ms == -1
    assert "budget" in raised.value.details and str(300 * 2**20) in raised.value.details


def test_busy_server_pushes_back_and_the_client_retries(small_server: RunningServer, small_metrics: str) -> None:
    # Busy for about 1 s: the patient client below retries for about 4 s (5 attempts, 1 s pushback).
    slow = _busy(small_server, small_metrics, 1.0)
    with convserve.Client(small_server.target, retry=NO_RETRY, timeout=30) as impatient:
        with pytest.raises(convserve.ResourceExhaustedError) as raised:
            impatient.convolve([1.0, 2.0], [1.0])
        assert raised.value.retry_pushback_ms == 1000
    # Small requests are retried by gRPC's retry policy, large ones by the client: both honour the pushback.
    with convserve.Client(small_server.target, retry=convserve.RetryPolicy(max_attempts=5), timeout=60) as patient:
        np.testing.assert_allclose(patient.convolve([1.0, 2.0], [1.0]), [1.0, 2.0])
        large = np.ones(100_000)
        assert patient.convolve(large, [1.0]).sum() == 100_000
    slow.result(timeout=60)


def test_invalid_argument_is_not_retried(small_server: RunningServer) -> None:
    calls = []
    policy = convserve.RetryPolicy(max_attempts=5)
    with convserve.Client(small_server.target, retry=policy, timeout=30) as client:
        started = time.perf_counter()
        with pytest.raises(convserve.InvalidArgumentError):
            client.convolve(np.ones((3, 5)), np.ones((5, 3)), mode="valid")
        calls.append(time.perf_counter() - started)
    assert calls[0] < 1.0
    error = ConvserveError("x", code=grpc.StatusCode.INVALID_ARGUMENT)
    assert policy.delay(0, error) is None
    assert policy.delay(0, ConvserveError("x", code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_pushback_ms=-1)) is None
    assert policy.delay(0, ConvserveError("x", code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_pushback_ms=20)) == 0.02
    assert policy.delay(4, ConvserveError("x", code=grpc.StatusCode.UNAVAILABLE)) is None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(pid: int, limit: float = 10.0) -> float:
    """Seconds until the process stops burning CPU (less than 5% over 100 ms)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        before = _cpu_seconds(pid)
        time.sleep(0.1)
        if _cpu_seconds(pid) - before < 0.005:
            return time.perf_counter() - started
    raise AssertionError(f"the server kept computing for {limit:.1f} s")


# How long the calls below would compute if nothing stopped them (measured on the server under
# test): long against the deadline or the cancel, so that stopping early is what the test sees.
UNSTOPPED_SECONDS = 4.0
# Longer than the upload: overlap-add computes about as fast per byte as gRPC moves the bytes, so
# its signal is large (up to 256 MiB); with 65537 taps it runs in blocks, checking between them.
DEADLINE_SECONDS = 1.0


@pytest.fixture()
def roomy_server() -> Iterator[RunningServer]:
    """One worker, one admitted request at a time, and room for a few seconds of overlap-add."""
    server = start_server(
        "--workers", "1", "--max-concurrent-requests", "1", "--memory-budget-bytes", str(4 * 2**30), "--fftw-threads", "1", "--metrics-port", "0"
    )
    yield server
    assert stop_server(server) == 0


@pytest.fixture()
def roomy_metrics(roomy_server: RunningServer) -> str:
    """The /metrics address of ``roomy_server``."""
    return metrics_url(roomy_server)


@pytest.mark.parametrize("method", ["direct", "overlap_add"])
def test_deadline_stops_the_work_and_frees_the_budget(roomy_server: RunningServer, method: str) -> None:
    h = np.random.default_rng(6).standard_normal(3001 if method == "direct" else 65_537)
    x = signal_lasting(roomy_server.target, h, UNSTOPPED_SECONDS, method=method)
    with convserve.Client(roomy_server.target, retry=NO_RETRY) as client:
        with pytest.raises(convserve.DeadlineExceededError):
            client.convolve(x, h, method=method, timeout=DEADLINE_SECONDS)
        # Idle well before the call would have ended by itself.
        idle_after = _wait_idle(roomy_server.process.pid, limit=UNSTOPPED_SECONDS / 2)
        print(f"\n{method}: the server was idle {idle_after * 1e3:.0f} ms after the deadline")
        # The budget was released: the next request is admitted (max_concurrent_requests is 1).
        np.testing.assert_allclose(client.convolve([1.0, 1.0], [1.0, 1.0], timeout=10), [1.0, 2.0, 1.0])


def test_cancel_stops_the_work(roomy_server: RunningServer, roomy_metrics: str) -> None:
    import asyncio

    x = signal_lasting(roomy_server.target, SLOW_KERNEL, UNSTOPPED_SECONDS)

    async def cancel_while_running() -> None:
        async with convserve.AsyncClient(roomy_server.target, retry=NO_RETRY, timeout=60) as client:
            task = asyncio.ensure_future(client.convolve(x, SLOW_KERNEL, method="direct"))
            await asyncio.to_thread(wait_in_flight, roomy_metrics, 1, 60.0, task.done)  # the server computes it
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_while_running())
    _wait_idle(roomy_server.process.pid, limit=UNSTOPPED_SECONDS / 2)
    with convserve.Client(roomy_server.target, timeout=10) as client:
        np.testing.assert_allclose(client.convolve([1.0], [2.0]), [2.0])


def test_sigterm_finishes_calls_in_flight_and_refuses_new_ones() -> None:
    server = start_server("--workers", "2", "--max-concurrent-requests", "4", "--grace-seconds", "60", "--fftw-threads", "1", "--metrics-port", "0")
    url = metrics_url(server)
    x = signal_lasting(server.target, SLOW_KERNEL, 1.0)  # three of them on two workers: about 2 s
    expected = np.convolve(x, SLOW_KERNEL)
    with concurrent.futures.ThreadPoolExecutor(3) as callers:
        futures = [callers.submit(_call_slow, server.target, x) for _ in range(3)]
        wait_in_flight(url, 3, ended=lambda: any(f.done() for f in futures))
        server.process.send_signal(signal.SIGTERM)
        wait_not_serving(server.target)
        with convserve.Client(server.target, retry=NO_RETRY, timeout=5) as late:
            with pytest.raises(convserve.UnavailableError):
                late.convolve([1.0], [1.0])
        for future in futures:
            np.testing.assert_allclose(future.result(timeout=120), expected, atol=1e-9)
    assert server.process.wait(timeout=60) == 0


def _call_slow(target: str, x: np.ndarray) -> np.ndarray:
    with convserve.Client(target, retry=NO_RETRY, timeout=120) as client:
        return client.convolve(x, SLOW_KERNEL, method="direct")
