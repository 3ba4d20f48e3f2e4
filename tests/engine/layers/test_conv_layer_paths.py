"""Each ConvLayer path, forced, against the float64 loop reference of test_conv_layer.py.

Also: the policy (deterministic, the benchmark layers' choices, the NaN fallback of ``fft``,
the numpy paths without ONNX Runtime), the prepared-weights memoization (registered weights'
store and the inline-weights LRU), the hand-encoded ONNX model, and cancellation.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from convserve_server.engine import cancellation
from convserve_server.engine.layers import prepared as layer_cache, onnx as layer_onnx, policy as layer_policy
from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.errors import InvalidArgumentError

from tests.engine.layers.test_conv_layer import assert_close, ref_conv, ref_pads, ref_pool

needs_ort = pytest.mark.skipif(not layer_onnx.available(), reason="onnxruntime not installed")
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


PATH_CASES = [pytest.param(path, i, id=f"{path}-{i}") for path in layer_policy.PATHS for i in range(12)]


@pytest.mark.parametrize("path,i", PATH_CASES)
def test_forced_path_matches_reference(path: str, i: int) -> None:
    if path == "onnxruntime":
        if not layer_onnx.available():
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


@pytest.mark.parametrize("path", layer_policy.PATHS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forced_path_with_relu_and_pool(path: str, kind: str) -> None:
    if path == "onnxruntime" and not layer_onnx.available():
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


@pytest.mark.parametrize("path", layer_policy.PATHS)
def test_forced_path_float32_at_scale_matches_float64(path: str) -> None:
    """Sizes where float32 is computed in float32 (beyond the float64-accumulation threshold)."""
    if path == "onnxruntime" and not layer_onnx.available():
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


def _problem(xs: tuple[int, ...], ws: tuple[int, ...], stride: int, padding: int, groups: int, dtype: str = "float32") -> layer_policy.Problem:
    nd = len(ws) - 2
    padded = tuple(s + 2 * padding for s in xs[2:])
    out = tuple((p - k) // stride + 1 for p, k in zip(padded, ws[2:]))
    return layer_policy.Problem(dtype, xs[0], xs[1], ws[0], groups, ws[2:], (stride,) * nd, (1,) * nd, padded, out)


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
    xs: Any, ws: Any, stride: int, padding: int, groups: int, with_ort: str, float64: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _problem(xs, ws, stride, padding, groups)
    if layer_onnx.available():
        assert layer_policy.choose(p) == with_ort
        assert all(layer_policy.choose(p) == with_ort for _ in range(3))  # deterministic
    assert layer_policy.choose(_problem(xs, ws, stride, padding, groups, "float64")) == float64
    monkeypatch.setenv("CONVSERVE_LAYER_ONNXRUNTIME", "0")
    assert layer_policy.choose(p) == float64


def test_tiny_layers_stay_in_numpy() -> None:
    assert layer_policy.choose(_problem((1, 2, 5, 5), (3, 2, 3, 3), 1, 0, 1)) == "im2col_gemm"
    assert layer_policy.choose(_problem((1, 4, 5, 5), (3, 4, 1, 1), 1, 0, 1)) == "pointwise"
    assert layer_policy.choose(_problem((1, 4, 5, 5), (4, 1, 3, 3), 1, 0, 4)) == "depthwise"


def test_fft_falls_back_on_non_finite_input() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    w = rng.standard_normal((16, 16, 15, 15)).astype(np.float32)
    _, info = conv_layer(x, w, padding=7, return_info=True)
    assert info.method == "fft"
    x[0, 3, 60, 60] = np.nan
    out, info = conv_layer(x, w, padding=7, return_info=True)
    assert info.method == layer_policy.fallback(_problem(x.shape, w.shape, 1, 7, 1))
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


# --------------------------------------------------------------------------- prepared forms


@pytest.mark.parametrize("path", layer_policy.PATHS)
def test_prepared_store_is_filled_once_and_reused(path: str) -> None:
    if path == "onnxruntime" and not layer_onnx.available():
        pytest.skip("onnxruntime not installed")
    rng = np.random.default_rng(5)
    c, k, groups = (8, 3, 8) if path == "depthwise" else (8, 1 if path == "pointwise" else 9, 1)
    x = rng.standard_normal((2, c, 40, 40)).astype(np.float32)
    w = rng.standard_normal((8, c // groups, k, k)).astype(np.float32)
    store: dict[Any, Any] = {}
    first = conv_layer(x, w, padding=k // 2, groups=groups, path=path, prepared=store)
    assert store and all(key[0] == path for key in store)
    values = {key: id(v) for key, v in store.items()}
    second = conv_layer(x, w, padding=k // 2, groups=groups, path=path, prepared=store)
    assert {key: id(v) for key, v in store.items()} == values  # nothing recomputed
    np.testing.assert_array_equal(first, second)


class _Refusing(dict):  # type: ignore[type-arg]
    """A store that keeps nothing (as the registry's when a form would never fit)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


def test_a_store_that_keeps_nothing_still_computes() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 30, 30)).astype(np.float32)
    w = rng.standard_normal((4, 4, 11, 11)).astype(np.float32)
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), path="im2col_gemm")
    for path in layer_policy.PATHS[:2] + ("im2col_gemm",):
        if path == "onnxruntime" and not layer_onnx.available():
            continue
        assert_close(conv_layer(x, w, path=path, prepared=_Refusing()), want, np.float32)


