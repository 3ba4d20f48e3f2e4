"""The cost model behind ``method="auto"``: predicted seconds per method, constants per host.

Every prediction is a pure function of shapes, dtypes, the kernel's values (separability) and
the constants, so ``auto`` is deterministic for a request on a given host calibration; it never
looks at which FFT plans happen to be cached. The constants are built-in defaults measured on
the project's 2-core machines, replaced by those ``convserve calibrate`` measured on this host
(a JSON file: the engine setting ``calibration``, default ``~/.cache/convserve/calibration.json``).
The FFT plumbing reads the calibrated ``fftw_parallel_min_points`` (the points from which a
transform uses threads) through :func:`convserve_server.engine.fft.plans.set_parallel_threshold`,
registered when this module is imported.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine import config
from convserve_server.engine.fft import ducc, plans
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.signal import direct_fast
from convserve_server.engine.signal import separable as separable_kernels
from convserve_server.engine.signal.overlap_add import choose_block

CALIBRATION_VERSION = 3
# Seconds per unit of work (float64 unless said); single precision scales by SINGLE (ducc0_single for ducc0).
DEFAULTS: dict[str, float] = {
    # One real transform, per point and log2 of the length, per backend and shape class (a batch
    # of BATCH_1D or more one-axis transforms in one call, as overlap-add's blocks; single one-axis
    # transforms; several axes), at one thread; THREAD_GAIN divides it per doubling of threads.
    # Measured here, whole convolutions at one thread: ducc0 took 0.46-0.75x FFTW's time on 2-D
    # and 3-D shapes, 0.68-0.73x on overlap-add's blocks, 0.97-1.19x on single 1-D transforms.
    "fftw_1d_batch_per_point_log": 2.7e-10,
    "fftw_1d_per_point_log": 2.7e-10,
    "fftw_nd_per_point_log": 2.7e-10,
    "ducc0_1d_batch_per_point_log": 2.0e-10,
    "ducc0_1d_per_point_log": 3.0e-10,
    "ducc0_nd_per_point_log": 1.6e-10,
    "ducc0_single": 0.6,
    "fftw_thread_gain": 1.0,
    "ducc0_thread_gain": 1.5,
    "fft_per_point": 3.0e-9,  # copies into plan buffers, spectral product, crop
    "fft_call": 4.0e-5,  # three plan checkouts and Python around them
    "numpy_1d_per_mac": 2.0e-10,  # numpy.convolve
    "opencv_per_mac": 8.6e-11,  # cv2.filter2D, direct summation (both cores)
    "opencv_per_output": 7.6e-10,
    "opencv_sep_per_tap": 1.4e-10,  # cv2.sepFilter2D: per output and tap of either factor
    "opencv_sep_per_output": 1.5e-9,
    # OpenCV's DFT path (float kernels above 11x11): it filters in tiles, so its cost is per output
    # pixel, nearly whatever the kernel (measured, float32: 512^2 19 ns, 2048^2 11-14 ns, 4096^2
    # 12-15 ns per pixel for 15x15 and 63x63), plus about 1.5 ms per call.
    "opencv_dft_per_output": 2.1e-8,
    "opencv_dft_call": 1.5e-3,
    "loop_per_mac": 1.5e-9,  # the numpy tap loop
    "loop_per_tap": 6.0e-6,
    "direct_call": 1.5e-5,
    "single": 0.6,  # float32 / complex64 relative to double
    # FFTW threads only from this many points (all transforms of a batch together). Measured here
    # 2 threads were slower than 1 at every size from 2^17 to 2^22 on a busy day (2^20: 14.3 ms
    # against 9.6) and erratic (2-24 ms for 1e5 points), so one thread unless calibrated otherwise.
    "fftw_parallel_min_points": 1e18,
    # ducc0 threads from this many points (its threads split the lines of a multi-D transform). As
    # for FFTW, one thread unless calibrated otherwise: measured here on a busy day, 2 threads took
    # 2.3x the time of one on a 2160^2 inverse (0.69 against 0.30 of FFTW's), level on 576^2.
    "ducc0_parallel_min_points": 1e18,
    # ConvLayer's path policy (engine/layers/policy.py): seconds per multiply-add of ONNX Runtime's
    # direct float32 convolution (both cores), and a factor on the layer FFT path's modelled
    # seconds (engine/layers/tiling.py); only their ratio matters for the choice.
    "layer_direct_per_mac": 1.2e-11,
    "layer_fft_scale": 1.0,
}
# One-axis transforms this many or more to a call (overlap-add's blocks) are a shape class of their own.
BATCH_1D = 4
SHAPE_CLASSES = ("1d_batch", "1d", "nd")
_LOCK = threading.Lock()
_LOADED: dict[str, float] | None = None
_SOURCE = "built-in defaults"


def calibration_path() -> str:
    """The calibration file: the setting ``calibration``, or ``~/.cache/convserve/calibration.json`` when it is ""."""
    return config.current().calibration or os.path.join(os.path.expanduser("~"), ".cache", "convserve", "calibration.json")


# How many times the constants were (re)loaded: a choice memoised by the constants keys on LOADS[0].
LOADS = [0]


def load(path: str | None = None) -> str:
    """(Re)load the constants from a calibration file; fall back to the defaults. Returns what happened."""
    global _LOADED, _SOURCE
    path = path or calibration_path()
    constants = dict(DEFAULTS)
    source = "built-in defaults"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("version") == CALIBRATION_VERSION:
            constants.update({k: float(v) for k, v in data.get("constants", {}).items() if k in DEFAULTS and float(v) > 0})
            source = f"calibration {path}"
        else:
            source = f"built-in defaults ({path} has another version)"
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        source = f"built-in defaults ({path} unreadable: {exc})"
    with _LOCK:
        _LOADED, _SOURCE = constants, source
        LOADS[0] += 1
    return source


def constants() -> dict[str, float]:
    """The constants in force (loaded once per process)."""
    if _LOADED is None:
        load()
    assert _LOADED is not None
    return _LOADED


def parallel_min_points() -> float:
    """Points (all transforms of a batch together) from which FFTW threads pay off on this host."""
    return constants()["fftw_parallel_min_points"]


def ducc0_parallel_min_points() -> float:
    """Points (all transforms of a batch together) from which ducc0's threads are used."""
    return constants()["ducc0_parallel_min_points"]


