"""Tests of the numpy ConvLayer engine against a loop-by-loop float64 reference.

The reference below is written independently of the engine: padding is done
by hand (index mapping per ``padding_mode``), then explicit loops run over
batch, output channels, output positions, input channels of the group and
kernel taps. It follows torch.nn.ConvNd / F.max_poolNd / F.avg_poolNd rules.
Sizes are tiny so the loops stay fast.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import pytest

from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.info import CallInfo

# --------------------------------------------------------------------------- reference


def _source_index(j: int, size: int, mode: str) -> int | None:
    """Map a (possibly out-of-range) index to the input index, None for a zero."""
    if 0 <= j < size:
        return j
    if mode == "zeros":
        return None
    if mode == "reflect":  # edge sample not repeated
        return -j if j < 0 else 2 * (size - 1) - j
    if mode == "replicate":
        return 0 if j < 0 else size - 1
    if mode == "circular":
        return j % size
    raise AssertionError(mode)


def ref_pad(x: np.ndarray, pads: list[tuple[int, int]], mode: str) -> np.ndarray:
    """Pad the spatial axes of (N, C, *spatial) by hand, one padded position at a time."""
    spatial = x.shape[2:]
    padded_shape = tuple(s + b + a for s, (b, a) in zip(spatial, pads))
    out = np.zeros(x.shape[:2] + padded_shape, dtype=np.float64)
    for pos in itertools.product(*(range(p) for p in padded_shape)):
        src = [_source_index(j - b, s, mode) for j, (b, _), s in zip(pos, pads, spatial)]
        if any(i is None for i in src):
            continue
        out[(slice(None), slice(None)) + tuple(pos)] = x[(slice(None), slice(None)) + tuple(src)]
    return out


def ref_pads(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    nd = len(kernel)
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        res = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            left = total // 2
            res.append((left, total - left))  # the extra one at the end
        return res
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) for p in padding]


def ref_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilation: tuple[int, ...],
    groups: int,
    mode: str,
) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    xp = ref_pad(x, pads, mode)
    n_batch, c_in = x.shape[:2]
    c_out = w.shape[0]
    kernel = w.shape[2:]
    cg, cog = c_in // groups, c_out // groups
    out_shape = tuple((p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(xp.shape[2:], kernel, stride, dilation))
    out = np.zeros((n_batch, c_out) + out_shape)
    for n in range(n_batch):
        for g in range(groups):
            for co in range(g * cog, (g + 1) * cog):
                for opos in itertools.product(*(range(o) for o in out_shape)):
                    acc = 0.0 if b is None else float(b[co])
                    for ci in range(cg):
                        for kpos in itertools.product(*(range(k) for k in kernel)):
                            ipos = tuple(o * s + k * d for o, k, s, d in zip(opos, kpos, stride, dilation))
                            acc += xp[(n, g * cg + ci) + ipos] * w[(co, ci) + kpos]
                    out[(n, co) + opos] = acc
    return out


def ref_pool(y: np.ndarray, kind: str, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> np.ndarray:
    spatial = y.shape[2:]
    out_shape = tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(spatial, kernel, stride, padding))
    out = np.zeros(y.shape[:2] + out_shape)
    for n, c in itertools.product(range(y.shape[0]), range(y.shape[1])):
        for opos in itertools.product(*(range(o) for o in out_shape)):
            vals = []
            for kpos in itertools.product(*(range(k) for k in kernel)):
                ipos = tuple(o * st - p + k for o, st, p, k in zip(opos, stride, padding, kpos))
                if all(0 <= i < s for i, s in zip(ipos, spatial)):
                    vals.append(y[(n, c) + ipos])
                elif kind == "avg":
                    vals.append(0.0)  # count_include_pad=True
                # max: padding is -inf, i.e. skipped
            out[(n, c) + opos] = max(vals) if kind == "max" else sum(vals) / np.prod(kernel)
    return out


def _tup(v: Any, nd: int) -> tuple[int, ...]:
    return (v,) * nd if isinstance(v, int) else tuple(v)


def assert_close(got: np.ndarray, want: np.ndarray, dtype: Any) -> None:
    assert got.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    peak = max(float(np.max(np.abs(want))), 1e-300)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= tol * peak, f"max error {err:g} > {tol:g} * peak {peak:g}"


# --------------------------------------------------------------------------- grid

SPATIAL = {1: (9,), 2: (6, 7), 3: (5, 4, 5)}
TUPLE_PADDING = {1: (2,), 2: (2, 1), 3: (1, 0, 2)}
# (stride, dilation, groups, kernel size k): kernel is (k, k-1 or so, k) per dim
COMBOS = [(1, 1, 1, 3), (2, 1, 2, 2), (1, 2, 1, 2), (2, 2, 2, 3), (1, 1, 2, 4), (1, 2, 2, 3)]
MODES = ["zeros", "reflect", "replicate", "circular"]
PADDINGS: list[Any] = [0, 1, "tuple", "same", "valid"]


def _cases() -> list[Any]:
    cases = []
    i = 0
    for nd in (1, 2, 3):
        combos = COMBOS if nd < 3 else COMBOS[:4]
        for mode, padding, (stride, dilation, groups, k) in itertools.product(MODES, PADDINGS, combos):
            if padding == "same" and stride != 1:
                continue
            if nd == 3 and (padding == 0 or mode == "replicate") and i % 2:
                i += 1
                continue  # thin out the slow 3-D cases
            pad = TUPLE_PADDING[nd] if padding == "tuple" else padding
            dtype = np.float32 if i % 2 else np.float64
            label = f"{nd}d-{mode}-{pad}-s{stride}-d{dilation}-g{groups}-k{k}-{np.dtype(dtype).name}"
            cases.append(pytest.param(nd, mode, pad, stride, dilation, groups, k, dtype, i, id=label))
            i += 1
    return cases


def _kernel(nd: int, k: int) -> tuple[int, ...]:
    return tuple(k if j % 2 == 0 else max(1, k - 1) for j in range(nd))


@pytest.mark.parametrize("nd,mode,padding,stride,dilation,groups,k,dtype,seed", _cases())
def test_conv_matches_reference(nd: int, mode: str, padding: Any, stride: int, dilation: int, groups: int, k: int, dtype: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_batch = 2 if nd < 3 else 1
    c_in, c_out = (4, 6) if nd < 3 else (2, 2)
    kernel = _kernel(nd, k)
    x = rng.standard_normal((n_batch, c_in) + SPATIAL[nd]).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if seed % 2 == 0 else None
    activation = "relu" if seed % 3 == 0 else None
    st, dl = _tup(stride, nd), _tup(dilation, nd)
    want = ref_conv(x, w, b, st, ref_pads(padding, kernel, dl), dl, groups, mode)
    if activation:
        want = np.maximum(want, 0.0)
    got = conv_layer(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode, activation=activation)
    assert_close(got, want, dtype)


POOLS = [
    ("max", 2, None, 0),
    ("avg", 2, None, 0),
    ("max", 3, 2, 1),
    ("avg", 3, 2, 1),
    ("max", 2, 1, 1),
    ("avg", 3, 1, 1),
    ("max", (3, 2, 2), (1, 2, 1), (1, 0, 1)),
    ("avg", (2, 3, 2), (2, 1, 1), (1, 1, 0)),
]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind,pk,ps,pp", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_relu_pool_matches_reference(nd: int, kind: str, pk: Any, ps: Any, pp: Any, dtype: Any) -> None:
    rng = np.random.default_rng(nd * 100 + len(kind))
    shape = {1: (2, 3, 10), 2: (2, 3, 7, 6), 3: (1, 2, 5, 4, 5)}[nd]
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((3, shape[1]) + (3,) * nd).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    fix = lambda v: v if v is None or isinstance(v, int) else tuple(v[:nd])  # noqa: E731
    pk, ps, pp = fix(pk), fix(ps), fix(pp)
    pool: dict[str, Any] = {"kind": kind, "kernel_size": pk, "padding": pp}
    if ps is not None:
        pool["stride"] = ps
    want = np.maximum(ref_conv(x, w, b, (1,) * nd, [(1, 1)] * nd, (1,) * nd, 1, "zeros"), 0.0)
    kt = _tup(pk, nd)
    want = ref_pool(want, kind, kt, kt if ps is None else _tup(ps, nd), _tup(pp, nd))
    got = conv_layer(x, w, b, padding=1, activation="relu", pool=pool)
    assert_close(got, want, dtype)


def test_max_pool_without_relu_sees_negative_values_not_padding() -> None:
    x = -np.ones((1, 1, 4))
    w = np.ones((1, 1, 1))
    got = conv_layer(x, w, pool={"kind": "max", "kernel_size": 2, "stride": 2, "padding": 1})
    np.testing.assert_array_equal(got, -np.ones((1, 1, 3)))
    got = conv_layer(x, w, pool={"kind": "avg", "kernel_size": 2, "stride": 2, "padding": 1})
    np.testing.assert_array_equal(got, [[[-0.5, -1.0, -0.5]]])


# --------------------------------------------------------------------------- other behaviour


def test_unbatched_input_gives_unbatched_output_and_array_likes() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    batched = conv_layer(x[None], w, padding="same", padding_mode="reflect")
    single = conv_layer(x.tolist(), w.tolist(), [0.0] * 4, padding="same", padding_mode="reflect")
    assert single.shape == (4, 5, 6)
    np.testing.assert_allclose(single, batched[0], rtol=0, atol=1e-12)


def test_same_padding_even_kernel_puts_extra_at_end() -> None:
    x = np.arange(5.0)[None, None]
    w = np.array([[[1.0, 0.0]]])  # picks the first tap: output[i] = padded[i], left pad 0
    np.testing.assert_array_equal(conv_layer(x, w, padding="same"), x)
    w = np.array([[[0.0, 1.0]]])  # second tap: output[i] = x[i + 1], zero at the end
    np.testing.assert_array_equal(conv_layer(x, w, padding="same")[0, 0], [1, 2, 3, 4, 0])


def test_return_info_and_dtype() -> None:
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    out, info = conv_layer(x, w, return_info=True)
    assert isinstance(info, CallInfo)
    assert info.method == "im2col_gemm" and info.compute_seconds >= 0 and info.warnings == ()
    assert out.dtype == np.float32 and out.shape == (1, 3, 3, 3)
    np.testing.assert_array_equal(out, np.full((1, 3, 3, 3), 18.0, dtype=np.float32))


def test_float32_large_is_accurate_and_fast() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    conv_layer(x, w, padding=1)
    best = min(_timed(lambda: conv_layer(x, w, padding=1)) for _ in range(3))
    assert best < 0.5  # well under 100 ms on a normal host; generous for CI
    got = conv_layer(x, w, padding=1)
    ref = conv_layer(x.astype(np.float64), w.astype(np.float64), padding=1)
    assert got.dtype == np.float32
    assert float(np.max(np.abs(got - ref))) <= 1e-5 * float(np.max(np.abs(ref)))


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_nan_stays_local() -> None:
    x = np.zeros((1, 1, 9))
    x[0, 0, 4] = np.nan
    out = conv_layer(x, np.ones((1, 1, 3)), activation="relu")
    assert np.isnan(out[0, 0, 2:5]).all() and not np.isnan(out[0, 0, [0, 1, 5, 6]]).any()


# --------------------------------------------------------------------------- errors

X2 = np.zeros((1, 4, 5, 5))
W2 = np.zeros((6, 4, 3, 3))

ERRORS: list[Any] = [
    ("input", dict(input=np.zeros((4, 5, 5), dtype=np.int64))),
    ("input", dict(input=np.zeros((1, 4, 5, 5), dtype=np.complex128))),
    ("input", dict(input=np.zeros((1, 4, 5, 5), dtype=bool))),
    ("input", dict(input=np.zeros((1, 4, 5, 5), dtype=np.float16))),
    ("input", dict(input=[[1, 2], [3]])),
    ("input", dict(input=np.zeros((5, 5)))),
    ("input", dict(input=np.zeros((1, 1, 4, 5, 5)))),
    ("input", dict(input=np.zeros((0, 4, 5, 5)))),
    ("input", dict(input=np.zeros((1, 4, 0, 5)))),
    ("input", dict(weight=np.zeros((6, 4, 3)))),  # a 1-D conv weight for a 2-D input
    ("weight", dict(weight=np.zeros((6, 4)))),
    ("weight", dict(weight=np.zeros((6, 4, 3, 3, 3, 3)))),
    ("weight", dict(weight=np.zeros((6, 4, 3, 3), dtype=np.float32))),
    ("weight", dict(weight=np.zeros((6, 3, 3, 3)))),
    ("weight", dict(weight=np.zeros((0, 4, 3, 3)))),
    ("weight", dict(weight=np.zeros((6, 4, 6, 3)))),
    ("weight", dict(weight=np.zeros((6, 4, 3, 3)), dilation=3)),
    ("weight", dict(weight=np.zeros((6, 4, 6, 6)), padding="valid")),
    ("bias", dict(bias=np.zeros(5))),
    ("bias", dict(bias=np.zeros((6, 1)))),
    ("bias", dict(bias=np.zeros(6, dtype=np.float32))),
    ("bias", dict(bias=np.zeros(6, dtype=np.int32))),
    ("stride", dict(stride=0)),
    ("stride", dict(stride=-1)),
    ("stride", dict(stride=(1, 1, 1))),
    ("stride", dict(stride=(1,))),
    ("stride", dict(stride=1.5)),
    ("stride", dict(stride=True)),
    ("stride", dict(stride="1")),
    ("dilation", dict(dilation=0)),
    ("dilation", dict(dilation=(1, 0))),
    ("padding", dict(padding=-1)),
    ("padding", dict(padding=(1, -1))),
    ("padding", dict(padding=(1, 1, 1))),
    ("padding", dict(padding="full")),
    ("padding", dict(padding="same", stride=2)),
    ("padding", dict(padding=5, padding_mode="reflect")),
    ("padding", dict(padding=6, padding_mode="circular")),
    ("groups", dict(groups=0)),
    ("groups", dict(groups=3)),
    ("groups", dict(groups=1.0)),
    ("groups", dict(weight=np.zeros((5, 2, 3, 3)), groups=2)),
    ("weight", dict(weight=np.zeros((6, 4, 3, 3)), groups=2)),
    ("padding_mode", dict(padding_mode="symmetric")),
    ("padding_mode", dict(padding_mode=None)),
    ("activation", dict(activation="sigmoid")),
    ("activation", dict(activation="ReLU")),
    ("pool", dict(pool="max")),
    ("pool", dict(pool={"kind": "min", "kernel_size": 2})),
    ("pool", dict(pool={"kind": "max"})),
    ("pool", dict(pool={"kind": "max", "kernel_size": 4})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": 0})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": 2, "stride": 0})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": 2, "padding": 2})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": 2, "padding": -1})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": (2, 2, 2)})),
    ("pool", dict(pool={"kind": "avg", "kernel_size": 2, "ceil_mode": True})),
]


@pytest.mark.parametrize("field,kwargs", ERRORS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(ERRORS)])
def test_errors(field: str, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"input": X2, "weight": W2}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError) as excinfo:
        conv_layer(**args)
    assert excinfo.value.field == field
    assert isinstance(excinfo.value, ValueError)


def test_valid_edge_cases_accepted() -> None:
    # reflect pad = size - 1 and circular pad = size are allowed, as torch
    conv_layer(X2, W2, padding=4, padding_mode="reflect")
    conv_layer(X2, W2, padding=5, padding_mode="circular")
    # pool padding of exactly half the kernel, kernel equal to output + padding
    out = conv_layer(X2, W2, pool={"kind": "max", "kernel_size": 2, "padding": 1})
    assert out.shape == (1, 6, 2, 2)
    out = conv_layer(X2, W2, pool={"kind": "avg", "kernel_size": 3, "stride": None})
    assert out.shape == (1, 6, 1, 1)
    out = conv_layer(X2, W2, activation="none")
    assert out.shape == (1, 6, 3, 3)


def test_reference_agrees_with_scipy_correlate() -> None:
    """Sanity check of the reference itself (zeros padding, one group)."""
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 6, 5))
    w = rng.standard_normal((3, 2, 3, 2))
    want = np.stack([sum(signal.correlate(np.pad(x[0, ci], 1), w[co, ci], mode="valid") for ci in range(2)) for co in range(3)])[None]
    np.testing.assert_allclose(ref_conv(x, w, None, (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros"), want, atol=1e-12)
    np.testing.assert_allclose(conv_layer(x, w, padding=1), want, atol=1e-12)
