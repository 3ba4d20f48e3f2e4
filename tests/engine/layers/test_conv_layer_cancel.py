"""The ONNX Runtime ConvLayer path stops soon after its request is cancelled.

Served calls run under a cancellation token; ORT has no cancellation point of ours, so the
layer runs in pieces with checks between them and the running piece is terminated through
``RunOptions.terminate``. The work is sized from a measurement, never a fixed duration.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from convserve_server.engine import cancellation, conv_layer
from convserve_server.engine.layers import onnx
from convserve_server.engine.cancellation import Cancelled

pytestmark = pytest.mark.skipif(not onnx.available(), reason="onnxruntime is not installed")
RNG = np.random.default_rng(0)


def _served(function, token: threading.Event):  # type: ignore[no-untyped-def]
    with cancellation.scope(token):
        return function()


@pytest.mark.parametrize(
    "groups, pool, relu, geometry",
    [
        (1, None, False, {"padding": 1}),
        (2, None, True, {"padding": 2, "stride": 2, "dilation": 2}),
        (1, None, False, {"padding": "same", "dilation": (2, 1)}),
        (1, None, False, {"padding": 0, "stride": 3}),
        (2, {"kind": "max", "kernel_size": 2}, True, {"padding": 1}),
        (4, {"kind": "avg", "kernel_size": 3, "stride": 2}, False, {"padding": 1}),
        (1, {"kind": "max", "kernel_size": 3, "stride": 2, "padding": 1}, True, {"padding": (0, 1)}),
    ],
)
def test_pieces_give_the_whole_layer(monkeypatch: pytest.MonkeyPatch, groups: int, pool: object, relu: bool, geometry: dict[str, object]) -> None:
    x = RNG.standard_normal((3, 8, 21, 20)).astype(np.float32)
    w = RNG.standard_normal((12, 8 // groups, 4, 3)).astype(np.float32)
    b = RNG.standard_normal(12).astype(np.float32)
    arguments = {**geometry, "groups": groups, "pool": pool, "activation": "relu" if relu else None, "path": "onnxruntime"}
    whole = conv_layer(x, w, b, **arguments)
    monkeypatch.setattr(onnx, "CHUNK_MACS", 10_000, raising=False)  # forces batch and channel/group pieces
    pieces = _served(lambda: conv_layer(x, w, b, **arguments), threading.Event())
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5)


def test_a_cancelled_onnxruntime_layer_stops_far_before_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    w = RNG.standard_normal((64, 64, 3, 3)).astype(np.float32)
    monkeypatch.setattr(onnx, "CHUNK_MACS", 64 * 128 * 128 * 64 * 9, raising=False)  # one sample per piece, whatever the speed
    sample = RNG.standard_normal((1, 64, 128, 128)).astype(np.float32)
    _, info = conv_layer(sample, w, padding=1, return_info=True)
    assert info.method == "onnxruntime"
    started = time.perf_counter()
    _served(lambda: conv_layer(sample, w, padding=1), threading.Event())
    one = time.perf_counter() - started
    x = np.repeat(sample, max(8, int(1.0 / max(one, 1e-3))), axis=0)  # about a second of work, 8+ pieces
    started = time.perf_counter()
    _served(lambda: conv_layer(x, w, padding=1), threading.Event())
    full = time.perf_counter() - started

    token = threading.Event()
    outcome: dict[str, float] = {}

    def call() -> None:
        try:
            _served(lambda: conv_layer(x, w, padding=1), token)
        except Cancelled:
            outcome["stopped"] = time.perf_counter()

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(full / 5)  # a fraction of the measured run: the call is computing
    cancelled_at = time.perf_counter()
    token.set()
    worker.join(timeout=30 * full)
    assert "stopped" in outcome, "the cancelled call ran to its end"
    latency = outcome["stopped"] - cancelled_at
    assert latency < full / 2, f"stopped {latency:.3f} s after the cancel; the whole run takes {full:.3f} s"


def test_a_layer_with_one_output_row_is_cut_by_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    x = RNG.standard_normal((2, 6, 3, 30)).astype(np.float32)
    w = RNG.standard_normal((10, 3, 3, 5)).astype(np.float32)
    whole = conv_layer(x, w, groups=2, path="onnxruntime")
    monkeypatch.setattr(onnx, "CHUNK_MACS", 1_000, raising=False)
    np.testing.assert_allclose(_served(lambda: conv_layer(x, w, groups=2, path="onnxruntime"), threading.Event()), whole, rtol=1e-5, atol=1e-5)
