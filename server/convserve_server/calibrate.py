"""``convserve calibrate``: measure this host and save the constants of ``auto``'s cost model.

Each group of constants of :mod:`convserve_server.engine.signal.cost_model` is scaled by the ratio of the
measured median time of a representative problem to the time the built-in defaults predict for
it. The result is a JSON file (``--output``, else the ``calibration`` setting, ``CONVSERVE_CALIBRATION``, else
``~/.cache/convserve/calibration.json``) that the server loads at start; ``auto`` is then
deterministic for a given host calibration. With ``--measure-wisdom`` the problems' FFTW plans
are also made with FFTW_MEASURE (bounded by ``--planning-timelimit``) and saved as wisdom.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import pyfftw

from convserve_server import engine, settings
from convserve_server.engine import config, convolve
from convserve_server.engine.fft import plans, wisdom
from convserve_server.engine.signal import cost_model


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _problems() -> dict[str, list[tuple[np.ndarray, np.ndarray, str, str]]]:
    """Representative problems per group of constants: (x, h, mode, method)."""
    rng = np.random.default_rng(0)
    gauss = np.exp(-(np.linspace(-2, 2, 9) ** 2))
    image = rng.standard_normal((1024, 1024))
    return {
        "fft": [(rng.standard_normal(2**18), rng.standard_normal(4097), "full", "fft"), (image, rng.standard_normal((31, 31)), "same", "fft")],
        "single": [(image.astype(np.float32), rng.standard_normal((31, 31)).astype(np.float32), "same", "fft")],
        "numpy_1d": [(rng.standard_normal(10**6), rng.standard_normal(5), "full", "direct")],
        "opencv": [(image.astype(np.float32), rng.standard_normal((5, 5)).astype(np.float32), "same", "direct")],
        "opencv_dft": [(image.astype(np.float32), rng.standard_normal((31, 31)).astype(np.float32), "same", "direct")],
        "opencv_sep": [(image.astype(np.float32), np.outer(gauss, gauss).astype(np.float32), "same", "direct")],
        "loop": [(rng.standard_normal((48, 48, 48)), rng.standard_normal((3, 3, 3)), "same", "direct")],
    }


_GROUPS = {
    "fft": ("fft_per_point_log", "fft_per_point"),
    "numpy_1d": ("numpy_1d_per_mac",),
    "opencv": ("opencv_per_mac", "opencv_per_output"),
    "opencv_dft": ("opencv_dft_per_output",),
    "opencv_sep": ("opencv_sep_per_tap", "opencv_sep_per_output"),
    "loop": ("loop_per_mac",),
}


def _predicted(x: np.ndarray, h: np.ndarray, mode: str, method: str, c: dict[str, float]) -> float:
    """Seconds the cost model predicts for one problem with constants ``c``."""
    axes = tuple(range(x.ndim))
    sizes = [(x.shape[a], h.shape[a]) for a in axes]
    lengths = [n if mode == "same" else n + m - 1 for n, m in sizes]
    work = np.dtype(np.float32 if x.dtype == np.float32 else np.float64)
    if method == "fft":
        return cost_model.fft_cost(1, sizes, work, c)
    return cost_model.direct_cost(x.shape, h, axes, lengths, 1, work, True, c)


def calibrate(repeats: int = 7, log: Callable[[str], None] = print) -> dict[str, float]:
    """Measure this host and return the fitted constants (defaults scaled per group)."""
    defaults = dict(cost_model.DEFAULTS)
    fitted = dict(defaults)
    problems = _problems()
    for group, names in _GROUPS.items():
        ratios = []
        for x, h, mode, method in problems[group]:
            measured = _median_seconds(lambda: convolve(x, h, mode, method), repeats)
            ratios.append(measured / _predicted(x, h, mode, method, defaults))
            log(f"  {group}: {x.shape} * {h.shape} {method}: {measured * 1e3:.2f} ms (x{ratios[-1]:.2f} of the default)")
        ratio = math.exp(statistics.mean(map(math.log, ratios)))
        for name in names:
            fitted[name] = defaults[name] * ratio
    x, h, mode, method = problems["single"][0]
    single = _median_seconds(lambda: convolve(x, h, mode, method), repeats)
    double = _median_seconds(lambda: convolve(x.astype(np.float64), h.astype(np.float64), mode, method), repeats)
    fitted["single"] = min(1.0, max(0.2, single / double))
    log(f"  single/double precision: {fitted['single']:.2f}")
    return fitted


def parallel_threshold(repeats: int, log: Callable[[str], None] = print) -> float:
    """Points from which FFTW's threads pay off here (1e18: never), timing 2^18 and 2^20 points."""
    threads = plans.max_threads()
    if threads == 1:
        return 1e18
    for points in (1 << 18, 1 << 20):
        a = pyfftw.empty_aligned(points, "float64")
        a[:] = 1.0
        out = pyfftw.empty_aligned(points // 2 + 1, "complex128")
        one = _median_seconds(pyfftw.FFTW(a, out, flags=("FFTW_ESTIMATE",), threads=1).execute, 3 * repeats)
        many = _median_seconds(pyfftw.FFTW(a, out, flags=("FFTW_ESTIMATE",), threads=threads).execute, 3 * repeats)
        log(f"  FFTW {points} points: 1 thread {one * 1e3:.2f} ms, {threads} threads {many * 1e3:.2f} ms")
        if many < 0.8 * one:
            return float(points)
    return 1e18


def engine_config() -> config.EngineConfig:
    """The engine configuration of this host's server settings (``CONVSERVE_*`` variables, as the server reads them)."""
    return config.from_settings(settings.load())


def main(argv: list[str]) -> int:
    """Entry point of ``convserve calibrate``; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="convserve calibrate", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", help="calibration file (default: CONVSERVE_CALIBRATION or ~/.cache/convserve/calibration.json)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per problem (median)")
    parser.add_argument("--measure-wisdom", action="store_true", help="also plan with FFTW_MEASURE and save FFTW wisdom")
    parser.add_argument("--wisdom", help="wisdom file (default: CONVSERVE_FFTW_WISDOM)")
    parser.add_argument("--planning-timelimit", type=float, default=10.0, help="seconds per FFTW_MEASURE plan")
    args = parser.parse_args(argv)
    try:
        engine.configure(engine_config())
    except settings.SettingsError as exc:
        print(f"convserve calibrate: {exc}", file=sys.stderr)
        return 2
    path = args.output or cost_model.calibration_path()
    if args.measure_wisdom:
        engine.configure(dataclasses.replace(config.current(), fftw_planner_effort="FFTW_MEASURE", fftw_planning_timelimit=args.planning_timelimit))
        plans.CACHE.clear()
    print(f"calibrating {platform.node()} ({os.cpu_count()} cores); this takes about a minute")
    threshold = parallel_threshold(args.repeats)
    engine.configure(dataclasses.replace(config.current(), calibration=""))
    cost_model.DEFAULTS["fftw_parallel_min_points"] = threshold
    cost_model.load("/nonexistent")  # the built-in constants with this host's thread threshold while measuring
    fitted = calibrate(args.repeats)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = {
        "version": cost_model.CALIBRATION_VERSION,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "constants": fitted,
    }
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(temporary, path)
    print(f"saved {path}")
    if args.measure_wisdom:
        saved = wisdom.save_wisdom(args.wisdom)
        print(f"saved FFTW wisdom to {saved}" if saved else "no wisdom file given (--wisdom or CONVSERVE_FFTW_WISDOM)")
    cost_model.load(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
