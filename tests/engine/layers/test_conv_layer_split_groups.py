"""Grouped 2-D layers with large kernels run on ONNX Runtime as one dense convolution per group, and still match torch.

Checked against ``torch.nn.functional.conv2d`` (then ReLU and max/avg pooling) with and without
bias, over strides, dilations, padding modes and the served path's pieces (whole groups per
piece); and the rule (:func:`convserve_server.engine.layers.onnx.split_groups`) keeps small
kernels, depthwise layers and 3-D layers grouped.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from convserve_server.engine import cancellation
from convserve_server.engine.layers import onnx
from convserve_server.engine.layers.conv_layer import conv_layer

pytestmark = pytest.mark.skipif(not onnx.available(), reason="onnxruntime is not installed")
RNG = np.random.default_rng(9)


def _torch(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, groups: int, relu: bool, pool: dict[str, Any] | None, **kw: Any) -> np.ndarray:
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b), groups=groups, **kw)
    if relu:
        y = torch.relu(y)
    if pool is not None:
        fn = torch.nn.functional.max_pool2d if pool["kind"] == "max" else torch.nn.functional.avg_pool2d
        y = fn(y, pool["kernel_size"])
    return np.asarray(y.numpy())


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))


EPILOGUES = [(True, False, None), (False, True, {"kind": "max", "kernel_size": 2}), (True, True, {"kind": "avg", "kernel_size": 2})]


@pytest.mark.parametrize("groups,c_in,c_out,k", [(2, 16, 32, 10), (2, 32, 16, 6), (4, 16, 64, 7), (3, 12, 6, 6)])
@pytest.mark.parametrize("bias,relu,pool", EPILOGUES)
@pytest.mark.parametrize("geometry", [{"padding": 3}, {"stride": 3, "padding": 2}, {"dilation": 2, "padding": (1, 4)}])
def test_split_groups_match_torch(groups: int, c_in: int, c_out: int, k: int, bias: bool, relu: bool, pool: Any, geometry: dict[str, Any]) -> None:
    x = RNG.standard_normal((2, c_in, 37, 33)).astype(np.float32)
    w = RNG.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
    b = RNG.standard_normal(c_out).astype(np.float32) if bias else None
    assert onnx.split_groups(groups, w.shape)
    got, info = conv_layer(x, w, b, groups=groups, activation="relu" if relu else None, pool=pool, return_info=True, **geometry)
    assert info.method == "onnxruntime"
    _close(got, _torch(x, w, b, groups, relu, pool, **geometry))


def test_split_groups_with_a_padding_mode_match_torch() -> None:
    x = RNG.standard_normal((1, 8, 30, 30)).astype(np.float32)
    w = RNG.standard_normal((8, 4, 7, 7)).astype(np.float32)
    got = conv_layer(x, w, None, groups=2, padding=3, padding_mode="reflect", path="onnxruntime")
    want = _torch(np.pad(x, [(0, 0), (0, 0), (3, 3), (3, 3)], mode="reflect"), w, None, 2, False, None)
    _close(got, want)


def test_served_pieces_of_split_groups_give_the_whole_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    x = RNG.standard_normal((3, 16, 24, 24)).astype(np.float32)
    w = RNG.standard_normal((16, 4, 6, 6)).astype(np.float32)
    b = RNG.standard_normal(16).astype(np.float32)
    arguments: dict[str, Any] = {"padding": 2, "groups": 4, "activation": "relu"}
    whole = conv_layer(x, w, b, **arguments)
    monkeypatch.setattr(onnx, "CHUNK_MACS", 10_000, raising=False)  # batch and group pieces
    with cancellation.scope(threading.Event()):
        pieces = conv_layer(x, w, b, **arguments)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5)
    _close(whole, _torch(x, w, b, 4, True, None, padding=2))


@pytest.mark.parametrize(
    "groups,shape,split",
    [
        (2, (32, 8, 6, 6), True),
        (1, (32, 16, 7, 7), False),  # dense already
        (4, (16, 4, 5, 5), False),  # 5x5: slower split (0.28 against 0.47 ms)
        (64, (64, 1, 7, 7), False),  # depthwise: MLAS has its own kernel
        (2, (16, 8, 6, 6, 6), False),  # 3-D
        (2, (16, 8, 1, 36), False),  # a 1-D layer lifted to 2-D
    ],
)
def test_the_split_rule(groups: int, shape: tuple[int, ...], split: bool) -> None:
    assert onnx.split_groups(groups, shape) is split