def test_inline_weights_share_a_store_by_content(monkeypatch: pytest.MonkeyPatch) -> None:
    layer_cache.clear()
    w = np.arange(36, dtype=np.float32).reshape(2, 2, 3, 3)
    assert layer_cache.store_for(w) is layer_cache.store_for(w.copy())
    assert layer_cache.store_for(w) is not layer_cache.store_for(w + 1)
    monkeypatch.setenv("CONVSERVE_LAYER_CACHE_WEIGHTS", "2")
    stores = [layer_cache.store_for(w + i) for i in range(3)]
    assert layer_cache.store_for(w + 2) is stores[2] and layer_cache.store_for(w + 0) is not stores[0]
    monkeypatch.setenv("CONVSERVE_LAYER_CACHE_BYTES", "0")
    big = layer_cache.store_for(w + 5)
    big["x"] = np.zeros(1000)
    layer_cache.store_for(w + 6)  # the byte bound evicts the older store
    assert layer_cache.store_for(w + 5) is not big
    layer_cache.clear()


def test_bias_change_with_the_same_weights_store_is_honoured() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    store: dict[Any, Any] = {}
    for path in layer_policy.PATHS:
        if not layer_policy.eligible(path, _problem(x.shape, w.shape, 1, 1, 1)):
            continue
        a = conv_layer(x, w, np.zeros(8, np.float32), padding=1, path=path, prepared=store)
        b = conv_layer(x, w, np.ones(8, np.float32), padding=1, path=path, prepared=store)
        np.testing.assert_allclose(b - a, 1.0, atol=1e-4)


# --------------------------------------------------------------------------- ONNX model, cancellation


@needs_ort
def test_onnx_model_bytes_are_a_valid_model() -> None:
    onnx = pytest.importorskip("onnx")
    w = np.ones((4, 2, 3, 3), np.float32)
    model = onnx.load_from_string(layer_onnx.conv_model_bytes((1, 2, 9, 9), w, np.ones(4, np.float32), (2, 1), [(1, 0), (0, 2)], (1, 1), 1, True))
    onnx.checker.check_model(model)
    conv = model.graph.node[0]
    attrs = {a.name: list(a.ints) or a.i for a in conv.attribute}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 1], "dilations": [1, 1], "pads": [1, 0, 0, 2], "group": 1}
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


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
    for path in layer_policy.PATHS:
        try:
            results[path] = conv_layer(x, w, padding=2, path=path)
        except InvalidArgumentError:
            continue
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=2, path="im2col_gemm")
    assert len(results) >= 2
    for got in results.values():
        assert_close(got, want, np.float32)


# --------------------------------------------------------------------------- pooling of the numpy paths

