"""Each ConvLayer path, forced, against the float64 loop reference of test_conv_layer.py.

Also: the policy (deterministic, the benchmark layers' choices, the NaN fallback of ``fft``,
the numpy paths without ONNX Runtime), the paths' agreement, NaN staying local, the fallback
when ONNX Runtime fails, and cancellation of the numpy paths. The parts under the paths
(prepared forms, the ONNX model, tap pooling, FFT tiling) are in test_conv_layer_parts.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from convserve_server.engine import cancellation
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.layers import onnx, policy
from convserve_server.engine.layers.conv_layer import conv_layer

from tests.engine.layers.test_conv_layer import assert_close, ref_conv, ref_pads, ref_pool

needs_ort = pytest.mark.skipif(not onnx.available(), reason="onnxruntime not installed")
SPATIAL = {1: (23,), 2: (11, 9), 3: (6, 5, 7)}
MODES = ["zeros", "reflect", "replicate", "circular"]


def _case(path: str, i: int) -> dict[str, Any]:
    """The i-th layer configuration that ``path`` can compute (deterministic)."""
    nd = 1 + i % 3
    mode = MODES[i % 4]
    dtype = np.float32 if i % 2 else np.float64
    stride = 1 if path == "fft" or i % 3 else 2
    dilation = 1 if path in ("fft", "pointwise") or i % 4 else 2
    k = {"pointwise": 1, "fft": 5 if nd < 3 else 3}.get(path, 3 if nd < 3 else 2)
    if path == "depthwise":
        c_in = c_out = groups = 3
    elif path in ("fft", "pointwise"):
        c_in, c_out, groups = 3, 4, 1
    else:
        groups = 1 + i % 2
        c_in, c_out = 2 * groups, 3 * groups
    padding: Any = [0, 1, "same" if stride == 1 else 2][i % 3] if k > 1 else 0
    return dict(
        nd=nd,
        mode=mode,
        dtype=dtype,
        stride=stride,
        dilation=dilation,
        kernel=(k,) * nd,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        padding=padding,
        bias=i % 2 == 0,
        relu=i % 3 == 0,
    )


PATH_CASES = [pytest.param(path, i, id=f"{path}-{i}") for path in policy.PATHS for i in range(12)]


@pytest.mark.parametrize("path,i", PATH_CASES)
def test_forced_path_matches_reference(path: str, i: int) -> None:
    if path == "onnxruntime":
        if not onnx.available():
            pytest.skip("onnxruntime not installed")
    c = _case(path, i)
    if path == "onnxruntime":
        c["dtype"] = np.float32  # its CPU Conv is float32 only
    nd, dtype = c["nd"], c["dtype"]
    rng = np.random.default_rng(i)
    x = rng.standard_normal((2, c["c_in"]) + SPATIAL[nd]).astype(dtype)
    w = rng.standard_normal((c["c_out"], c["c_in"] // c["groups"]) + c["kernel"]).astype(dtype)
    b = rng.standard_normal(c["c_out"]).astype(dtype) if c["bias"] else None
    st, dl = (c["stride"],) * nd, (c["dilation"],) * nd
    want = ref_conv(x, w, b, st, ref_pads(c["padding"], c["kernel"], dl), dl, c["groups"], c["mode"])
    if c["relu"]:
        want = np.maximum(want, 0.0)
    got, info = conv_layer(
        x,
        w,
        b,
        stride=c["stride"],
        padding=c["padding"],
        dilation=c["dilation"],
        groups=c["groups"],
        padding_mode=c["mode"],
        activation="relu" if c["relu"] else None,
        return_info=True,
        path=path,
    )
    assert info.method == path
    assert_close(got, want, dtype)


@pytest.mark.parametrize("path", policy.PATHS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forced_path_with_relu_and_pool(path: str, kind: str) -> None:
    if path == "onnxruntime" and not onnx.available():
        pytest.skip("onnxruntime not installed")
    rng = np.random.default_rng(7)
    c = 3 if path == "depthwise" else 2
    k = 1 if path == "pointwise" else 3
    x = rng.standard_normal((2, c, 10, 9)).astype(np.float32)
    w = rng.standard_normal((3, 1 if path == "depthwise" else c, k, k)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    groups = 3 if path == "depthwise" else 1
    want = np.maximum(ref_conv(x, w, b, (1, 1), ref_pads(k // 2, (k, k), (1, 1)), (1, 1), groups, "zeros"), 0.0)
    want = ref_pool(want, kind, (3, 2), (2, 2), (1, 0))
    pool = {"kind": kind, "kernel_size": (3, 2), "stride": 2, "padding": (1, 0)}
    got = conv_layer(x, w, b, padding=k // 2, groups=groups, activation="relu", pool=pool, path=path)
    assert_close(got, want, np.float32)


@pytest.mark.parametrize("path", policy.PATHS)
def test_forced_path_float32_at_scale_matches_float64(path: str) -> None:
    """Sizes where float32 is computed in float32 (beyond the float64-accumulation threshold)."""
    if path == "onnxruntime" and not onnx.available():
        pytest.skip("onnxruntime not installed")
    rng = np.random.default_rng(11)
    shapes = {
        "onnxruntime": ((2, 32, 40, 40), (48, 32, 3, 3), 1),
        "fft": ((1, 8, 64, 64), (8, 8, 13, 13), 1),
        "pointwise": ((4, 96, 40, 40), (128, 96, 1, 1), 1),
        "depthwise": ((8, 64, 64, 64), (64, 1, 9, 9), 64),
        "im2col_gemm": ((2, 32, 40, 40), (48, 16, 3, 3), 2),
    }
    xs, ws, groups = shapes[path]
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    got = conv_layer(x, w, padding=ws[-1] // 2, groups=groups, path=path)
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=ws[-1] // 2, groups=groups, path="im2col_gemm")
    assert_close(got, want, np.float32)


# --------------------------------------------------------------------------- policy


def problem(xs: tuple[int, ...], ws: tuple[int, ...], stride: int, padding: int, groups: int, dtype: str = "float32") -> policy.Problem:
    nd = len(ws) - 2
    padded = tuple(s + 2 * padding for s in xs[2:])
    out = tuple((p - k) // stride + 1 for p, k in zip(padded, ws[2:]))
    return policy.Problem(dtype, xs[0], xs[1], ws[0], groups, ws[2:], (stride,) * nd, (1,) * nd, padded, out)


BENCH_LAYERS = [
    ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, "onnxruntime", "im2col_gemm"),
    ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, "onnxruntime", "im2col_gemm"),
    ((32, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1, "onnxruntime", "im2col_gemm"),
    ((1, 16, 128, 128), (16, 16, 15, 15), 1, 7, 1, "fft", "fft"),
    ((8, 256, 28, 28), (256, 1, 3, 3), 1, 1, 256, "onnxruntime", "depthwise"),
    ((8, 256, 28, 28), (512, 256, 1, 1), 1, 0, 1, "onnxruntime", "pointwise"),
    ((1, 8, 32, 32, 32), (8, 8, 3, 3, 3), 1, 1, 1, "onnxruntime", "im2col_gemm"),
]


@pytest.mark.parametrize("xs,ws,stride,padding,groups,with_ort,float64", BENCH_LAYERS)
def test_policy_choices_for_the_benchmark_layers(
    xs: Any, ws: Any, stride: int, padding: int, groups: int, with_ort: str, float64: str, engine_config: Callable[..., None]
) -> None:
    p = problem(xs, ws, stride, padding, groups)
    if onnx.available():
        assert policy.choose(p) == with_ort
        assert all(policy.choose(p) == with_ort for _ in range(3))  # deterministic
    assert policy.choose(problem(xs, ws, stride, padding, groups, "float64")) == float64
    engine_config(layer_onnxruntime=False)
    assert policy.choose(p) == float64


def test_tiny_layers_stay_in_numpy() -> None:
    assert policy.choose(problem((1, 2, 5, 5), (3, 2, 3, 3), 1, 0, 1)) == "im2col_gemm"
    assert policy.choose(problem((1, 4, 5, 5), (3, 4, 1, 1), 1, 0, 1)) == "pointwise"
    assert policy.choose(problem((1, 4, 5, 5), (4, 1, 3, 3), 1, 0, 4)) == "depthwise"


def test_fft_falls_back_on_non_finite_input() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    w = rng.standard_normal((16, 16, 15, 15)).astype(np.float32)
    _, info = conv_layer(x, w, padding=7, return_info=True)
    assert info.method == "fft"
    x[0, 3, 60, 60] = np.nan
    out, info = conv_layer(x, w, padding=7, return_info=True)
    assert info.method == policy.fallback(problem(x.shape, w.shape, 1, 7, 1))
    nan = np.isnan(out[0, 0])
    assert nan[53:68, 53:68].all() and nan.sum() == 15 * 15  # stays local


def test_forcing_an_ineligible_or_unknown_path_is_an_error() -> None:
    x, w = np.zeros((1, 4, 8, 8)), np.zeros((4, 1, 3, 3))
    with pytest.raises(InvalidArgumentError) as err:
        conv_layer(x, w, groups=4, path="fft")
    assert err.value.field == "path"
    with pytest.raises(InvalidArgumentError):
        conv_layer(x, w, groups=4, path="onnxruntime")  # float64
    with pytest.raises(InvalidArgumentError):
        conv_layer(x, w, groups=4, path="winograd")


# --------------------------------------------------------------------------- cancellation, agreement, NaN, ONNX Runtime failures


@pytest.mark.parametrize("path", ["im2col_gemm", "pointwise", "depthwise", "fft"])
def test_numpy_paths_stop_when_cancelled(path: str) -> None:
    x = np.ones((2, 4, 16, 16))
    k, groups = {"pointwise": (1, 1), "depthwise": (3, 4)}.get(path, (3, 1))
    w = np.ones((4, 4 // groups, k, k))
    token = threading.Event()
    token.set()
    with cancellation.scope(token), pytest.raises(cancellation.Cancelled):
        conv_layer(x, w, groups=groups, path=path)


def test_every_path_agrees_on_one_layer() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 6, 17, 15)).astype(np.float32)
    w = rng.standard_normal((6, 6, 5, 5)).astype(np.float32)
    results = {}
    for path in policy.PATHS:
        try:
            results[path] = conv_layer(x, w, padding=2, path=path)
        except InvalidArgumentError:
            continue
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=2, path="im2col_gemm")
    assert len(results) >= 2
    for got in results.values():
        assert_close(got, want, np.float32)


@pytest.mark.parametrize("pool", [None, {"kind": "max", "kernel_size": 2}, {"kind": "avg", "kernel_size": 2}])
def test_nan_stays_local_on_every_path_with_relu_and_pool(pool: Any) -> None:
    """ReLU keeps NaN (as torch.relu) and pooling propagates it, whichever path ran."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 4, 20, 20)).astype(np.float32)
    x[0, 2, 10, 10] = np.nan
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    masks = []
    for path in ("onnxruntime", "im2col_gemm"):
        if path == "onnxruntime" and not onnx.available():
            continue
        out = conv_layer(x, w, padding=1, activation="relu", pool=pool, path=path)
        masks.append(np.isnan(out))
    expected = np.zeros((1, 4, 20, 20), bool)
    expected[0, :, 9:12, 9:12] = True
    if pool is not None:
        expected = expected.reshape(1, 4, 10, 2, 10, 2).any(axis=(3, 5))
    for mask in masks:
        np.testing.assert_array_equal(mask, expected)


def test_an_onnxruntime_failure_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    if not onnx.available():
        pytest.skip("onnxruntime not installed")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise onnx.RUNTIME_ERRORS[-1]("simulated")

    monkeypatch.setattr(onnx, "run", broken)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 30, 30)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    out, info = conv_layer(x, w, padding=1, activation="relu", pool={"kind": "max", "kernel_size": 2}, return_info=True)
    assert info.method == "im2col_gemm" and "onnxruntime failed" in info.warnings[0]
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=1, activation="relu", pool={"kind": "max", "kernel_size": 2})
    assert_close(out, want, np.float32)
