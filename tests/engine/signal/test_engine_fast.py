"""The engine's fast paths: OpenCV/numpy direct kernels, cached FFTW plans, batched overlap-add."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import convolve, correlate
from convserve_server.engine.signal import direct_fast, separable
from convserve_server.engine.fft import plans, wisdom
from convserve_server.engine.fft.sizes import fast_length

RNG = np.random.default_rng(7)


def close(result: np.ndarray, expected: np.ndarray, tol: float) -> None:
    """Same shape; values within ``tol`` of the reference relative to its peak."""
    assert result.shape == expected.shape
    peak = max(float(np.max(np.abs(expected))), 1e-30)
    assert float(np.max(np.abs(result.astype(np.complex128) - expected))) <= tol * peak


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 11, 15])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_direct_2d_images(mode: str, k: int, dtype: str, tol: float) -> None:
    x = RNG.standard_normal((37, 41)).astype(dtype)
    h = RNG.standard_normal((k, k + 1)).astype(dtype)
    result = convolve(x, h, mode, "direct")
    assert result.dtype == np.dtype(dtype)
    close(result, ss.convolve(x.astype(np.float64), h.astype(np.float64), mode, "direct"), tol)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_separable_kernels_run_as_two_passes(mode: str) -> None:
    g = np.exp(-(np.linspace(-2, 2, 9) ** 2))
    h = np.outer(g, g[:7])
    x = RNG.standard_normal((60, 50))
    assert separable.factors(h, np.dtype(np.float64)) is not None
    close(convolve(x, h, mode, "direct"), ss.convolve(x, h, mode, "direct"), 1e-12)


@pytest.mark.parametrize("n", [10, 200_000])
@pytest.mark.parametrize("m", [3, 20, 49, 64])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_direct_1d_one_signal(n: int, m: int, mode: str) -> None:
    x, h = RNG.standard_normal(n), RNG.standard_normal(m)
    close(convolve(x, h, mode, "direct"), np.convolve(x, h, mode) if mode != "same" else ss.convolve(x, h, mode), 1e-12)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_direct_batches_channels_and_broadcast(mode: str) -> None:
    image = RNG.standard_normal((30, 20, 3)).astype(np.float32)
    kernel = RNG.standard_normal((5, 3)).astype(np.float32)
    expected = ss.fftconvolve(image.astype(np.float64), kernel[:, :, None].astype(np.float64), mode, axes=(0, 1))
    close(convolve(image, kernel, mode, "direct", axes=(0, 1)), expected, 1e-5)
    signals = RNG.standard_normal((4, 500))
    per_row = RNG.standard_normal((4, 9))
    close(convolve(signals, per_row, mode, "direct", axes=1), ss.fftconvolve(signals, per_row, mode, axes=1), 1e-12)
    shared = RNG.standard_normal((1, 9))
    close(convolve(signals, shared, mode, "direct", axes=1), ss.fftconvolve(signals, shared, mode, axes=1), 1e-12)
    close(correlate(signals, shared, mode, "direct", axes=1), ss.correlate(signals, shared, mode, "direct"), 1e-12)


def test_uint8_images_are_exact_in_every_method() -> None:
    x = RNG.integers(0, 256, (64, 48)).astype(np.uint8)
    h = RNG.integers(-9, 10, (5, 5)).astype(np.int16)
    expected = ss.convolve(x.astype(np.int64), h.astype(np.int64), "same", "direct")
    for method in ("direct", "fft", "overlap_add", "auto"):
        np.testing.assert_array_equal(convolve(x, h, "same", method, output_dtype="int64"), expected)


def test_integers_beyond_float64_exactness_fall_back_to_int64() -> None:
    x = np.array([2**40 + 1, -(2**40) + 3, 7] * 100, dtype=np.int64)
    h = np.array([2**12 + 1, 3, -5], dtype=np.int64)
    expected = np.convolve(x.astype(object), h.astype(object)).astype(np.int64)
    np.testing.assert_array_equal(convolve(x, h, method="direct"), expected)


@pytest.mark.parametrize("k", [5, 15])
def test_nan_stays_local_with_opencv(k: int) -> None:
    x = np.ones((80, 80), dtype=np.float32)
    x[40, 40] = np.nan
    result = convolve(x, np.ones((k, k), np.float32), "same", "direct")
    assert np.isnan(result).sum() == k * k


@pytest.mark.parametrize("shapes,axes", [(((3, 5000), (1, 70)), None), (((5000, 3), (70,)), (0,)), (((40, 3000), (5, 100)), None)])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_overlap_add_blocks_match(shapes, axes, mode: str) -> None:
    x, h = RNG.standard_normal(shapes[0]), RNG.standard_normal(shapes[1])
    reference_h = h if h.ndim == x.ndim else h[:, None]
    close(convolve(x, h, mode, "overlap_add", axes=axes), ss.fftconvolve(x, reference_h, mode, axes=axes), 1e-12)


def test_overlap_add_long_1d_float32() -> None:
    x = RNG.standard_normal(300_000).astype(np.float32)
    h = RNG.standard_normal(1025).astype(np.float32)
    result = convolve(x, h, "full", "overlap_add")
    assert result.dtype == np.float32
    close(result, ss.oaconvolve(x.astype(np.float64), h.astype(np.float64)), 1e-5)


def test_fast_lengths_are_5_smooth() -> None:
    for n in (1, 7, 11, 97, 1001, 2062, 1001024):
        length = fast_length(n)
        assert length >= n
        rest = length
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1


def test_plans_are_reused_and_results_are_not_views_of_buffers() -> None:
    x, h = RNG.standard_normal(4096), RNG.standard_normal(300)
    first = convolve(x, h, method="fft")
    created = plans.stats()["plans_created"]
    second = convolve(x, h, method="fft")
    assert plans.stats()["plans_created"] == created
    np.testing.assert_array_equal(first, second)
    convolve(x[::-1].copy(), h, method="fft")
    np.testing.assert_array_equal(first, second)  # the first result is not overwritten


def test_plan_cache_is_bounded() -> None:
    cache = plans.PlanCache(max_bytes=1 << 20)
    with plans.plan("r2c", (4096,), np.dtype(np.float64), (0,)) as plan:
        pass
    for _ in range(100):
        cache.give_back(plan)
    assert cache.nbytes <= 1 << 20


def test_planner_effort_setting(engine_config: Callable[..., None]) -> None:
    engine_config(fftw_planner_effort="measure")
    assert plans.planner_effort() == "FFTW_MEASURE"
    engine_config(fftw_planner_effort="fftw_patient")
    assert plans.planner_effort() == "FFTW_PATIENT"
    engine_config(fftw_planner_effort="measure")
    with pytest.raises(ValueError):
        engine_config(fftw_planner_effort="bogus")
    assert plans.planner_effort() == "FFTW_MEASURE"


def test_wisdom_round_trip_means_no_planning_after_restart(tmp_path) -> None:
    """A fresh process that loads the wisdom file plans a seen shape from wisdom alone."""
    path = str(tmp_path / "wisdom")
    script = (
        "import sys, numpy as np, pyfftw\n"
        "from convserve_server.engine.fft import wisdom\n"
        "print(wisdom.load_wisdom(sys.argv[1]))\n"
        "a = pyfftw.empty_aligned(1000, 'float64'); b = pyfftw.empty_aligned(501, 'complex128')\n"
        "try:\n"
        "    pyfftw.FFTW(a, b, flags=('FFTW_WISDOM_ONLY', 'FFTW_MEASURE')); print('WISDOM-HIT')\n"
        "except RuntimeError:\n"
        "    print('WISDOM-MISS')\n"
        "    pyfftw.FFTW(a, b, flags=('FFTW_MEASURE',))\n"
        "    wisdom.save_wisdom(sys.argv[1])\n"
    )
    env = dict(os.environ, CONVSERVE_FFTW_WISDOM="")
    first = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=env, check=True)
    assert "WISDOM-MISS" in first.stdout and os.path.exists(path)
    second = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=env, check=True)
    assert "WISDOM-HIT" in second.stdout and "loaded" in second.stdout


def test_bad_wisdom_file_is_reported_not_raised(tmp_path) -> None:
    path = tmp_path / "wisdom"
    path.write_bytes(b"garbage")
    assert wisdom.load_wisdom(str(path)).startswith("rejected")
    path.write_bytes(b"x\n--convserve-wisdom--\ny\n--convserve-wisdom--\nz")
    assert "rejected" in wisdom.load_wisdom(str(path))
    assert "effort=" in plans.wisdom_state()


@pytest.mark.parametrize("n,m,mode", [(5000, 7, "full"), (5000, 40, "same"), (5000, 300, "valid"), (9000, 2, "full")])
def test_direct_1d_in_cancellable_chunks_is_bit_identical(monkeypatch: pytest.MonkeyPatch, n: int, m: int, mode: str) -> None:
    x, h = RNG.standard_normal(n), RNG.standard_normal(m)
    whole = convolve(x, h, mode, "direct")
    monkeypatch.setattr(direct_fast, "CHUNK_MACS", 512)
    chunked = convolve(x, h, mode, "direct")
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("shape,k", [((300, 200), (7, 7)), ((300, 200), (13, 12)), ((1, 300_000), (1, 9))])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_direct_2d_in_cancellable_bands_matches(monkeypatch: pytest.MonkeyPatch, shape, k, mode: str) -> None:
    x, h = RNG.standard_normal(shape).astype(np.float32), RNG.standard_normal(k).astype(np.float32)
    monkeypatch.setattr(direct_fast, "CHUNK_MACS", 4096)
    monkeypatch.setattr(direct_fast, "OPENCV_CHUNK_MACS", 4096)
    expected = ss.convolve(x.astype(np.float64), h.astype(np.float64), mode, "direct")
    close(convolve(x, h, mode, "direct"), expected, 1e-5)


@pytest.mark.parametrize("shapes,axes", [(((3, 5000), (1, 70)), None), (((5000, 3), (70,)), (0,)), (((40, 3000), (5, 100)), None)])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_overlap_add_in_groups_matches(monkeypatch: pytest.MonkeyPatch, shapes, axes, mode: str) -> None:
    from convserve_server.engine.signal import overlap_add

    monkeypatch.setattr(overlap_add, "GROUP_BYTES", 8192)
    x, h = RNG.standard_normal(shapes[0]), RNG.standard_normal(shapes[1])
    reference_h = h if h.ndim == x.ndim else h[:, None]
    close(convolve(x, h, mode, "overlap_add", axes=axes), ss.fftconvolve(x, reference_h, mode, axes=axes), 1e-12)


@pytest.mark.parametrize("method,m", [("direct", 3001), ("direct", 5), ("overlap_add", 4097)])
def test_a_cancelled_scope_stops_long_work(monkeypatch: pytest.MonkeyPatch, method: str, m: int) -> None:
    import threading
    from convserve_server.engine import cancellation
    from convserve_server.engine.signal import overlap_add

    monkeypatch.setattr(direct_fast, "CHUNK_MACS", 1 << 12)
    monkeypatch.setattr(direct_fast, "OPENCV_CHUNK_MACS", 1 << 12)
    monkeypatch.setattr(overlap_add, "GROUP_BYTES", 1 << 14)
    token = threading.Event()
    token.set()
    x, h = RNG.standard_normal(400_000), RNG.standard_normal(m)
    with cancellation.scope(token), pytest.raises(cancellation.Cancelled):
        convolve(x, h, "full", method)


def test_a_cancelled_scope_stops_2d_direct_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from convserve_server.engine import cancellation

    monkeypatch.setattr(direct_fast, "OPENCV_CHUNK_MACS", 1 << 12)
    token = threading.Event()
    token.set()
    x, h = RNG.standard_normal((400, 300)).astype(np.float32), RNG.standard_normal((7, 7)).astype(np.float32)
    with cancellation.scope(token), pytest.raises(cancellation.Cancelled):
        convolve(x, h, "same", "direct")
