"""Tiny calls computed on the event loop: which ones, and that they are still admitted and counted."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest

import convserve
from convserve import _options
from convserve.v1 import convserve_pb2 as pb
from convserve_server.admission import inline
from convserve_server.admission.workers import WorkerPool
from convserve_server.errors import LimitExceeded, Overloaded

from tests.conftest import start_server, stop_server


def _signal(n1: tuple[int, ...], n2: tuple[int, ...]) -> pb.SignalRequest:
    return _options.signal_request(np.zeros(n1), np.zeros(n2), "full", "auto", None, "fill", 0, None)


def test_only_tiny_signal_calls_run_inline() -> None:
    assert inline.signal_work(_signal((6,), (1,)))
    assert inline.signal_work(_signal((1000,), (3,)))
    assert inline.signal_work(_signal((16, 16), (3, 3)))
    assert not inline.signal_work(_signal((2**17,), (1,)))  # 1 MiB of float64: the pool
    assert not inline.signal_work(_signal((200,), (200,)))  # 40,000 multiply-adds
    assert not inline.signal_work(_signal((2, 128), (1, 100)))  # N-D with more taps than a few passes


def test_layers_never_run_inline() -> None:
    from convserve_server.transport import rpcs

    tiny = _options.conv_layer_request(np.zeros((1, 1, 8, 8), np.float32), np.zeros((2, 1, 3, 3), np.float32), None, 1, 0, 1, 1, "zeros", None, None)
    assert not rpcs.CONV_LAYER.inline(tiny, None) and not rpcs.CONV_TRANSPOSE.inline(tiny, None)
    assert rpcs.CONVOLVE.inline(_signal((6,), (1,)), None)


def test_inline_work_is_admitted_like_pooled_work() -> None:
    pool = WorkerPool(workers=1, max_in_flight=1, memory_budget=1000)
    try:
        assert pool.run_inline(lambda a, b: a + b, 2, 3, nbytes=100) == 5
        assert pool.in_flight == 0 and pool.reserved_bytes == 0
        with pytest.raises(LimitExceeded):
            pool.run_inline(lambda: None, nbytes=1001)
        held = pool.reserve(10)
        with pytest.raises(Overloaded):
            pool.run_inline(lambda: None, nbytes=1)
        held.release()

        def fails() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError):
            pool.run_inline(fails, nbytes=10)
        assert pool.in_flight == 0 and pool.reserved_bytes == 0
    finally:
        pool.shutdown()


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_tiny_call_on_a_full_server_is_refused_not_run_past_the_limit() -> None:
    """A long call holds the only slot; a tiny call (inline) must be refused by admission meanwhile."""
    server = start_server("--workers", "1", "--max-concurrent-requests", "1", "--metrics-port", "0")
    assert server.process.stdout is not None
    url = server.process.stdout.readline().strip().rsplit(" ", 1)[-1]
    try:
        with convserve.Client(server.target, timeout=600) as client:
            kernel = np.ones(2001)
            started = time.perf_counter()
            client.convolve(np.ones(50_000), kernel, method="direct")
            per_sample = (time.perf_counter() - started) / 50_000
            long_input = np.ones(int(min(4e7, max(50_000, 5 / max(per_sample, 1e-9)))))  # about 5 s of work, so it outlasts the tiny call
            done = threading.Event()
            worker = threading.Thread(target=lambda: (client.convolve(long_input, kernel, method="direct"), done.set()))
            worker.start()
            while _metric(url, "convserve_in_flight_requests") < 1:
                assert worker.is_alive(), "the long call ended before it was seen running"
                time.sleep(0.01)
            before = _metric(url, 'convserve_admission_rejections_total{reason="busy"}')
            try:
                client.convolve(np.arange(6.0), [1.0])
                outcome = "OK"
            except convserve.ResourceExhaustedError:
                outcome = "RESOURCE_EXHAUSTED"
            refused = _metric(url, 'convserve_admission_rejections_total{reason="busy"}') - before
            still_running = not done.is_set()
            worker.join()
        assert still_running, "the long call did not outlast the tiny one; nothing was tested"
        assert refused >= 1, "the tiny call ran while the only slot was taken"
        assert outcome == "RESOURCE_EXHAUSTED"
    finally:
        stop_server(server)
