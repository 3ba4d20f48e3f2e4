"""``convserve.compat`` against a real server: configure() while another thread's call is in flight, and ndimage's native dtypes."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import convserve
import convserve.compat
from convserve.compat import ndimage, signal
from tests.conftest import RunningServer

nd = pytest.importorskip("scipy.ndimage")


def test_configure_lets_calls_in_flight_finish(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    started, go = threading.Event(), threading.Event()
    original = convserve.Client.convolve

    def held(self: convserve.Client, *arguments: Any, **options: Any) -> Any:
        started.set()
        assert go.wait(60)
        return original(self, *arguments, **options)

    monkeypatch.setattr(convserve.Client, "convolve", held)
    convserve.compat.configure(server.target)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(_outcome(signal.convolve, np.arange(4.0), np.ones(2))))
    worker.start()
    try:
        assert started.wait(60)
        convserve.compat.configure(server.target, timeout=30)  # replaces the client under the call
    finally:
        go.set()
        worker.join(60)
        convserve.compat.configure(None)
    assert len(results) == 1 and np.array_equal(results[0], [0.0, 1, 3, 5, 3])


def _outcome(function: Any, *arguments: Any) -> Any:
    try:
        return function(*arguments)
    except Exception as exc:  # the test shows it
        return exc


def test_ndimage_returns_native_dtypes_as_ndimage_does(server: RunningServer) -> None:
    convserve.compat.configure(server.target)
    try:
        x = np.arange(12, dtype=">i2").reshape(3, 4)
        got, expected = ndimage.convolve(x, np.ones((2, 2))), nd.convolve(x, np.ones((2, 2)))
    finally:
        convserve.compat.configure(None)
    assert got.dtype == expected.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
