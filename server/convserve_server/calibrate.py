"""``convserve calibrate``: measure this host and save the constants of ``auto``'s cost model.

Each group of constants of :mod:`convserve_server.engine.signal.cost_model` is scaled by the ratio of the
measured median time of a representative problem to the time the built-in defaults predict for
it. The result is a JSON file (``--output``, else the ``calibration`` setting, ``CONVSERVE_CALIBRATION``, else
``~/.cache/convserve/calibration.json``) that the server loads at start; ``auto`` is then
deterministic for a given host calibration. Both FFT backends are measured on the same problems
(FFTW and ducc0, one and several transformed axes, single and double precision, one thread and
all), so the cost model chooses between them per shape class on this host. With
``--measure-wisdom`` the problems' FFTW plans are also made with FFTW_MEASURE (bounded by
``--planning-timelimit``) and saved as wisdom.
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
from convserve_server.engine import config
from convserve_server.engine.fft import ducc, plans, wisdom
from convserve_server.engine.signal import cost_model
from convserve_server.engine.signal.convolution import execute
from convserve_server.engine.signal.planner import plan_signal_call


def _medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Wall time of each run after one warm-up call: the fastest of ``repeats``, the runs interleaved round by round.

    Interleaving puts the runs compared with each other (FFTW and ducc0 on one problem, single
    and double precision) under the same background load, so their ratio holds on a busy host;
    the fastest repeat (rather than the median) keeps a burst of other load out of the constants
    (measured here: one calibration under a burst put numpy.convolve at 9.5x its usual time).
    """
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Wall time of ``fn`` after one warm-up call (the fastest of ``repeats``)."""
    return _medians({"run": fn}, repeats)["run"]


def _problems() -> dict[str, list[tuple[np.ndarray, np.ndarray, str, str]]]:
    """Representative problems per group of constants: (x, h, mode, method)."""
    rng = np.random.default_rng(0)
    gauss = np.exp(-(np.linspace(-2, 2, 9) ** 2))
    image = rng.standard_normal((1024, 1024))
    one_d = [(rng.standard_normal(2**18), rng.standard_normal(4097), "full", "fft")]
    blocks = [(rng.standard_normal(10**6), rng.standard_normal(257), "full", "overlap_add")]
    multi_d = [(image, rng.standard_normal((31, 31)), "same", "fft")]
    return {
        "fftw_1d_batch": blocks,
        "fftw_1d": one_d,
        "fftw_nd": multi_d,
        "ducc0_1d_batch": blocks,
        "ducc0_1d": one_d,
        "ducc0_nd": multi_d,
        "numpy_1d": [(rng.standard_normal(10**6), rng.standard_normal(5), "full", "direct")],
        "opencv": [(image.astype(np.float32), rng.standard_normal((5, 5)).astype(np.float32), "same", "direct")],
        "opencv_dft": [(image.astype(np.float32), rng.standard_normal((31, 31)).astype(np.float32), "same", "direct")],
        "opencv_sep": [(image.astype(np.float32), np.outer(gauss, gauss).astype(np.float32), "same", "direct")],
        "loop": [(rng.standard_normal((48, 48, 48)), rng.standard_normal((3, 3, 3)), "same", "direct")],
    }


_GROUPS = {
    **{f"{backend}_{shape_class}": (f"{backend}_{shape_class}_per_point_log",) for backend in ducc.BACKENDS for shape_class in cost_model.SHAPE_CLASSES},
    "numpy_1d": ("numpy_1d_per_mac",),
    "opencv": ("opencv_per_mac", "opencv_per_output"),
    "opencv_dft": ("opencv_dft_per_output",),
    "opencv_sep": ("opencv_sep_per_tap", "opencv_sep_per_output"),
    "loop": ("loop_per_mac",),
}


def _backend_of(group: str) -> str:
    """The FFT backend a group of constants belongs to (FFTW for the direct groups, which use none)."""
    return ducc.DUCC0 if group.startswith("ducc0") else ducc.FFTW


def _runner(x: np.ndarray, h: np.ndarray, mode: str, method: str, backend: str) -> Callable[[], Any]:
    """A call of the engine on one problem with the FFT backend forced (the planner's other choices kept)."""
    plan = plan_signal_call(x, h, mode, method, None, "fill", 0, None, correlate=False)
    plan = dataclasses.replace(plan, fft_backend=backend if plan.method != "direct" else ducc.FFTW)
    return lambda: execute(dataclasses.replace(plan, warnings=[]))


def _predicted(x: np.ndarray, h: np.ndarray, mode: str, method: str, c: dict[str, float], backend: str = ducc.FFTW) -> float:
    """Seconds the cost model predicts for one problem with constants ``c``."""
    axes = tuple(range(x.ndim))
    sizes = [(x.shape[a], h.shape[a]) for a in axes]
    lengths = [n if mode == "same" else n + m - 1 for n, m in sizes]
    work = np.dtype(np.float32 if x.dtype == np.float32 else np.float64)
    if method == "fft":
        return cost_model.fft_cost(1, sizes, work, c, backend)
    if method == "overlap_add":
        return cost_model.overlap_add_cost(1, sizes, work, c, backend)
    return cost_model.direct_cost(x.shape, h, axes, lengths, 1, work, True, c)


def _measure(repeats: int, log: Callable[[str], None]) -> dict[tuple[str, int], float]:
    """Median seconds of every group's problems; the backends' runs of one problem interleaved."""
    problems = _problems()
    measured: dict[tuple[str, int], float] = {}
    pending = list(_GROUPS)
    while pending:
        group = pending[0]
        peers = (
            [g for g in pending if g.split("_", 1)[-1] == group.split("_", 1)[-1] and g.startswith(ducc.BACKENDS)]
            if group.startswith(ducc.BACKENDS)
            else [group]
        )
        for index, (x, h, mode, method) in enumerate(problems[group]):
            medians = _medians({g: _runner(x, h, mode, method, _backend_of(g)) for g in peers}, repeats)
            for g in peers:
                measured[(g, index)] = medians[g]
                log(f"  {g}: {x.shape} * {h.shape} {method}: {medians[g] * 1e3:.2f} ms")
        pending = [g for g in pending if g not in peers]
    return measured


def _fit_group(group: str, names: tuple[str, ...], defaults: dict[str, float], measured: dict[tuple[str, int], float]) -> float:
    """The factor on a group's constants that makes the model predict the measured times of its problems.

    Only the group's own share of a prediction is scaled (the rest, such as the copies around
    a transform, is the same for every group).
    """
    ratios = []
    backend = _backend_of(group)
    without = dict(defaults, **{name: 0.0 for name in names})
    for index, (x, h, mode, method) in enumerate(_problems()[group]):
        seconds = measured[(group, index)]
        predicted = _predicted(x, h, mode, method, defaults, backend)
        rest = _predicted(x, h, mode, method, without, backend)
        ratios.append(max(seconds - rest, 0.05 * seconds) / max(predicted - rest, 1e-12))
    return math.exp(statistics.mean(map(math.log, ratios)))


def calibrate(repeats: int = 7, log: Callable[[str], None] = print) -> dict[str, float]:
    """Measure this host and return the fitted constants (defaults scaled per group)."""
    defaults = dict(cost_model.DEFAULTS)
    fitted = dict(defaults)
    measured = _measure(repeats, log)
    for group, names in _GROUPS.items():
        ratio = _fit_group(group, names, defaults, measured)
        log(f"  {group}: x{ratio:.2f} of the default")
        for name in names:
            fitted[name] = defaults[name] * ratio
    x, h, mode, method = _problems()["fftw_nd"][0]
    for backend, name in ((ducc.FFTW, "single"), (ducc.DUCC0, "ducc0_single")):
        runs = {"single": _runner(x.astype(np.float32), h.astype(np.float32), mode, method, backend), "double": _runner(x, h, mode, method, backend)}
        medians = _medians(runs, repeats)
        fitted[name] = min(1.0, max(0.2, medians["single"] / medians["double"]))
        log(f"  {backend} single/double precision: {fitted[name]:.2f}")
    return fitted


def layer_constants(repeats: int, log: Callable[[str], None] = print) -> dict[str, float]:
    """ConvLayer's policy constants on this host: ONNX Runtime's seconds per multiply-add and the FFT path's measured/modelled factor.

    Times two representative layers, interleaved (the fastest of ``3 * repeats``): a 7x7 layer
    on ONNX Runtime (N1 C16 64x64 K32, 103 M multiply-adds in MLAS's blocked-channel kernels)
    and an 11x11 layer on the FFT path (N1 C16 96x96 K16). Without ONNX Runtime the defaults stay.
    """
    from convserve_server.engine.layers import onnx, policy, tiling
    from convserve_server.engine.layers.conv_layer import conv_layer, plan_layer

    if not onnx.available():
        log("  ConvLayer: no ONNX Runtime, default policy constants")
        return {}
    rng = np.random.default_rng(0)
    direct = (rng.standard_normal((1, 16, 64, 64), dtype=np.float32), rng.standard_normal((32, 16, 7, 7), dtype=np.float32), 3)
    fft = (rng.standard_normal((1, 16, 96, 96), dtype=np.float32), rng.standard_normal((16, 16, 11, 11), dtype=np.float32), 5)

    def runner(x: np.ndarray, w: np.ndarray, pad: int, path: str) -> Callable[[], Any]:
        store: dict[Any, Any] = {}
        return lambda: conv_layer(x, w, padding=pad, path=path, prepared=store)

    runs = {"direct": runner(*direct, "onnxruntime"), "fft": runner(*fft, "fft")}
    seconds = _medians(runs, 3 * repeats)
    p_direct = plan_layer(direct[0], direct[1], padding=3).problem
    p_fft = plan_layer(fft[0], fft[1], padding=5).problem
    # Clamped to [1/4, 4] of the defaults: a burst of other load must not flip every choice.
    default = policy.DIRECT_PER_MAC
    per_mac = min(4 * default, max(default / 4, seconds["direct"] / p_direct.macs))
    scale = min(4.0, max(0.25, seconds["fft"] / tiling.plan_tiles(p_fft.padded, p_fft.kernel, p_fft.n, p_fft.c_in, p_fft.c_out)[1]))
    log(f"  ConvLayer: ONNX Runtime {1e-9 / per_mac:.1f} G multiply-adds/s, FFT path x{scale:.2f} of its model (default {policy.DIRECT_PER_MAC:.3g} s, x1)")
    return {"layer_direct_per_mac": per_mac, "layer_fft_scale": scale}


def parallel_threshold(repeats: int, log: Callable[[str], None] = print) -> tuple[float, float]:
    """(points from which FFTW's threads pay off here, 1e18 for never; their speed-up), timing 2^18 and 2^20 points."""
    threads = plans.max_threads()
    if threads == 1:
        return 1e18, 1.0
    gain = 1.0
    for points in (1 << 18, 1 << 20):
        a = pyfftw.empty_aligned(points, "float64")
        a[:] = 1.0
        out = pyfftw.empty_aligned(points // 2 + 1, "complex128")
        one = _median_seconds(pyfftw.FFTW(a, out, flags=("FFTW_ESTIMATE",), threads=1).execute, 3 * repeats)
        many = _median_seconds(pyfftw.FFTW(a, out, flags=("FFTW_ESTIMATE",), threads=threads).execute, 3 * repeats)
        log(f"  FFTW {points} points: 1 thread {one * 1e3:.2f} ms, {threads} threads {many * 1e3:.2f} ms")
        gain = max(1.0, one / many)
        if many < 0.8 * one:
            return float(points), gain
    return 1e18, gain


def ducc0_parallel_threshold(repeats: int, log: Callable[[str], None] = print) -> tuple[float, float]:
    """(points from which ducc0's threads pay off here, 1e18 for never; their speed-up), timing 2-D r2c transforms."""
    threads = plans.max_threads()
    if threads == 1:
        return 1e18, 1.0
    gain = 1.0
    for side in (128, 256, 512, 1024, 2048):
        a = np.ones((side, side))
        out = np.empty((side, side // 2 + 1), np.complex128)
        one = _median_seconds(ducc.DuccTransform("r2c", a, out, (0, 1), 1).execute, 3 * repeats)
        many = _median_seconds(ducc.DuccTransform("r2c", a, out, (0, 1), threads).execute, 3 * repeats)
        log(f"  ducc0 {side}^2 points: 1 thread {one * 1e3:.3f} ms, {threads} threads {many * 1e3:.3f} ms")
        gain = max(1.0, one / many)
        if many < 0.8 * one:
            return float(side * side), gain
    return 1e18, gain


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
    print(f"calibrating {platform.node()} ({os.cpu_count()} cores, FFTW and ducc0 {ducc.version()}); this takes about a minute")
    threshold, gain = parallel_threshold(args.repeats)
    ducc0_threshold, ducc0_gain = ducc0_parallel_threshold(args.repeats)
    engine.configure(dataclasses.replace(config.current(), calibration=""))
    cost_model.DEFAULTS.update(
        fftw_parallel_min_points=threshold, fftw_thread_gain=gain, ducc0_parallel_min_points=ducc0_threshold, ducc0_thread_gain=ducc0_gain
    )
    cost_model.load("/nonexistent")  # the built-in constants with this host's threads while measuring
    fitted = calibrate(args.repeats)
    fitted.update(layer_constants(args.repeats))
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
