"""The parts under the ConvLayer paths, against the float64 loop reference of test_conv_layer.py.

The prepared-weights memoization (registered weights' store and the inline-weights LRU), the
hand-encoded ONNX model, the tap-by-tap max/avg pooling of the numpy paths and the ``fft``
path's overlap-save tiling. The paths themselves and their policy: test_conv_layer_paths.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from convserve_server.engine.layers import fft, onnx, onnx_model, policy, prepared
from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.pooling import apply_pool, validate_pool
from convserve_server.engine.layers.pooling_taps import pool as tap_pool
from convserve_server.engine.layers.tiling import plan_tiles

from tests.engine.layers.test_conv_layer import assert_close, ref_conv
from tests.engine.layers.test_conv_layer_paths import problem

needs_ort = pytest.mark.skipif(not onnx.available(), reason="onnxruntime not installed")


# --------------------------------------------------------------------------- prepared forms


@pytest.mark.parametrize("path", policy.PATHS)
def test_prepared_store_is_filled_once_and_reused(path: str) -> None:
    if path == "onnxruntime" and not onnx.available():
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
    for path in policy.PATHS[:2] + ("im2col_gemm",):
        if path == "onnxruntime" and not onnx.available():
            continue
        assert_close(conv_layer(x, w, path=path, prepared=_Refusing()), want, np.float32)


def test_inline_weights_share_a_store_by_content(engine_config: Callable[..., None]) -> None:
    prepared.clear()
    w = np.arange(36, dtype=np.float32).reshape(2, 2, 3, 3)
    assert prepared.store_for(w) is prepared.store_for(w.copy())
    assert prepared.store_for(w) is not prepared.store_for(w + 1)
    engine_config(layer_cache_weights=2)
    stores = [prepared.store_for(w + i) for i in range(3)]
    assert prepared.store_for(w + 2) is stores[2] and prepared.store_for(w + 0) is not stores[0]
    engine_config(layer_cache_bytes=0)
    big = prepared.store_for(w + 5)
    big["x"] = np.zeros(1000)
    prepared.store_for(w + 6)  # the byte bound evicts the older store
    assert prepared.store_for(w + 5) is not big
    prepared.clear()


def test_bias_change_with_the_same_weights_store_is_honoured() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    store: dict[Any, Any] = {}
    for path in policy.PATHS:
        if not policy.eligible(path, problem(x.shape, w.shape, 1, 1, 1)):
            continue
        a = conv_layer(x, w, np.zeros(8, np.float32), padding=1, path=path, prepared=store)
        b = conv_layer(x, w, np.ones(8, np.float32), padding=1, path=path, prepared=store)
        np.testing.assert_allclose(b - a, 1.0, atol=1e-4)


# --------------------------------------------------------------------------- ONNX model


@needs_ort
def test_onnx_model_bytes_are_a_valid_model() -> None:
    onnx_package = pytest.importorskip("onnx")
    w = np.ones((4, 2, 3, 3), np.float32)
    model = onnx_package.load_from_string(onnx_model.conv_model_bytes((1, 2, 9, 9), w, np.ones(4, np.float32), (2, 1), [(1, 0), (0, 2)], (1, 1), 1, True))
    onnx_package.checker.check_model(model)
    conv = model.graph.node[0]
    attrs = {a.name: list(a.ints) or a.i for a in conv.attribute}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 1], "dilations": [1, 1], "pads": [1, 0, 0, 2], "group": 1}
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


@needs_ort
def test_split_groups_model_bytes_are_a_valid_model() -> None:
    onnx_package = pytest.importorskip("onnx")
    w = np.arange(4 * 2 * 6 * 6, dtype=np.float32).reshape(4, 2, 6, 6)
    pool = validate_pool({"kind": "max", "kernel_size": 2}, (4, 4))
    model_bytes = onnx_model.conv_model_bytes((1, 4, 9, 9), w, np.ones(4, np.float32), (1, 1), [(0, 0), (0, 0)], (1, 1), 2, True, pool, True)
    model = onnx_package.load_from_string(model_bytes)
    onnx_package.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Split", "Conv", "Relu", "Conv", "Relu", "Concat", "MaxPool"]
    assert all({a.name: a.i for a in n.attribute}.get("group") == 1 for n in model.graph.node if n.op_type == "Conv")
    weights = {t.name: onnx_package.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["w1"], w[2:])  # group 1's filters
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)


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
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    x.flat[7] = np.nan  # NaN propagates in both, as torch
    checked = validate_pool(spec, shape[2:])
    assert checked is not None
    got, want = tap_pool(x, checked), apply_pool(x, checked)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous
    peak = float(np.nanmax(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=(1e-6 if dtype == np.float32 else 1e-14) * peak)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_fft_tiles_match_the_whole_transform_and_the_reference(nd: int, stride: int) -> None:
    """Overlap-save tiles (forced small) give the same result as the whole-input transform."""
    rng = np.random.default_rng(nd + 10 * stride)
    spatial = {1: (61,), 2: (23, 19), 3: (11, 12, 10)}[nd]
    kernel = {1: (7,), 2: (5, 4), 3: (3, 3, 2)}[nd]
    x = rng.standard_normal((2, 3) + spatial)
    w = rng.standard_normal((4, 3) + kernel)
    out = tuple((s - k) // stride + 1 for s, k in zip(spatial, kernel))
    tile = tuple(max(2 * k, 8) for k in kernel)
    got = fft.fft_correlate(x, w, (stride,) * nd, out, {}, tile=tile)
    whole = fft.fft_correlate(x, w, (stride,) * nd, out, {})
    want = ref_conv(x, w, None, (stride,) * nd, [(0, 0)] * nd, (1,) * nd, 1, "zeros")
    assert_close(got, want, np.float64)
    assert_close(whole, want, np.float64)
    got32 = fft.fft_correlate(x.astype(np.float32), w.astype(np.float32), (stride,) * nd, out, {}, tile=tile)
    assert_close(got32, want, np.float32)


def test_fft_tiles_are_planned_only_for_large_spectra() -> None:
    assert plan_tiles((142, 142), (15, 15), 1, 16, 16)[0] == (144, 144)  # 21.5 MB spectrum: whole
    sizes = plan_tiles((66, 66), (11, 11), 1, 64, 64)[0]  # 87 MB spectrum: tiles
    assert all(11 < s < 72 for s in sizes)
