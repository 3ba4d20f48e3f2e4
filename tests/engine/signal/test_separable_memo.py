"""The separability test is remembered by kernel content: same answers, bounded, never stale."""

from __future__ import annotations

import numpy as np
import scipy.signal as ss

from convserve_server.engine.signal import separable
from convserve_server.engine.signal.convolution import convolve, correlate

RNG = np.random.default_rng(77)


def test_a_kernel_changed_in_place_is_judged_again() -> None:
    """The memo keys on the bytes, not the array: a rank-1 kernel made full-rank in place is no longer factored."""
    g = np.exp(-(np.linspace(-2, 2, 7) ** 2))
    kernel = np.outer(g, g)
    assert separable.factors(kernel, np.dtype(np.float64)) is not None
    kernel[3, 3] += 0.5
    assert separable.factors(kernel, np.dtype(np.float64)) is None
    x = RNG.standard_normal((40, 40))
    np.testing.assert_allclose(convolve(x, kernel, mode="same", method="direct"), ss.convolve(x, kernel, mode="same", method="direct"), atol=1e-12)


def test_the_memo_is_bounded_and_its_factors_are_read_only() -> None:
    for _ in range(separable.FACTORS_ENTRIES + 20):
        separable.factors(np.outer(RNG.random(5), RNG.random(5)), np.dtype(np.float64))
    assert len(separable._FACTORS) <= separable.FACTORS_ENTRIES
    factors = separable.factors(np.outer(np.arange(1.0, 6.0), np.arange(1.0, 6.0)), np.dtype(np.float64))
    assert factors is not None and not factors[0].flags.writeable and not factors[1].flags.writeable


def test_one_call_judges_its_kernel_once() -> None:
    """The planner and the direct path share one memo entry: the direct path flips the factors, not the kernel."""
    for dtype in (np.float32, np.float64):
        g = np.exp(-(np.linspace(-2, 2, 9) ** 2)) * RNG.uniform(0.5, 2)
        for kernel in (np.outer(g, g[::-1] + 0.1).astype(dtype), RNG.standard_normal((7, 7)).astype(dtype)):
            separable._FACTORS.clear()
            x = RNG.standard_normal((300, 200)).astype(dtype)
            for run, reference in ((convolve, ss.convolve), (correlate, ss.correlate)):
                separable._FACTORS.clear()
                result, info = run(x, kernel, mode="same", return_info=True)  # auto: the planner asks too
                assert info.method == "direct" and len(separable._FACTORS) == 1
                expected = reference(x.astype(np.float64), kernel.astype(np.float64), mode="same", method="direct")
                np.testing.assert_allclose(result, expected, atol=(1e-4 if dtype == np.float32 else 1e-11) * np.abs(expected).max())
