"""OpenCV's filter in bands on the engine's threads: the same numbers as one call, and the NaN/Inf verdict of every band."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from convserve_server.engine import cancellation, convolve, correlate, resources
from convserve_server.engine.info import NONFINITE_WARNING, FiniteCheck, has_nonfinite
from convserve_server.engine.signal import direct, opencv_bands

RNG = np.random.default_rng(1212)


def _one_call(src: np.ndarray, kernel: np.ndarray, anchor: tuple[int, int], first: int, rows: int) -> np.ndarray:
    depth = cv2.CV_64F if src.dtype == np.float64 else cv2.CV_32F
    return cv2.filter2D(src, depth, kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT)[first : first + rows]


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many bands and a split over threads on test-sized images."""
    monkeypatch.setattr(opencv_bands, "BAND_BYTES", 4096)
    monkeypatch.setattr(opencv_bands, "MIN_SPLIT_BYTES", 8192)


@pytest.mark.parametrize("shape,k,anchor", [((301, 97), (3, 3), (1, 1)), ((257, 64), (7, 5), (0, 6)), ((90, 33), (8, 2), (1, 0)), ((64, 40), (1, 1), (0, 0))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bands_equal_one_opencv_call_bit_for_bit(small_bands: None, shape, k, anchor, dtype, threads: int) -> None:
    src = RNG.standard_normal(shape).astype(dtype)
    kernel = RNG.standard_normal(k).astype(dtype)
    for first, rows in [(0, shape[0]), (k[0] - 1, shape[0] - k[0] + 1), (5, 17)]:
        with resources.thread_share(threads):
            got, nonfinite = opencv_bands.filter_rows(cv2, src, kernel, anchor, first, rows, cv2.CV_32F if dtype == np.float32 else cv2.CV_64F, np.dtype(dtype))
        np.testing.assert_array_equal(got, _one_call(src, kernel, anchor, first, rows))
        assert got.flags.c_contiguous and got.dtype == dtype and not nonfinite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "overflow"])
@pytest.mark.parametrize("row", [0, 150, 299])
def test_every_band_is_checked(small_bands: None, bad, row: int) -> None:
    src = RNG.standard_normal((300, 64)).astype(np.float32)
    kernel = RNG.standard_normal((3, 3)).astype(np.float32)
    if bad == "overflow":  # finite inputs whose products overflow float32
        src[row, 10] = 3e38
        kernel[:] = 4.0
    else:
        src[row, 10] = bad
    got, nonfinite = opencv_bands.filter_rows(cv2, src, kernel, (1, 1), 0, 300, cv2.CV_32F, np.dtype(np.float32))
    assert nonfinite and has_nonfinite(got)
    src[row, 10] = 1.0
    kernel[:] = 0.5
    got, nonfinite = opencv_bands.filter_rows(cv2, src, kernel, (1, 1), 0, 300, cv2.CV_32F, np.dtype(np.float32))
    assert not nonfinite and not has_nonfinite(got)


def test_huge_finite_values_whose_sum_overflows_are_not_reported(small_bands: None) -> None:
    src = np.full((200, 64), 3e38, np.float32)  # every output finite (3e38), but the band sums overflow
    kernel = np.zeros((3, 3), np.float32)
    kernel[1, 1] = 1.0
    got, nonfinite = opencv_bands.filter_rows(cv2, src, kernel, (1, 1), 0, 200, cv2.CV_32F, np.dtype(np.float32))
    assert not nonfinite and np.isfinite(got).all()


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_the_engine_uses_the_bands_and_their_verdict(small_bands: None, mode: str, dtype) -> None:
    import scipy.signal as ss

    x = (RNG.standard_normal((180, 70)) * 40 + 100).astype(dtype)
    h = RNG.standard_normal((5, 3)).astype(np.float64 if dtype == np.uint8 else dtype)
    expected = ss.convolve(x.astype(np.float64), h.astype(np.float64), mode, "direct")
    result, info = convolve(x, h, mode, "direct", return_info=True)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-3 if dtype == np.float32 else 1e-9)
    assert NONFINITE_WARNING not in info.warnings
    checked = FiniteCheck()
    direct.linear_region(x, h, (0, 1), [2, 1], [176, 70], np.dtype(np.float64 if dtype == np.uint8 else dtype), checked)
    assert checked.nonfinite is False  # an image as wide as its output: filtered in bands
    if dtype != np.uint8:
        x[90, 30] = np.nan
        result, info = convolve(x, h, mode, "direct", return_info=True)
        assert NONFINITE_WARNING in info.warnings
        assert np.isnan(result).sum() == np.isnan(ss.convolve(x.astype(np.float64), h.astype(np.float64), mode, "direct")).sum()
        result, info = correlate(x, h, mode, "direct", return_info=True)
        assert NONFINITE_WARNING in info.warnings


def test_a_cast_that_overflows_is_still_reported(small_bands: None) -> None:
    x = np.full((100, 40), 30000, np.float16)  # computed in float32, finite there; float16 overflows
    h = np.ones((3, 3), np.float16)
    result, info = convolve(x, h, "same", "direct", return_info=True)
    assert result.dtype == np.float16 and np.isinf(result).any() and NONFINITE_WARNING in info.warnings


def test_a_cancelled_call_stops_in_every_share(small_bands: None) -> None:
    token = threading.Event()
    token.set()
    src = RNG.standard_normal((400, 64)).astype(np.float32)
    with resources.thread_share(2), cancellation.scope(token), pytest.raises(cancellation.Cancelled):
        opencv_bands.filter_rows(cv2, src, np.ones((3, 3), np.float32), (1, 1), 0, 400, cv2.CV_32F, np.dtype(np.float32))


def test_concurrent_callers_get_their_own_results(small_bands: None) -> None:
    images = [RNG.standard_normal((200, 50)).astype(np.float32) for _ in range(6)]
    kernel = RNG.standard_normal((3, 3)).astype(np.float32)
    expected = [convolve(img, kernel, "same", "direct") for img in images]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(5):
            results[i] = convolve(images[i], kernel, "same", "direct")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(results[i], expected[i])


def test_a_tall_kernel_on_few_rows_keeps_no_spare_rows_alive() -> None:
    result = convolve(np.ones((1, 1 << 16)), np.ones((49, 1)), "same", "direct")
    owner = result if result.base is None else result.base
    assert owner.nbytes <= 2 * result.nbytes
    x = RNG.standard_normal((3, 4000))
    result = convolve(x, RNG.standard_normal((40, 3)), "full", "direct")
    owner = result if result.base is None else result.base
    assert owner.nbytes <= 2 * result.nbytes


def test_band_threads_follow_the_cores_this_process_may_use() -> None:
    import os

    if hasattr(os, "sched_getaffinity"):
        assert resources.CORES == len(os.sched_getaffinity(0))
