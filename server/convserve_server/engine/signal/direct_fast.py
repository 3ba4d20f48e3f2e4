"""Compiled direct convolution for small kernels: OpenCV's filter engine and numpy.convolve.

``direct.linear_region`` asks :func:`try_linear_region` first; it returns None for what it does
not cover (complex data in 2-D, three or more convolved axes, integers beyond float64's exact
range, OpenCV missing) and the numpy tap loop runs instead.

- 1-D, one signal: ``numpy.convolve`` for very short kernels; otherwise OpenCV on a one-row
  image, the output split in two halves run on two threads (OpenCV threads over rows only).
- 1-D batches and 2-D images (with batch or channel axes): ``cv2.filter2D`` with the kernel
  flipped (OpenCV correlates), ``BORDER_CONSTANT`` and the anchor placed so that no input copy
  is needed; rank-1 (separable) float kernels of 5x5 and up run as ``cv2.sepFilter2D``.
- Integers: computed in float64, which is exact while every partial sum stays below 2^53
  (``max|x| * sum|h|`` is checked first) and the kernel is small enough that OpenCV sums
  directly rather than through its DFT path.
"""

from __future__ import annotations

import importlib
import itertools
import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation, resources
from convserve_server.engine.info import FiniteCheck, any_nonfinite
from convserve_server.engine.signal import opencv_bands
from convserve_server.engine.signal.finite_bound import finite_bound, transform_growth
from convserve_server.engine.signal import separable as separable_kernels

cv2: Any
try:  # OpenCV is a server dependency; without it the numpy paths still give the same results
    cv2 = importlib.import_module("cv2")
except ImportError:  # pragma: no cover - exercised only in installs without OpenCV
    cv2 = None

EXACT_FLOAT64 = float(2**53)
# OpenCV sums directly (exactly, for integers in float64) for kernels below 50 taps, and below 130
# taps when a float32 image is filtered into float32; beyond, its DFT path rounds integers and
# spreads a NaN over the whole output (OpenCV's dft_filter_size; measured with OpenCV 5.0: a 9x9
# integer kernel into float64 was off by one).
CV_DIRECT_MAX_TAPS = 49
CV_DIRECT_MAX_TAPS_SINGLE = 129
# From this many samples, a real signal's inputs are checked for NaN/Inf on another core while
# numpy.convolve runs (numpy.convolve is single-threaded); below, the result is checked in cache.
CONCURRENT_CHECK_MIN = 1 << 17
# numpy.convolve beats a one-row OpenCV filter below this kernel length (measured here).
NUMPY_1D_MAX_TAPS = 8
# One block of work between cancellation checks (a cancelled call stops within one): about this many multiply-adds,
# 10-20 ms here for numpy.convolve (~5 GMAC/s) and OpenCV. Jobs below twice this run whole.
CHUNK_MACS = 1 << 26
# The same for OpenCV's 2-D filter, which runs SIMD on every core (15-20 GMAC/s here): a band of
# this much work takes about 50 ms; smaller bands cost up to 1.5x in per-call overhead (measured).
OPENCV_CHUNK_MACS = 1 << 30
# OpenCV's DFT path (large kernels): the cost of one output pixel in multiply-add equivalents.
_DFT_PIXEL_COST = 32
_CV_DEPTHS = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32), np.dtype(np.float64)}


def available() -> bool:
    """Whether OpenCV is importable (the fast direct path for 2-D and 1-D batches)."""
    return cv2 is not None


