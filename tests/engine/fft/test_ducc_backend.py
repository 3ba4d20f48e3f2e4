"""ducc0 beside FFTW: both backends give scipy's answers, and the calibrated cost model chooses between them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import ducc0
import numpy as np
import pytest
import scipy.signal as ss

from convserve_server.engine import cancellation, resources
from convserve_server.engine.fft import ducc, plans
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.signal import cost_model, overlap_add
from convserve_server.engine.signal.convolution import execute
from convserve_server.engine.signal.planner import plan_signal_call

RNG = np.random.default_rng(1313)
DTYPES = (np.float32, np.float64, np.complex64, np.complex128)


def sample(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    values = RNG.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * RNG.standard_normal(shape)
    return values.astype(dtype)


def reference(x: np.ndarray, h: np.ndarray, mode: str, axes: tuple[int, ...] | None = None) -> np.ndarray:
    wide = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(h) else np.float64
    if mode == "circular":
        ax = axes if axes is not None else tuple(range(x.ndim))
        size = [x.shape[a] for a in ax]
        product = np.fft.fftn(x.astype(wide), axes=ax) * np.fft.fftn(h.astype(wide), s=size, axes=ax)
        result = np.fft.ifftn(product, axes=ax)
        return result if wide == np.complex128 else result.real
    return ss.fftconvolve(x.astype(wide), h.astype(wide), mode, axes=axes)


def run(x: np.ndarray, h: np.ndarray, mode: str, method: str, axes: tuple[int, ...] | None = None) -> tuple[np.ndarray, str]:
    plan = plan_signal_call(x, h, mode, method, axes, "fill", 0, None, correlate=False)
    return execute(plan), plan.fft_backend


def assert_close(result: np.ndarray, expected: np.ndarray) -> None:
    assert result.shape == expected.shape
    tol = 1e-5 if result.dtype in (np.float32, np.complex64) else 1e-12
    peak = max(float(np.max(np.abs(expected))), 1e-300)
    assert float(np.max(np.abs(result - expected))) <= tol * peak


@pytest.mark.parametrize("backend", ducc.BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
@pytest.mark.parametrize("shapes", [((101,), (7,)), ((128,), (16,)), ((37, 64), (5, 4)), ((17, 12, 9), (3, 4, 2))])
def test_both_backends_give_scipys_answers(
    backend: str, dtype: type, mode: str, shapes: tuple[tuple[int, ...], ...], fft_backend: Callable[[str], None]
) -> None:
    fft_backend(backend)
    x, h = sample(shapes[0], dtype), sample(shapes[1], dtype)
    for method in ("fft", "overlap_add"):
        result, used = run(x, h, mode, method)
        assert used == backend
        assert result.dtype == np.result_type(x, h)
        assert_close(result, reference(x, h, mode))


@pytest.mark.parametrize("backend", ducc.BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_backends_convolve_along_axes_and_long_blocked_signals(backend: str, dtype: type, fft_backend: Callable[[str], None]) -> None:
    fft_backend(backend)
    x, h = sample((3, 257, 6), dtype), sample((1, 31, 6), dtype)  # prime length, a batch axis and a broadcast one
    for mode in ("full", "same", "circular"):
        result, used = run(x, h, mode, "fft", axes=(1,))
        assert used == backend
        assert_close(result, reference(x, h, mode, axes=(1,)))
    signal, kernel = sample((20_011,), dtype), sample((129,), dtype)  # overlap-add in several blocks
    result, used = run(signal, kernel, "full", "overlap_add")
    assert used == backend and overlap_add.choose_block(20_011, 129) < fast_length(20_011 + 128)
    assert_close(result, reference(signal, kernel, "full"))


def test_fast_lengths_follow_the_backend(fft_backend: Callable[[str], None]) -> None:
    for n in (1, 7, 1001, 1025, 4097, 2062):
        assert fast_length(n, "ducc0", real=True) == ducc0.fft.good_size(n, True)
        assert fast_length(n, "ducc0", real=False) == ducc0.fft.good_size(n, False)
        assert fast_length(n) == fast_length(n, "fftw", real=False)
    fft_backend("ducc0")
    x, h = sample((1000,), np.complex128), sample((26,), np.complex128)  # N + M - 1 = 1025: ducc0's 1029, FFTW's 1080
    run(x, h, "full", "fft")
    cached = {key[1] for key in plans.CACHE._idle if key[-1] == "ducc0" and key[0] == "c2c"}
    assert (1029,) in cached


def test_integers_stay_exact_on_fftw(fft_backend: Callable[[str], None]) -> None:
    fft_backend("ducc0")
    x = RNG.integers(0, 256, (300, 200)).astype(np.uint8)
    h = RNG.integers(-3, 4, (9, 9)).astype(np.int16)
    for method in ("auto", "fft"):
        result, used = run(x, h, "same", method)
        assert used == "fftw"
        np.testing.assert_array_equal(result, ss.convolve(x.astype(np.int64), h.astype(np.int64), "same", method="direct"))


def test_the_choice_follows_the_calibrated_constants(tmp_path: Path) -> None:
    x, h = sample((300, 300), np.float64), sample((31, 31), np.float64)
    one_d, kernel_1d = sample((50_000,), np.float64), sample((4_000,), np.float64)
    path = tmp_path / "calibration.json"
    try:
        for cheap, dear in (("ducc0", "fftw"), ("fftw", "ducc0")):
            constants = dict(cost_model.DEFAULTS)
            for shape_class in cost_model.SHAPE_CLASSES:
                constants[f"{cheap}_{shape_class}_per_point_log"] = 1e-11
                constants[f"{dear}_{shape_class}_per_point_log"] = 1e-8
            path.write_text(json.dumps({"version": cost_model.CALIBRATION_VERSION, "constants": constants}))
            assert cost_model.load(str(path)) == f"calibration {path}"
            assert run(x, h, "same", "fft")[1] == cheap
            assert run(one_d, kernel_1d, "full", "fft")[1] == cheap
    finally:
        cost_model.load()
    # The defaults: ducc0 for multi-D shapes and overlap-add's batches of blocks, FFTW for single 1-D transforms (as measured here).
    assert run(x, h, "same", "fft")[1] == "ducc0"
    assert run(sample((1 << 20,), np.float64), sample((3001,), np.float64), "full", "fft")[1] == "fftw"
    assert run(sample((1 << 20,), np.float64), sample((65,), np.float64), "full", "overlap_add")[1] == "ducc0"


def test_ducc0_threads_follow_the_requests_share(engine_config: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    engine_config(fftw_threads=2)
    monkeypatch.setitem(cost_model.constants(), "ducc0_parallel_min_points", 1000.0)
    with plans.plan("r2c", (64, 64), np.dtype(np.float64), (0, 1), "ducc0") as plan:
        assert isinstance(plan.fftw, ducc.DuccTransform) and plan.fftw.threads == 2
    with resources.thread_share(1), plans.plan("r2c", (64, 64), np.dtype(np.float64), (0, 1), "ducc0") as plan:
        assert plan.fftw.threads == 1
    with plans.plan("r2c", (16, 16), np.dtype(np.float64), (0, 1), "ducc0") as plan:
        assert plan.fftw.threads == 1  # below the threshold


def test_a_cancelled_scope_stops_ducc0_overlap_add(monkeypatch: pytest.MonkeyPatch, fft_backend: Callable[[str], None]) -> None:
    fft_backend("ducc0")
    monkeypatch.setattr(overlap_add, "GROUP_BYTES", 1 << 14)
    token = threading.Event()
    token.set()
    with cancellation.scope(token), pytest.raises(cancellation.Cancelled):
        run(sample((400_000,), np.float64), sample((257,), np.float64), "full", "overlap_add")


def test_ducc0_plans_reuse_their_buffers_and_results_are_not_views(fft_backend: Callable[[str], None]) -> None:
    fft_backend("ducc0")
    x, h = sample((96, 80), np.float32), sample((9, 9), np.float32)
    first, _ = run(x, h, "full", "fft")
    made = plans.stats()["ducc0_plans"]
    second, _ = run(x, h, "full", "fft")
    assert plans.stats()["ducc0_plans"] == made  # the buffers came from the cache
    run(x[::-1].copy(), h, "full", "fft")
    np.testing.assert_array_equal(first, second)  # not overwritten by the next call


@pytest.mark.parametrize("backend", ducc.BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_conv_layer_fft_path_runs_on_either_backend(backend: str, dtype: type, fft_backend: Callable[[str], None]) -> None:
    from convserve_server.engine.layers import fft

    fft_backend(backend)
    x, w = sample((2, 3, 40, 33), dtype), sample((4, 3, 9, 8), dtype)
    assert fft.backend_for(2 * 4, (40, 33), np.dtype(dtype)) == backend
    got = fft.fft_correlate(x, w, (1, 1), (32, 26), {})
    expected = np.zeros((2, 4, 32, 26))
    for n in range(2):
        for o in range(4):
            expected[n, o] = sum(ss.correlate(x[n, c].astype(np.float64), w[o, c].astype(np.float64), "valid") for c in range(3))
    assert got.dtype == dtype
    assert_close(got, expected)


def test_calibrate_fits_both_backends_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    from convserve_server import calibrate

    # Measured times stand in for the runs: ducc0 takes half FFTW's time on every problem.
    monkeypatch.setattr(calibrate, "_runner", lambda x, h, mode, method, backend: (x.size * h.size, x.dtype, backend))

    def medians(runs: dict[str, tuple[int, np.dtype, str]], repeats: int) -> dict[str, float]:
        return {name: 1e-12 * run[0] * (0.5 if run[2] == "ducc0" else 1.0) * (0.5 if run[1] == np.float32 else 1.0) for name, run in runs.items()}

    monkeypatch.setattr(calibrate, "_medians", medians)
    fitted = calibrate.calibrate(repeats=1, log=lambda line: None)
    assert set(fitted) == set(cost_model.DEFAULTS)
    for shape_class in cost_model.SHAPE_CLASSES:
        fftw, ducc0_ = fitted[f"fftw_{shape_class}_per_point_log"], fitted[f"ducc0_{shape_class}_per_point_log"]
        assert 0 < ducc0_ < fftw  # the faster backend gets the smaller constant
    assert fitted["single"] == pytest.approx(0.5) and fitted["ducc0_single"] == pytest.approx(0.5)
