"""Pruned ducc0 transforms equal whole ones: zero lines skipped on the way in, unread output on the way out."""

from __future__ import annotations

import ducc0
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from convserve_server.engine.fft import pruned


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], list[int], list[tuple[int, int]], bool]:
    """A zero-padded operand, the transformed axes, its nonzero extents and an output range to read."""
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    axes = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    extents = [draw(st.integers(1, n)) if axis in axes else n for axis, n in enumerate(shape)]
    needed = []
    for n in shape:
        start = draw(st.integers(0, n - 1))
        needed.append((start, draw(st.integers(start + 1, n))))
    complex_ = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if complex_ else 0)
    corner = tuple(slice(0, e) for e in extents)
    buffer = np.zeros(shape, np.complex128 if complex_ else np.float64)
    buffer[corner] = values[corner]
    return buffer, axes, extents, needed, complex_


@settings(max_examples=300, deadline=None)
@given(cases())
def test_pruned_forward_equals_the_whole_transform(case: tuple[np.ndarray, tuple[int, ...], list[int], list[tuple[int, int]], bool]) -> None:
    buffer, axes, extents, _, complex_ = case
    if complex_:
        whole = ducc0.fft.c2c(buffer, axes=axes, forward=True)
        out = np.full(whole.shape, np.nan + 1j * np.nan)  # garbage where the pruned transform skips: it must write every entry
        pruned.forward("c2c", buffer, out, axes, extents, 1)
    else:
        whole = ducc0.fft.r2c(buffer, axes=axes)
        out = np.full(whole.shape, np.nan + 1j * np.nan)
        pruned.forward("r2c", buffer, out, axes, extents, 1)
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-12 * max(1.0, float(np.abs(whole).max())))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_pruned_inverse_is_right_where_it_is_read(case: tuple[np.ndarray, tuple[int, ...], list[int], list[tuple[int, int]], bool]) -> None:
    buffer, axes, _, needed, complex_ = case
    region = tuple(slice(a, b) for a, b in needed)
    if complex_:
        spectrum = ducc0.fft.c2c(buffer, axes=axes, forward=True)
        whole = ducc0.fft.c2c(spectrum, axes=axes, forward=False)
        out = np.full(buffer.shape, np.nan, buffer.dtype)
        pruned.inverse("c2c_inverse", spectrum.copy(), out, axes, needed, 1)
    else:
        spectrum = ducc0.fft.r2c(buffer, axes=axes)
        whole = ducc0.fft.c2r(spectrum, axes=axes, lastsize=buffer.shape[axes[-1]], forward=False)
        out = np.full(buffer.shape, np.nan)
        pruned.inverse("c2r", spectrum.copy(), out, axes, needed, 1)
    np.testing.assert_allclose(out[region], whole[region], rtol=0, atol=1e-12 * max(1.0, float(np.abs(whole).max())))
