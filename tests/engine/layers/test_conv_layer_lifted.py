"""1-D layers on ONNX Runtime run as 2-D layers of height 1 (MLAS's 2-D kernels) and still match torch.

Checked against ``torch.nn.functional.conv1d`` (then ReLU and max/avg pooling) over strides,
dilations, groups, padding modes, ``"same"``, pooling with padding, unbatched inputs and the
served path's pieces; and the policy's one exception (one input channel, many filters) stays 1-D.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from convserve_server.engine import cancellation
from convserve_server.engine.layers import onnx
from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.planner import plan_layer

pytestmark = pytest.mark.skipif(not onnx.available(), reason="onnxruntime is not installed")
RNG = np.random.default_rng(5)


def _torch(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pool: dict[str, Any] | None, relu: bool, padding_mode: str, **kw: Any) -> np.ndarray:
    t = torch.from_numpy(x)
    if padding_mode != "zeros":
        pad = kw.pop("padding")
        t = torch.nn.functional.pad(t, (pad, pad), mode={"reflect": "reflect", "replicate": "replicate", "circular": "circular"}[padding_mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on "same" with an even kernel
        y = torch.nn.functional.conv1d(t, torch.from_numpy(w), None if b is None else torch.from_numpy(b), **kw)
    if relu:
        y = torch.relu(y)
    if pool is not None:
        fn = torch.nn.functional.max_pool1d if pool["kind"] == "max" else torch.nn.functional.avg_pool1d
        y = fn(y, pool["kernel_size"], pool.get("stride"), pool.get("padding", 0))
    return np.asarray(y.numpy())


CASES = [
    dict(c_in=16, c_out=32, k=5, groups=1, stride=1, padding=2, dilation=1),
    dict(c_in=64, c_out=128, k=3, groups=1, stride=2, padding=0, dilation=2),
    dict(c_in=256, c_out=64, k=6, groups=4, stride=2, padding=3, dilation=1),
    dict(c_in=32, c_out=32, k=11, groups=32, stride=1, padding=5, dilation=1),
    dict(c_in=3, c_out=16, k=15, groups=1, stride=3, padding=7, dilation=2),
    dict(c_in=8, c_out=8, k=4, groups=2, stride=1, padding="same", dilation=3),
]


EXTRAS = [{}, {"relu": True, "pool": {"kind": "max", "kernel_size": 3, "stride": 2, "padding": 1}}, {"pool": {"kind": "avg", "kernel_size": 2}}]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("extras", EXTRAS)
def test_lifted_1d_layers_match_torch(case: dict[str, Any], extras: dict[str, Any]) -> None:
    x = RNG.standard_normal((3, case["c_in"], 397)).astype(np.float32)
    w = RNG.standard_normal((case["c_out"], case["c_in"] // case["groups"], case["k"])).astype(np.float32)
    b = RNG.standard_normal(case["c_out"]).astype(np.float32)
    geometry = {key: case[key] for key in ("groups", "stride", "padding", "dilation")}
    relu, pool = extras.get("relu", False), extras.get("pool")
    plan = plan_layer(x, w, b, **geometry, activation="relu" if relu else None, pool=pool)
    assert plan.path == "onnxruntime" and onnx.lift_1d(plan.problem.c_in, plan.problem.c_out)
    got, info = conv_layer(x, w, b, **geometry, activation="relu" if relu else None, pool=pool, return_info=True)
    want = _torch(x, w, b, pool, relu, "zeros", **geometry)
    assert info.method == "onnxruntime" and got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_lifted_padding_modes_and_unbatched_input_match_torch(padding_mode: str) -> None:
    x = RNG.standard_normal((16, 200)).astype(np.float32)  # unbatched
    w = RNG.standard_normal((32, 16, 7)).astype(np.float32)
    got = conv_layer(x, w, None, padding=3, padding_mode=padding_mode, path="onnxruntime")
    want = _torch(x[None], w, None, None, False, padding_mode, padding=3)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))


def test_served_pieces_of_a_lifted_layer_give_the_whole_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    x = RNG.standard_normal((4, 16, 300)).astype(np.float32)
    w = RNG.standard_normal((24, 4, 5)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    arguments: dict[str, Any] = {"padding": 2, "groups": 4, "activation": "relu", "pool": {"kind": "max", "kernel_size": 2}}
    whole = conv_layer(x, w, b, **arguments)
    monkeypatch.setattr(onnx, "CHUNK_MACS", 10_000, raising=False)  # batch and group pieces
    with cancellation.scope(threading.Event()):
        pieces = conv_layer(x, w, b, **arguments)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5)


def test_single_channel_inputs_with_many_filters_stay_1d(monkeypatch: pytest.MonkeyPatch) -> None:
    lifted: list[int] = []
    original = onnx.run
    monkeypatch.setattr(onnx, "run", lambda x, *a: (lifted.append(1) if x.ndim == 4 else None) or original(x, *a))
    x = RNG.standard_normal((2, 1, 4000)).astype(np.float32)
    w = RNG.standard_normal((64, 1, 9)).astype(np.float32)
    got = conv_layer(x, w, None, padding=4)
    assert not lifted
    want = _torch(x, w, None, None, False, "zeros", padding=4)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
    conv_layer(x, w[:8], None, padding=4)  # 8 filters: lifted
    assert lifted == [1]