def try_linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
    checked: FiniteCheck | None = None,
) -> npt.NDArray[Any] | None:
    """The region of the full convolution (see ``direct.linear_region``), or None if not covered.

    ``x`` is the operand with more taps; the result has ``work_dtype`` (or float64 holding exact
    integers when ``work_dtype`` is an integer type). One image filtered in bands tells ``checked``
    whether it holds NaN or Inf.
    """
    integer = work_dtype.kind in "iu"
    sides = [h.shape[a] for a in axes]
    integer_ok = True
    if integer:
        bound = float(np.max(np.abs(x), initial=0)) * float(np.sum(np.abs(h.astype(np.float64))))
        integer_ok = bound < EXACT_FLOAT64
    chosen = backend(len(axes), x.ndim, sides, work_dtype, integer_ok)
    compute = np.dtype(np.float64) if integer else work_dtype
    if chosen == "numpy_1d":
        return _numpy_1d(x, h, starts[0], lengths[0], compute, checked)
    single = compute == np.float32 and x.dtype == np.float32  # a float32 image OpenCV reads as it is
    if chosen == "opencv" and summed(sides, single):
        return _opencv(x, h, axes, starts, lengths, compute, checked)
    if chosen == "opencv" and x.dtype.kind == "f" and h.dtype.kind == "f":  # OpenCV's DFT path
        proven = finite_bound(x, h, compute, transform_growth(x, h, axes))  # finite inputs, and nothing can overflow
        if proven or not any_nonfinite(h, x):  # finite but huge inputs: the result is checked after
            result = _opencv(x, h, axes, starts, lengths, compute)
            if proven and checked is not None and result is not None:
                checked.nonfinite = False
            return result
    return None  # the numpy tap loop (OpenCV's DFT path would round integers and spread NaN)


def summed(sides: Sequence[int], single: bool = False) -> bool:
    """Whether OpenCV sums directly (no DFT) for a kernel of these sides (``single``: a float32 image into float32)."""
    return math.prod(sides) <= (CV_DIRECT_MAX_TAPS_SINGLE if single else CV_DIRECT_MAX_TAPS)


def backend(n_axes: int, ndim: int, sides: Sequence[int], work_dtype: np.dtype[Any], integer_ok: bool) -> str:
    """Which direct backend runs: ``"numpy_1d"``, ``"opencv"`` or ``"loop"`` (a pure function).

    Parameters
    ----------
    n_axes, ndim : int
        Convolved axes and dimensions of the inputs.
    sides : sequence of int
        The smaller operand's sizes on the convolved axes.
    work_dtype : numpy.dtype
        The working dtype (integer kinds are computed in float64 when ``integer_ok``).
    integer_ok : bool
        For integers: whether max|x| * sum|h| < 2^53, so that float64 sums are exact.
    """
    if not integer_ok:
        return "loop"
    one_signal = n_axes == 1 and ndim == 1
    if one_signal and (cv2 is None or work_dtype.kind == "c" or math.prod(sides) <= NUMPY_1D_MAX_TAPS or not summed(sides, work_dtype == np.float32)):
        return "numpy_1d"
    if cv2 is None or work_dtype.kind == "c" or n_axes > 2:
        return "loop"
    return "opencv"


