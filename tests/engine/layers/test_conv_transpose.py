"""The ConvTranspose engine against an independent float64 scatter reference (torch's semantics).

The reference is the definition of a transposed convolution, written without the engine's
zero-insertion trick: every input element, times the kernel, is added into the output at
``stride * i + dilation * k - padding``; ``output_padding`` only makes the output longer.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from convserve_server.engine import conv_transpose
from convserve_server.engine.layers.transpose import PREFIX
from convserve_server.engine.errors import InvalidArgumentError

RNG = np.random.default_rng(11)


def ref_conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    groups: int,
    dilation: tuple[int, ...],
) -> np.ndarray:
    """Scatter every input element times the kernel into a float64 output (batched input)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c_in = x.shape[:2]
    spatial, kernel = x.shape[2:], w.shape[2:]
    cig, cog = c_in // groups, w.shape[1]
    out_spatial = tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, k, s, p, op, d in zip(spatial, kernel, stride, padding, output_padding, dilation))
    out = np.zeros((n, cog * groups) + out_spatial)
    for g in range(groups):
        xs = x[:, g * cig : (g + 1) * cig]
        ws = w[g * cig : (g + 1) * cig]
        for i in itertools.product(*(range(s) for s in spatial)):
            for k in itertools.product(*(range(kk) for kk in kernel)):
                pos = tuple(s * ii + d * kk - p for ii, kk, s, d, p in zip(i, k, stride, dilation, padding))
                if all(0 <= q < o for q, o in zip(pos, out_spatial)):
                    contribution = xs[(slice(None), slice(None)) + i] @ ws[(slice(None), slice(None)) + k]
                    out[(slice(None), slice(g * cog, (g + 1) * cog)) + pos] += contribution
    if b is not None:
        out += np.asarray(b, np.float64).reshape((1, -1) + (1,) * len(spatial))
    return out


def _case(
    nd: int, c_in: int, c_out_g: int, groups: int, spatial: tuple[int, ...], kernel: tuple[int, ...], dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = RNG.standard_normal((2, c_in) + spatial).astype(dtype)
    w = RNG.standard_normal((c_in, c_out_g) + kernel).astype(dtype)
    b = RNG.standard_normal(c_out_g * groups).astype(dtype)
    return x, w, b


SHAPES = {1: ((5,), (3,)), 2: ((4, 3), (2, 3)), 3: ((3, 2, 3), (2, 2, 1))}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_grid_against_reference(nd: int) -> None:
    spatial, kernel = SHAPES[nd]
    checked = 0
    for stride, padding, output_padding, groups, dilation, with_bias in itertools.product((1, 2, 3), (0, 1, 2), (0, 1), (1, 2), (1, 2), (False, True)):
        if output_padding >= stride and output_padding >= dilation:
            continue
        x, w, b = _case(nd, 4, 3, groups, spatial, kernel)
        bias = b if with_bias else None
        args = ((stride,) * nd, (padding,) * nd, (output_padding,) * nd, groups, (dilation,) * nd)
        if any((i - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1 < 1 for i, k in zip(spatial, kernel)):
            with pytest.raises(InvalidArgumentError) as raised:  # torch: "Output size is too small"
                conv_transpose(x, w, bias, stride, padding, output_padding, groups, dilation)
            assert raised.value.field == "padding"
            continue
        expected = ref_conv_transpose(x, w, bias, *args)
        result = conv_transpose(x, w, bias, stride, padding, output_padding, groups, dilation)
        assert result.shape == expected.shape and result.dtype == np.float64
        np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked > 50


def test_per_dimension_arguments_and_unbatched_input() -> None:
    x, w, b = _case(2, 4, 2, 2, (4, 5), (3, 2))
    args = ((2, 3), (1, 0), (1, 2), 2, (1, 2))
    expected = ref_conv_transpose(x, w, b, *args)
    result = conv_transpose(x, w, b, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2))
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    single = conv_transpose(x[1], w, b, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2))
    assert single.shape == expected.shape[1:]
    np.testing.assert_allclose(single, expected[1], rtol=1e-12, atol=1e-12)


def test_output_padding_below_dilation_but_not_stride() -> None:
    x, w, _ = _case(1, 2, 2, 1, (6,), (3,))
    expected = ref_conv_transpose(x, w, None, (1,), (0,), (1,), 1, (2,))
    np.testing.assert_allclose(conv_transpose(x, w, stride=1, output_padding=1, dilation=2), expected, atol=1e-12)