plans.set_parallel_threshold(parallel_min_points, ducc.FFTW)
plans.set_parallel_threshold(ducc0_parallel_min_points, ducc.DUCC0)


def source() -> str:
    """Where the constants in force came from."""
    constants()
    return _SOURCE


def _scale(work: np.dtype[Any], c: dict[str, float], single_name: str = "single") -> float:
    """Relative cost of the working precision and kind (complex costs about twice real)."""
    single = work.itemsize <= (8 if work.kind == "c" else 4)
    return (c[single_name] if single else 1.0) * (2.0 if work.kind == "c" else 1.0)


def shape_class(dims: int, transforms: int) -> str:
    """The shape class of ``transforms`` transforms of ``dims`` axes in one call: ``"1d_batch"``
    (one axis, at least :data:`BATCH_1D` transforms), ``"1d"`` or ``"nd"``."""
    if dims > 1:
        return "nd"
    return "1d_batch" if transforms >= BATCH_1D else "1d"


def _per_point_log(backend: str, dims: int, transforms: int, points: int, work: np.dtype[Any], c: dict[str, float]) -> float:
    """Seconds per point and level of ``transforms`` transforms (``points`` in all) by ``backend`` in one call (threads included)."""
    per = c[f"{backend}_{shape_class(dims, transforms)}_per_point_log"]
    threads = plans.threads_for(points, backend)
    gain = c[f"{backend}_thread_gain"] ** math.log2(threads) if threads > 1 else 1.0
    return per * _scale(work, c, "ducc0_single" if backend == ducc.DUCC0 else "single") / max(gain, 1e-3)


def fft_backend(batch: int, sizes: Sequence[tuple[int, int]], work: np.dtype[Any], exact: bool, c: dict[str, float]) -> str:
    """The FFT backend of least predicted time for a whole-array FFT (FFTW for exact integers)."""
    if exact:  # the exactness bound of ``integers.fft_is_exact`` is proven on FFTW's path
        return ducc.FFTW
    return min(ducc.BACKENDS, key=lambda backend: fft_cost(batch, sizes, work, c, backend))