def _numpy_1d(x: npt.NDArray[Any], h: npt.NDArray[Any], start: int, length: int, dtype: np.dtype[Any], checked: FiniteCheck | None = None) -> npt.NDArray[Any]:
    """One signal: numpy.convolve over the requested outputs, in chunks of ~CHUNK_MACS work.

    A chunk of outputs ``[a, b)`` convolves the slice ``x[lo:hi]`` it needs (``"valid"`` mode
    inside the signal, ``"full"`` at its ends), so every output is the same dot product numpy
    computes for the whole signal (bit-identical results); ``cancellation.check`` runs between
    chunks. ``x`` is the longer operand (``len(x) >= len(h)``). For a long real signal, when the
    request may use two threads, the inputs are checked on another core while numpy convolves
    (:func:`.finite_bound.finite_bound`), which can tell ``checked`` that the result is finite.
    """
    xs, hs = x.astype(dtype, copy=False), h.astype(dtype, copy=False)
    m = hs.shape[0]
    if checked is not None and xs.size >= CONCURRENT_CHECK_MIN and dtype.kind == "f" and resources.thread_limit(2) >= 2:
        bound = resources.submit(finite_bound, xs, hs, dtype)
        result = _numpy_1d(xs, hs, start, length, dtype)
        if bound.result():
            checked.nonfinite = False
        return result
    if checked is not None and dtype.kind == "f" and finite_bound(xs, hs, dtype):  # one pass that warms x for numpy
        checked.nonfinite = False
    if length * m <= 2 * CHUNK_MACS:
        cancellation.check()
        return _numpy_chunk(xs, hs, start, start + length)
    step = max(m, CHUNK_MACS // m)
    out = np.empty(length, dtype=dtype)
    end = start + length
    for a in range(start, end, step):
        cancellation.check()
        b = min(end, a + step)
        out[a - start : b - start] = _numpy_chunk(xs, hs, a, b)
    return out


def _numpy_chunk(x: npt.NDArray[Any], h: npt.NDArray[Any], a: int, b: int) -> npt.NDArray[Any]:
    """Full-convolution outputs ``a..b-1`` of ``x`` (at least as long as ``h``) by ``h``.

    The slice ``x[lo:hi]`` holds at least ``len(h)`` samples (numpy.convolve never swaps the
    operands) and starts either at 0 or at least ``len(h) - 1`` before ``a``, so each output is
    numpy's own dot product over the same samples as for the whole signal.
    """
    n, m = x.shape[0], h.shape[0]
    lo = max(0, min(a - m + 1, n - m))
    hi = min(n, max(b, lo + m))
    part = x[lo:hi]
    if (lo == 0 and a < m - 1) or b > hi:  # outputs near an end: the full mode's partial sums
        return np.convolve(part, h)[a - lo : b - lo]
    return np.convolve(part, h, "valid")[a - (lo + m - 1) : b - (lo + m - 1)]


def _as_source(a: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An array OpenCV reads as it is (uint8/uint16/int16/float), else converted to ``dtype``."""
    if a.dtype in _CV_DEPTHS and (a.dtype.kind != "f" or a.dtype == dtype):
        return a
    return a.astype(dtype)


def _opencv(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    dtype: np.dtype[Any],
    checked: FiniteCheck | None = None,
) -> npt.NDArray[Any] | None:
    """Batches of 1-D or 2-D convolutions by OpenCV, batch axes broadcast (``checked``: one image's NaN/Inf verdict)."""
    ddepth = cv2.CV_64F if dtype == np.float64 else cv2.CV_32F
    if x.ndim == 2 and len(axes) == 2:  # one image: no batch axes to arrange
        return _region_2d(_as_source(np.ascontiguousarray(x), dtype), h, starts, lengths, ddepth, dtype, checked)
    conv = list(axes)
    batch_axes = [a for a in range(x.ndim) if a not in conv]
    order = batch_axes + conv
    xm = np.transpose(x, order)
    hm = np.transpose(h, order)
    nb = len(batch_axes)
    batch_shape = tuple(np.broadcast_shapes(xm.shape[:nb], hm.shape[:nb]))
    if len(conv) == 1:  # a row per signal: (batch, N) image, (1, M) kernel
        xm, hm = xm[..., None, :], hm[..., None, :]
        starts, lengths = [0, starts[0]], [1, lengths[0]]
    if not batch_shape:  # one image or signal: OpenCV's own result, no copy
        src = _as_source(np.ascontiguousarray(xm), dtype)
        if len(conv) == 1 and src.shape[0] == 1:
            return _row_split(src, hm, starts[1], lengths[1], ddepth, dtype)
        region = _region_2d(src, hm, starts, lengths, ddepth, dtype, checked)
        return region[0] if len(conv) == 1 else np.transpose(region, np.argsort(order))
    out = np.empty(batch_shape + (lengths[0], lengths[1]), dtype=dtype)
    shared_kernel = all(s == 1 for s in hm.shape[:nb])
    if len(conv) == 1 and shared_kernel and math.prod(batch_shape) > 1 and xm.shape[:nb] == batch_shape:
        rows = xm.reshape(-1, xm.shape[-1])
        kernel = hm.reshape(1, -1)
        result = _region_2d(_as_source(rows, dtype), kernel, [0, starts[1]], [rows.shape[0], lengths[1]], ddepth, dtype)
        out[...] = result.reshape(out.shape)
    else:
        for index in itertools.product(*(range(s) for s in batch_shape)):
            cancellation.check()
            xi = tuple(i if xm.shape[k] > 1 else 0 for k, i in enumerate(index))
            hi = tuple(i if hm.shape[k] > 1 else 0 for k, i in enumerate(index))
            src = _as_source(np.ascontiguousarray(xm[xi]), dtype)
            if src.shape[0] == 1 and len(conv) == 1:
                out[index] = _row_split(src, hm[hi], starts[1], lengths[1], ddepth, dtype)
            else:
                out[index] = _region_2d(src, hm[hi], starts, lengths, ddepth, dtype)
    if len(conv) == 1:
        out = out[..., 0, :]
    return np.transpose(out, np.argsort(order))


def _region_2d(
    src: npt.NDArray[Any],
    h: npt.NDArray[Any],
    starts: Sequence[int],
    lengths: Sequence[int],
    ddepth: int,
    dtype: np.dtype[Any],
    checked: FiniteCheck | None = None,
) -> npt.NDArray[Any]:
    """Full-convolution rows ``starts[0]..`` and columns ``starts[1]..`` of one 2-D image.

    Kernels OpenCV sums directly, on outputs as wide as the image (``same`` and ``full``), run in
    cache-sized bands on the engine's threads (:mod:`.opencv_bands`), which tell ``checked``
    whether the result holds NaN or Inf. Other large jobs run in bands of output rows (each with
    the ``M - 1`` input rows of overlap it needs) of about ``OPENCV_CHUNK_MACS`` work, with
    ``cancellation.check`` between bands.
    """
    kernel = np.ascontiguousarray(h[::-1, ::-1], dtype=dtype)
    separable = _flipped_factors(h, dtype)
    rows, m = lengths[0], h.shape[0]
    if separable is not None:
        per_pixel = h.shape[0] + h.shape[1]
    elif summed(h.shape, src.dtype == np.float32 and dtype == np.float32):
        if checked is not None and src.dtype.kind == "f" and rows * lengths[1] * dtype.itemsize < opencv_bands.MIN_SPLIT_BYTES and finite_bound(src, h, dtype):
            checked.nonfinite = False  # a small image: one pass over the input (which warms it for the filter) proves the result finite
            cancellation.check()
            return _filter(src, kernel, None, starts, lengths, ddepth, dtype)
        if checked is not None:
            banded = _banded(src, kernel, starts, lengths, ddepth, dtype)
            if banded is not None:
                checked.nonfinite = banded[1]
                return banded[0]
        per_pixel = h.shape[0] * h.shape[1]
    else:
        per_pixel = _DFT_PIXEL_COST
    per_row = max(1, lengths[1] * per_pixel)
    if rows * per_row <= 2 * OPENCV_CHUNK_MACS:
        return _filter(src, kernel, separable, starts, lengths, ddepth, dtype)
    band = max(-(-OPENCV_CHUNK_MACS // per_row), 8 * (m - 1), 8)
    out = np.empty((rows, lengths[1]), dtype=dtype)
    first, end = starts[0], starts[0] + rows
    for a in range(first, end, band):
        cancellation.check()
        b = min(end, a + band)
        lo, hi = max(0, a - m + 1), min(src.shape[0], b)
        out[a - first : b - first] = _filter(src[lo:hi], kernel, separable, [a - lo, starts[1]], [b - a, lengths[1]], ddepth, dtype)
    return out


def _flipped_factors(h: npt.NDArray[Any], dtype: np.dtype[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]] | None:
    """The factors of the flipped kernel OpenCV applies, from the factors of ``h`` itself: the
    planner has already looked ``h`` up (:mod:`.separable` remembers it), so no second lookup."""
    found = separable_kernels.factors(h, dtype)
    if found is None:
        return None
    column, row = found
    return np.ascontiguousarray(column[::-1]), np.ascontiguousarray(row[::-1])


def _banded(
    src: npt.NDArray[Any], kernel: npt.NDArray[Any], starts: Sequence[int], lengths: Sequence[int], ddepth: int, dtype: np.dtype[Any]
) -> tuple[npt.NDArray[Any], bool] | None:
    """The region by :func:`.opencv_bands.filter_rows` and its NaN/Inf verdict; None if it is narrower than the image."""
    anchor, crop, after = placement(src.shape, kernel.shape, starts, lengths)
    if crop[1] != 0 or lengths[1] != src.shape[1] + after[1]:
        return None
    return opencv_bands.filter_rows(cv2, _pad_far(src, after), kernel, (anchor[1], anchor[0]), crop[0], lengths[0], ddepth, dtype)


def placement(src_shape: Sequence[int], kernel_shape: Sequence[int], starts: Sequence[int], lengths: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """OpenCV's anchor (row, column), the crop offsets, and the zeros needed past the source's far end, for :func:`_filter`."""
    anchor, crop, after = [], [], []
    for axis in (0, 1):
        n, m, s, length = src_shape[axis], kernel_shape[axis], starts[axis], lengths[axis]
        c = max(0, s - (m - 1))
        anchor.append(m - 1 - (s - c))
        crop.append(c)
        after.append(max(0, c + length - n))
    return anchor, crop, after


def _pad_far(src: npt.NDArray[Any], after: Sequence[int]) -> npt.NDArray[Any]:
    """``src`` with ``after`` zeros past its far end on each axis (``src`` itself when none)."""
    return np.pad(src, [(0, after[0]), (0, after[1])]) if any(after) else src


def _filter(
    src: npt.NDArray[Any],
    kernel: npt.NDArray[Any],
    separable: tuple[npt.NDArray[Any], npt.NDArray[Any]] | None,
    starts: Sequence[int],
    lengths: Sequence[int],
    ddepth: int,
    dtype: np.dtype[Any],
) -> npt.NDArray[Any]:
    """One OpenCV call for a region of the full convolution (``kernel`` already flipped).

    ``dst(j) = sum_k h[k] src[j + d - k]`` with OpenCV's anchor ``M - 1 - d``; choosing the
    crop offset ``c = max(0, s - (M - 1))`` and ``d = s - c`` keeps the anchor inside the kernel,
    so only the far end is ever zero-padded (``full`` mode).
    """
    anchor, crop, after = placement(src.shape, kernel.shape, starts, lengths)
    src = _pad_far(src, after)
    if separable is not None:
        ky, kx = separable
        dst = cv2.sepFilter2D(src, ddepth, kx, ky, anchor=(anchor[1], anchor[0]), borderType=cv2.BORDER_CONSTANT)
    else:
        dst = cv2.filter2D(src, ddepth, kernel, anchor=(anchor[1], anchor[0]), borderType=cv2.BORDER_CONSTANT)
    return dst[crop[0] : crop[0] + lengths[0], crop[1] : crop[1] + lengths[1]]


def _row_split(src: npt.NDArray[Any], h: npt.NDArray[Any], start: int, length: int, ddepth: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """One long signal (a 1xN image): pieces of the output, two at a time on two threads.

    Two halves when the job is short; otherwise pieces of about ``CHUNK_MACS / 2`` work each,
    with ``cancellation.check`` between rounds of two.
    """
    n, m = src.shape[1], h.shape[1]
    if length < 1 << 16:
        return _region_2d(src, h, [0, start], [1, length], ddepth, dtype)[0]
    end = start + length
    if length * m <= 2 * CHUNK_MACS:
        cuts = [start + length // 2]
    else:
        cuts = list(range(start, end, max(1 << 16, CHUNK_MACS // (2 * m))))[1:]
    # Split where no piece needs padding: at full-convolution indices in [m - 1, n].
    cuts = sorted({min(max(c, m - 1), n) for c in cuts} - {start, end})
    cuts = [c for c in cuts if start < c < end]
    if not cuts:
        return _region_2d(src, h, [0, start], [1, length], ddepth, dtype)[0]
    bounds = [start] + cuts + [end]
    out = np.empty(length, dtype=dtype)

    def part(a: int, b: int) -> None:
        lo, hi = max(0, a - m + 1), min(n, b)
        out[a - start : b - start] = _region_2d(src[:, lo:hi], h, [0, a - lo], [1, b - a], ddepth, dtype)[0]

    pieces = list(zip(bounds[:-1], bounds[1:]))
    for first in range(0, len(pieces), 2):
        cancellation.check()
        jobs = [resources.submit(part, a, b) for a, b in pieces[first : first + 2]]
        for job in jobs:
            job.result()
    return out
