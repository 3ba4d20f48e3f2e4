"""Proving a direct convolution's result finite from its inputs alone, in one pass over the signal.

A finite sum of squares of the signal proves it free of NaN and Inf and bounds its largest value;
with the kernel's sum of magnitudes that bounds every partial sum, so below a margin of the dtype's
largest value nothing can overflow and the result needs no NaN/Inf pass of its own.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

cv2: Any
try:  # OpenCV is a server dependency; without it numpy sums the squares
    cv2 = importlib.import_module("cv2")
except ImportError:  # pragma: no cover - exercised only in installs without OpenCV
    cv2 = None

_CV_NORM_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}
_CV_MAX_ELEMENTS = 1 << 31  # OpenCV's matrix sizes are int


def finite_bound(x: npt.NDArray[Any], h: npt.NDArray[Any], dtype: np.dtype[Any], growth: float = 1.0) -> bool:
    """Whether every value computed while convolving ``x`` by ``h`` in ``dtype`` is finite, proven from the inputs alone.

    A finite sum of squares proves every ``x`` finite and ``max|x| <= sqrt(sum x^2)``, so a direct
    sum's partial sums are at most ``sqrt(sum x^2) * sum|h|``; ``growth`` scales that bound for
    methods whose intermediate values are larger (a DFT's). Below an eighth of the dtype's largest
    value (room for rounding) nothing overflows. One pass over ``x`` on one thread
    (:func:`sum_of_squares`). False means "not proven".
    """
    squares = sum_of_squares(x)
    weight = sum_of_squares(h, absolute=True)
    if not (math.isfinite(squares) and math.isfinite(weight)):
        return False
    limit = _LIMITS.get(dtype)
    if limit is None:
        limit = _LIMITS[dtype] = float(np.finfo(dtype).max) / 8
    return math.sqrt(squares) * weight * growth < limit


def transform_growth(x: npt.NDArray[Any], h: npt.NDArray[Any], axes: Sequence[int]) -> float:
    """The ``growth`` of :func:`finite_bound` for a DFT of ``x`` and ``h`` along ``axes``: its values
    reach ``sum|x| <= sqrt(x.size) * sqrt(sum x^2)`` times ``sum|h|`` times the transform's length."""
    return 4.0 * math.sqrt(x.size) * math.prod(x.shape[a] + h.shape[a] for a in axes)


# An eighth of each dtype's largest value (numpy.finfo takes a microsecond a call).
_LIMITS: dict[np.dtype[Any], float] = {}


def sum_of_squares(a: npt.NDArray[Any], absolute: bool = False) -> float:
    """``sum(|a|**2)`` (or ``sum|a|`` when ``absolute``), NaN or Inf if ``a`` holds either; any dtype and layout.

    OpenCV's ``norm`` (one SIMD pass, summed in float64, so the sum of huge finite float32 values
    stays finite) for a contiguous float32/float64 array (complex ones as their real and
    imaginary parts); measured here on a 512^2 float32 image just evicted from cache, it added
    12-15 us in front of ``cv2.filter2D`` (it leaves the image in cache for the filter) where
    ``numpy.einsum`` added 45-50. Else ``numpy.einsum``, in float64 for other dtypes (integers
    would wrap, float16 overflow).
    """
    kind = a.dtype.kind
    if kind in "biu":  # in float64: abs() of the most negative integer wraps to itself
        a = a.astype(np.float64)
    if kind == "c":
        if absolute:
            return float(np.abs(a).sum(dtype=np.float64))
        if a.flags.c_contiguous:
            return sum_of_squares(a.reshape(-1).view(a.real.dtype))
        return sum_of_squares(a.real) + sum_of_squares(a.imag)
    if cv2 is not None and a.ndim >= 1 and a.dtype in _CV_NORM_DTYPES and a.flags.c_contiguous and a.size < _CV_MAX_ELEMENTS:
        rows = a if a.ndim <= 2 else a.reshape(a.shape[0], -1)
        return float(cv2.norm(rows, cv2.NORM_L1 if absolute else cv2.NORM_L2SQR))
    wide = None if a.dtype in _CV_NORM_DTYPES else np.dtype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # an overflowing sum is reported as Inf, not warned about
        if absolute:
            return float(np.abs(a).sum(dtype=np.float64))
        index = list(range(a.ndim))
        return float(np.einsum(a, index, a, index, [], dtype=wide))