def test_float32_stays_float32() -> None:
    x, w, b = _case(2, 3, 4, 1, (6, 6), (3, 3), np.float32)
    result, info = conv_transpose(x, w, b, stride=2, padding=1, output_padding=1, return_info=True)
    assert result.dtype == np.float32 and info.compute_seconds >= 0 and info.method
    expected = ref_conv_transpose(x, w, b, (2, 2), (1, 1), (1, 1), 1, (1, 1))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_prepared_store_keeps_the_phase_weights() -> None:
    x, w, b = _case(2, 4, 3, 2, (5, 4), (3, 3))
    store: dict[Any, Any] = {}
    first = conv_transpose(x, w, b, stride=2, groups=2, prepared=store)
    phases = {k for k in store if len(k) == 3}
    assert phases == {(PREFIX, 2, (t0, t1)) for t0 in ((2, 0), (1,)) for t1 in ((2, 0), (1,))}  # taps of each phase, flipped
    assert store[(PREFIX, 2, ((2, 0), (1,)))].shape == (6, 2, 2, 1)
    keys = set(store)
    second = conv_transpose(x, w, b, stride=2, groups=2, prepared=store)
    np.testing.assert_array_equal(first, second)
    assert set(store) == keys  # nothing new the second time
    np.testing.assert_allclose(first, ref_conv_transpose(x, w, b, (2, 2), (0, 0), (0, 0), 2, (1, 1)), atol=1e-12)
    # The same weights used as an ordinary (square) layer never see the transposed forms.
    assert all(isinstance(k, tuple) and k and k[0] == PREFIX for k in store)


def test_phases_no_tap_reaches_get_the_bias() -> None:
    x, w, b = _case(1, 2, 3, 1, (4,), (1,))
    result = conv_transpose(x, w, b, stride=3, output_padding=2)
    expected = ref_conv_transpose(x, w, b, (3,), (0,), (2,), 1, (1,))
    np.testing.assert_allclose(result, expected, atol=1e-12)
    np.testing.assert_array_equal(result[..., 1::3], np.broadcast_to(b[None, :, None], result[..., 1::3].shape))


def test_large_layer_in_float32() -> None:
    x, w, b = _case(2, 16, 8, 1, (12, 12), (4, 4), np.float32)
    result = conv_transpose(x, w, b, stride=2, padding=1)
    expected = ref_conv_transpose(x, w, b, (2, 2), (1, 1), (0, 0), 1, (1, 1))
    assert result.shape == (2, 8, 24, 24)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


def test_array_likes_and_bias_list() -> None:
    x = [[1.0, 2.0, 3.0]]
    w = [[[1.0, 1.0]]]
    np.testing.assert_array_equal(conv_transpose(x, w, [0.5], stride=2), [[1.5, 1.5, 2.5, 2.5, 3.5, 3.5]])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"output_padding": 2, "stride": 2}, "output_padding"),
        ({"output_padding": 1}, "output_padding"),
        ({"output_padding": (0, 3), "stride": (2, 2)}, "output_padding"),
        ({"stride": 0}, "stride"),
        ({"stride": (1, 2, 3)}, "stride"),
        ({"padding": -1}, "padding"),
        ({"padding": 9}, "padding"),
        ({"dilation": 0}, "dilation"),
        ({"groups": 3}, "groups"),
        ({"groups": 0}, "groups"),
        ({"groups": 1.5}, "groups"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    x, w, _ = _case(2, 4, 2, 1, (4, 4), (3, 3))
    with pytest.raises(InvalidArgumentError) as raised:
        conv_transpose(x, w, **kwargs)
    assert raised.value.field == field


def test_bad_tensors_name_the_field() -> None:
    x, w, b = _case(2, 4, 2, 1, (4, 4), (3, 3))
    cases: list[tuple[Any, Any, Any, str]] = [
        (x.astype(np.int64), w.astype(np.int64), None, "input"),
        (x, w.astype(np.int32), None, "weight"),
        (x.astype(np.complex128), w, None, "input"),
        (x, w.astype(np.float32), None, "weight"),
        (x, w[:3], None, "weight"),  # weight.shape[0] must be C_in
        (x, w[..., 0], None, "input"),  # a 1-D layer's weight for a 2-D spatial input
        (x, w[..., 0, 0], None, "weight"),  # no kernel axes
        (x, w.reshape(4, 2, 3, 3, 1, 1), None, "weight"),
        (x, w, b[:1], "bias"),
        (x, w, b.astype(np.float32), "bias"),
        (x[:, :, :0], w, None, "input"),
        (x, w[:, :, :0], None, "weight"),
        ("abc", w, None, "input"),
    ]
    for xi, wi, bi, field in cases:
        with pytest.raises(InvalidArgumentError) as raised:
            conv_transpose(xi, wi, bi)
        assert raised.value.field == field, (field, raised.value)
