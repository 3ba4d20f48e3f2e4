"""Kernel spectra remembered by their bytes: a hit gives the numbers a miss computes, and nothing stale or unbounded is kept."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import convolve, correlate
from convserve_server.engine.signal import kernel_spectra

RNG = np.random.default_rng(77)


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    kernel_spectra.clear()


@pytest.mark.parametrize("backend_dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("shapes", [((300, 200), (15, 15)), ((4000,), (301,)), ((20, 30, 25), (5, 5, 5))])
def test_a_hit_gives_the_numbers_of_a_miss(shapes, backend_dtype) -> None:
    x = RNG.standard_normal(shapes[0]).astype(backend_dtype)
    h = RNG.standard_normal(shapes[1]).astype(backend_dtype)
    first = convolve(x, h, "same", "fft")
    assert kernel_spectra.held_bytes() > 0
    again = convolve(x, h, "same", "fft")
    np.testing.assert_array_equal(again, first)
    kernel_spectra.clear()
    np.testing.assert_array_equal(convolve(x, h, "same", "fft"), first)
    tolerance = 1e-4 if backend_dtype == np.float32 else 1e-10
    np.testing.assert_allclose(first, ss.fftconvolve(x, h, "same"), atol=tolerance * np.abs(first).max())


def test_a_kernel_changed_in_place_is_not_served_from_the_cache() -> None:
    x, h = RNG.standard_normal((128, 128)), RNG.standard_normal((9, 9))
    convolve(x, h, "full", "fft")
    h[4, 4] += 1.0  # same object, same shape and dtype, new bytes
    np.testing.assert_allclose(convolve(x, h, "full", "fft"), ss.fftconvolve(x, h, "full"), atol=1e-10)
    other = RNG.standard_normal((9, 9))
    np.testing.assert_allclose(convolve(x, other, "full", "fft"), ss.fftconvolve(x, other, "full"), atol=1e-10)


def test_convolution_and_correlation_with_one_kernel_do_not_share_a_spectrum() -> None:
    x, h = RNG.standard_normal((100, 90)), RNG.standard_normal((7, 6))
    convolve(x, h, "same", "fft")
    np.testing.assert_allclose(correlate(x, h, "same", "fft"), ss.correlate(x, h, "same", "direct"), atol=1e-10)
    np.testing.assert_allclose(convolve(x, h, "same", "fft"), ss.convolve(x, h, "same", "direct"), atol=1e-10)
    xc, hc = x + 1j * RNG.standard_normal(x.shape), h + 1j * RNG.standard_normal(h.shape)
    convolve(xc, hc, "same", "fft")
    np.testing.assert_allclose(correlate(xc, hc, "same", "fft"), ss.correlate(xc, hc, "same", "direct"), atol=1e-10)


def test_one_kernel_at_different_transform_sizes() -> None:
    h = RNG.standard_normal((5, 5))
    for n in (40, 64, 100, 64):
        x = RNG.standard_normal((n, n))
        np.testing.assert_allclose(convolve(x, h, "full", "fft"), ss.fftconvolve(x, h, "full"), atol=1e-10)


def test_the_cache_is_bounded_and_large_kernels_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_spectra, "MAX_TOTAL_BYTES", 200_000)
    x = RNG.standard_normal((100, 100))
    for _ in range(20):
        convolve(x, RNG.standard_normal((5, 5)), "same", "fft")
        assert kernel_spectra.held_bytes() <= 200_000
    assert len(kernel_spectra._CACHE) <= kernel_spectra.MAX_ENTRIES
    kernel_spectra.clear()
    big = RNG.standard_normal((400, 400))  # 1.28 MB: more than MAX_KERNEL_BYTES
    convolve(RNG.standard_normal((420, 420)), big, "same", "fft")
    assert kernel_spectra.held_bytes() == 0


def test_kept_spectra_cannot_be_written() -> None:
    convolve(RNG.standard_normal((64, 64)), RNG.standard_normal((5, 5)), "same", "fft")
    ((_, spectrum),) = kernel_spectra._CACHE.values()
    with pytest.raises(ValueError):
        spectrum[0, 0] = 1.0


def test_the_key_holds_the_kernel_it_transforms() -> None:
    h = RNG.standard_normal((6, 5))[::-1, ::2]  # a view with negative strides
    key = kernel_spectra.key(h, ("transform",))
    np.testing.assert_array_equal(kernel_spectra.kernel_of(key, h), h)
    h[0, 0] += 1.0  # the caller's array changes: the key's kernel does not
    assert kernel_spectra.kernel_of(key, h)[0, 0] == h[0, 0] - 1.0


def test_a_large_kernel_is_kept_by_a_sample_and_compared_whole_on_a_hit() -> None:
    x = RNG.standard_normal(120_000)
    h = RNG.standard_normal(20_001)  # 160 kB: past the bytes key, keyed by a sample of its values
    first = convolve(x, h, "full", "fft")
    assert len(kernel_spectra._CACHE) == 1 and kernel_spectra.held_bytes() > h.nbytes
    np.testing.assert_array_equal(convolve(x, h, "full", "fft"), first)  # a hit
    between = h.copy()
    between[1] += 1.0  # outside the sample (every 78th value): the same key, another kernel
    assert kernel_spectra.key(between, ("t",)) == kernel_spectra.key(h, ("t",))
    np.testing.assert_allclose(convolve(x, between, "full", "fft"), ss.fftconvolve(x, between), atol=1e-9)
    assert len(kernel_spectra._CACHE) == 1  # the new kernel's spectrum replaced the old one
    np.testing.assert_allclose(convolve(x, h, "full", "fft"), first, atol=1e-9)
    view = RNG.standard_normal((2, 30_000))[:, ::2]  # a non-contiguous kernel
    signals = RNG.standard_normal((2, 50_000))
    for _ in range(2):
        np.testing.assert_allclose(convolve(signals, view, "same", "fft", axes=1), ss.fftconvolve(signals, view, "same", axes=1), atol=1e-9)