def fft_cost(batch: int, sizes: Sequence[tuple[int, int]], work: np.dtype[Any], c: dict[str, float], backend: str = ducc.FFTW) -> float:
    """Predicted seconds of the whole-array FFT method by ``backend`` (three transforms of the padded size)."""
    real = work.kind != "c"
    points = batch * math.prod(fast_length(n + m - 1, backend, real) for n, m in sizes)
    levels = math.log2(max(points / max(batch, 1), 2))
    per_log = _per_point_log(backend, len(sizes), batch, points, work, c)
    return c["fft_call"] + points * (3 * per_log * levels + _scale(work, c) * c["fft_per_point"])


def overlap_add_backend(batch: int, sizes: Sequence[tuple[int, int]], work: np.dtype[Any], exact: bool, c: dict[str, float]) -> str:
    """The FFT backend of least predicted time for overlap-add (FFTW for exact integers)."""
    if exact:
        return ducc.FFTW
    return min(ducc.BACKENDS, key=lambda backend: overlap_add_cost(batch, sizes, work, c, backend))


def overlap_add_cost(batch: int, sizes: Sequence[tuple[int, int]], work: np.dtype[Any], c: dict[str, float], backend: str = ducc.FFTW) -> float:
    """Predicted seconds of overlap-add by ``backend`` along the axis where the signal is longest for its kernel."""
    sizes = [(max(n, m), min(n, m)) for n, m in sizes]
    axis = max(range(len(sizes)), key=lambda i: sizes[i][0] / sizes[i][1])
    n, m = sizes[axis]
    length = choose_block(n, m)
    if length >= fast_length(n + m - 1):
        return fft_cost(batch, sizes, work, c, backend)
    real = work.kind != "c"
    other = math.prod(fast_length(a + b - 1, backend, real) for i, (a, b) in enumerate(sizes) if i != axis)
    blocks = -(-n // (length - m + 1))
    points = batch * other * blocks * length
    levels = math.log2(max(other * length, 2))
    per_log = _per_point_log(backend, len(sizes), batch * blocks, points, work, c)
    return c["fft_call"] + points * (2 * per_log * levels + _scale(work, c) * c["fft_per_point"])


def direct_cost(
    x_shape: Sequence[int],
    h: npt.NDArray[Any] | Sequence[int],
    axes: Sequence[int],
    lengths: Sequence[int],
    batch: int,
    work: np.dtype[Any],
    integer_ok: bool,
    c: dict[str, float],
    separable: bool | None = None,
) -> float:
    """Predicted seconds of the direct method, for the backend ``direct_fast`` will pick.

    ``h`` is the kernel, or only its shape (then it is taken as not separable: the slower
    prediction, as for a memory estimate made from the request's headers). ``separable``, when
    given, says whether the kernel (the smaller operand) is separable instead of checking ``h``.
    """
    h_shape = tuple(h.shape) if isinstance(h, np.ndarray) else tuple(int(d) for d in h)
    taps_x = math.prod(x_shape[a] for a in axes)
    taps_h = math.prod(h_shape[a] for a in axes)
    taps = min(taps_x, taps_h)
    outputs = batch * math.prod(lengths)
    scale = _scale(work, c)
    kernel_sides = [min(x_shape[a], h_shape[a]) for a in axes]
    backend = direct_fast.backend(len(axes), len(x_shape), kernel_sides, work, integer_ok)
    if backend == "numpy_1d":
        return c["direct_call"] + scale * outputs * taps * c["numpy_1d_per_mac"]
    if backend == "opencv":
        kernel = h if taps_h <= taps_x and isinstance(h, np.ndarray) else None
        if separable is None:
            separable = kernel is not None and len(axes) == 2 and separable_kernels.is_separable(np.squeeze(kernel), work)
        if separable and taps_h <= taps_x and len(axes) == 2:
            side_sum = sum(h_shape[a] for a in axes)
            return c["direct_call"] + scale * outputs * (c["opencv_sep_per_output"] + side_sum * c["opencv_sep_per_tap"])
        summed = c["direct_call"] + scale * outputs * (c["opencv_per_output"] + taps * c["opencv_per_mac"])
        if direct_fast.summed(kernel_sides, work == np.float32) or work.kind != "f":
            return summed
        # OpenCV's own DFT path for large float kernels.
        return c["opencv_dft_call"] + scale * outputs * c["opencv_dft_per_output"]
    return c["direct_call"] + taps * (c["loop_per_tap"] + scale * outputs * c["loop_per_mac"])