POOL_SPECS = [
    ((2, 3, 12, 10), {"kind": "max", "kernel_size": 2}),
    ((2, 3, 12, 10), {"kind": "avg", "kernel_size": 3, "stride": 2, "padding": 1}),
    ((2, 3, 9, 8, 7), {"kind": "max", "kernel_size": (3, 2, 2), "stride": (1, 2, 1), "padding": (1, 0, 1)}),
    ((2, 3, 9, 8, 7), {"kind": "avg", "kernel_size": (2, 3, 2), "stride": (2, 1, 1), "padding": (1, 1, 0)}),
    ((2, 3, 30), {"kind": "avg", "kernel_size": 4, "stride": 3, "padding": 2}),
    ((2, 3, 30), {"kind": "max", "kernel_size": 5, "stride": 1, "padding": 2}),
]


@pytest.mark.parametrize("shape,spec", POOL_SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_pool_matches_apply_pool(shape: tuple[int, ...], spec: dict[str, Any], dtype: Any) -> None:
    from convserve_server.engine.layers.pooling_taps import pool
    from convserve_server.engine.layers.pooling import apply_pool, validate_pool

    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    x.flat[7] = np.nan  # NaN propagates in both, as torch
    checked = validate_pool(spec, shape[2:])
    assert checked is not None
    got, want = pool(x, checked), apply_pool(x, checked)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous
    peak = float(np.nanmax(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=(1e-6 if dtype == np.float32 else 1e-14) * peak)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_fft_tiles_match_the_whole_transform_and_the_reference(nd: int, stride: int) -> None:
    """Overlap-save tiles (forced small) give the same result as the whole-input transform."""
    from convserve_server.engine.layers import fft as layer_fft

    rng = np.random.default_rng(nd + 10 * stride)
    spatial = {1: (61,), 2: (23, 19), 3: (11, 12, 10)}[nd]
    kernel = {1: (7,), 2: (5, 4), 3: (3, 3, 2)}[nd]
    x = rng.standard_normal((2, 3) + spatial)
    w = rng.standard_normal((4, 3) + kernel)
    out = tuple((s - k) // stride + 1 for s, k in zip(spatial, kernel))
    tile = tuple(max(2 * k, 8) for k in kernel)
    got = layer_fft.fft_correlate(x, w, (stride,) * nd, out, {}, tile=tile)
    whole = layer_fft.fft_correlate(x, w, (stride,) * nd, out, {})
    want = ref_conv(x, w, None, (stride,) * nd, [(0, 0)] * nd, (1,) * nd, 1, "zeros")
    assert_close(got, want, np.float64)
    assert_close(whole, want, np.float64)
    got32 = layer_fft.fft_correlate(x.astype(np.float32), w.astype(np.float32), (stride,) * nd, out, {}, tile=tile)
    assert_close(got32, want, np.float32)


def test_fft_tiles_are_planned_only_for_large_spectra() -> None:
    from convserve_server.engine.layers.fft import plan_tiles

    assert plan_tiles((142, 142), (15, 15), 1, 16, 16)[0] == (144, 144)  # 21.5 MB spectrum: whole
    sizes = plan_tiles((66, 66), (11, 11), 1, 64, 64)[0]  # 87 MB spectrum: tiles
    assert all(11 < s < 72 for s in sizes)


@pytest.mark.parametrize("pool", [None, {"kind": "max", "kernel_size": 2}, {"kind": "avg", "kernel_size": 2}])
def test_nan_stays_local_on_every_path_with_relu_and_pool(pool: Any) -> None:
    """ReLU keeps NaN (as torch.relu) and pooling propagates it, whichever path ran."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 4, 20, 20)).astype(np.float32)
    x[0, 2, 10, 10] = np.nan
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    masks = []
    for path in ("onnxruntime", "im2col_gemm"):
        if path == "onnxruntime" and not layer_onnx.available():
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
    if not layer_onnx.available():
        pytest.skip("onnxruntime not installed")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise layer_onnx.RUNTIME_ERRORS[-1]("simulated")

    monkeypatch.setattr(layer_onnx, "run", broken)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 30, 30)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    out, info = conv_layer(x, w, padding=1, activation="relu", pool={"kind": "max", "kernel_size": 2}, return_info=True)
    assert info.method == "im2col_gemm" and "onnxruntime failed" in info.warnings[0]
    want = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=1, activation="relu", pool={"kind": "max", "kernel_size": 2})
    assert_close(out, want, np.float32)
