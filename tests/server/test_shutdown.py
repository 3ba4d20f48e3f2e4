"""SIGTERM keeps its word: calls get ``grace_seconds``, then are cancelled, and the process exits
promptly (about grace + 1 s) with exit code 0, wisdom saved and no ERROR or traceback.

Each call is sized from a measurement on the server under test and the SIGTERM is sent once the
server's metrics show the calls admitted, so that nothing depends on this machine's speed.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import convserve
from convserve.errors import ConvserveError

from tests.conftest import start_server
from tests.serverwatch import kernel_lasting, metrics_url, wait_in_flight, wait_not_serving

IMAGE = np.random.default_rng(1).standard_normal((512, 512)) * (1 + 1j)  # 4 MiB of complex128
NO_RETRY = convserve.RetryPolicy(max_attempts=1)


DEFAULT_RETRY = convserve.RetryPolicy()


def _timed_call(target: str, kernel: np.ndarray, retry: convserve.RetryPolicy = DEFAULT_RETRY) -> tuple[str, float]:
    """Convolve IMAGE through a client with ``retry`` (default: the default policy); the outcome and when it came."""
    with convserve.Client(target, retry=retry, timeout=300) as client:
        try:
            client.convolve(IMAGE, kernel, method="direct")
            return "OK", time.monotonic()
        except ConvserveError as error:
            return error.code.name, time.monotonic()


def _stderr_records(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert "Traceback" not in text, text[-3000:]
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    return records


def test_sigterm_cancels_long_calls_after_the_grace_period_and_exits_promptly(tmp_path: Path) -> None:
    grace = 1.0
    wisdom = tmp_path / "wisdom"
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        server = start_server(
            "--grace-seconds",
            str(grace),
            "--workers",
            "2",
            "--max-concurrent-requests",
            "4",
            "--fftw-threads",
            "1",
            "--metrics-port",
            "0",
            "--fftw-wisdom",
            str(wisdom),
            "--log-level",
            "INFO",
            stderr=stderr,
        )
    try:
        url = metrics_url(server)
        kernel = kernel_lasting(server.target, IMAGE, 20 * grace)  # each call would run >= 20x the grace
        with concurrent.futures.ThreadPoolExecutor(3) as callers:
            long_calls = [callers.submit(_timed_call, server.target, kernel) for _ in range(2)]
            wait_in_flight(url, 2, ended=lambda: any(f.done() for f in long_calls))
            sigterm = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            wait_not_serving(server.target)
            late = _timed_call(server.target, kernel[:1, :1], retry=NO_RETRY)
            code = server.process.wait(timeout=60)
            exited = time.monotonic()
            outcomes = [future.result(timeout=120) for future in long_calls]
    finally:
        if server.process.poll() is None:
            server.process.kill()
    took = exited - sigterm
    print(
        f"\nSIGTERM to exit: {took:.2f} s with grace {grace} s; long calls: {[(name, round(at - sigterm, 2)) for name, at in outcomes]}; late call: {late[0]}"
    )
    assert code == 0
    assert late[0] == "UNAVAILABLE" and late[1] - sigterm < grace, late
    for name, at in outcomes:
        assert name in ("CANCELLED", "UNAVAILABLE"), outcomes  # not OK: they were stopped, not finished
        assert at - sigterm >= 0.8 * grace, outcomes  # they had their grace period
    assert took >= 0.8 * grace
    assert took < grace + 4.0, f"the process ran {took:.1f} s after SIGTERM (grace {grace} s)"
    assert wisdom.exists() and wisdom.stat().st_size > 0
    records = _stderr_records(log)
    messages = [str(r["message"]) for r in records]
    # Each call is recorded once as cancelled: by its token ("call failed", code CANCELLED) or by
    # gRPC's cancellation of the call ("call cancelled"), whichever came first.
    cancelled = [i for i, r in enumerate(records) if r.get("rpc") and (r.get("code") == "CANCELLED" or "cancel" in str(r["message"]))]
    assert len(cancelled) == 2 and all(records[i]["level"] == "INFO" for i in cancelled), messages
    assert messages.index("wisdom saved") > max(cancelled)  # the calls ended before the process did


def test_a_call_that_finishes_within_the_grace_period_returns_ok(tmp_path: Path) -> None:
    grace = 60.0
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        server = start_server(
            "--grace-seconds", str(grace), "--workers", "2", "--fftw-threads", "1", "--metrics-port", "0", "--log-level", "INFO", stderr=stderr
        )
    try:
        url = metrics_url(server)
        kernel = kernel_lasting(server.target, IMAGE, 2.0)
        expected = None
        with concurrent.futures.ThreadPoolExecutor(1) as callers:
            call = callers.submit(_timed_call, server.target, kernel)
            wait_in_flight(url, 1, ended=call.done)
            sigterm = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            running_at_sigterm = not call.done()
            name, finished = call.result(timeout=120)
            code = server.process.wait(timeout=60)
            exited = time.monotonic()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    print(f"\ncall {name} {finished - sigterm:.2f} s after SIGTERM, exit {exited - sigterm:.2f} s after (grace {grace} s)")
    assert expected is None and running_at_sigterm
    assert name == "OK" and code == 0
    assert exited - finished < 5.0, "the server waited after its last call had ended"
    assert exited - sigterm < grace / 2
    _stderr_records(log)


@pytest.mark.parametrize("grace", [0.0])
def test_grace_zero_cancels_at_once(grace: float, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        server = start_server(
            "--grace-seconds", str(grace), "--workers", "1", "--fftw-threads", "1", "--metrics-port", "0", "--log-level", "INFO", stderr=stderr
        )
    try:
        url = metrics_url(server)
        kernel = kernel_lasting(server.target, IMAGE, 20.0)
        with concurrent.futures.ThreadPoolExecutor(1) as callers:
            call = callers.submit(_timed_call, server.target, kernel)
            wait_in_flight(url, 1, ended=call.done)
            sigterm = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=60)
            exited = time.monotonic()
            name, _ = call.result(timeout=120)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    print(f"\nSIGTERM to exit: {exited - sigterm:.2f} s with grace 0")
    assert code == 0 and name in ("CANCELLED", "UNAVAILABLE")
    assert exited - sigterm < 3.0
    _stderr_records(log)


def test_work_that_ignores_its_cancellation_does_not_hold_the_shutdown() -> None:
    """A worker stuck in a library call without a cancellation point: shutdown waits a bounded
    time for it (and the process then exits without joining it)."""
    import asyncio
    import threading

    from convserve_server.app import stop_workers
    from convserve_server.admission.workers import WorkerPool

    release = threading.Event()

    async def scenario() -> tuple[bool, float]:
        pool = WorkerPool(1, 1, 1 << 20)
        stuck = asyncio.ensure_future(pool.run(release.wait, 30.0, nbytes=1))
        while pool.in_flight < 1:
            await asyncio.sleep(0.01)
        assert pool.cancel_running() == 1
        started = time.monotonic()
        stopped = await stop_workers(pool, 0.3)
        took = time.monotonic() - started
        release.set()
        await stuck
        return stopped, took

    stopped, took = asyncio.run(scenario())
    assert not stopped and 0.25 <= took < 2.0
