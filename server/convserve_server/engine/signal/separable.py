"""Rank-1 (separable) 2-D kernels: found by content and remembered, so that OpenCV runs them as two 1-D passes.

A 2-D float kernel of 5x5 and up whose rank is 1 within rounding runs as ``cv2.sepFilter2D`` (a
15x15 Gaussian on 2048^2: two passes of 15 taps instead of 225), and the cost model counts it so.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

SEPARABLE_MIN_SIDE = 5


def is_separable(kernel: npt.NDArray[Any], dtype: np.dtype[Any]) -> bool:
    """Whether a 2-D kernel runs as two 1-D passes (rank 1, float, 5x5 or more)."""
    return kernel.ndim == 2 and factors(kernel, dtype) is not None


Factors = tuple[npt.NDArray[Any], npt.NDArray[Any]]
# Small kernels' answers, by content: the planner and the direct path each ask once per call, and a
# service sees the same few kernels again and again (the test costs 25 us a time for a 7x7 kernel).
_FACTORS: OrderedDict[tuple[Any, ...], Factors | None] = OrderedDict()
_FACTORS_LOCK = threading.Lock()
FACTORS_ENTRIES = 256
FACTORS_MAX_KERNEL_BYTES = 64 * 64 * 8


def factors(kernel: npt.NDArray[Any], dtype: np.dtype[Any]) -> Factors | None:
    """Column and row factors of a rank-1 float kernel of 5x5 or more, else None (remembered by content)."""
    if min(kernel.shape) < SEPARABLE_MIN_SIDE or dtype.kind != "f":
        return None
    if kernel.nbytes > FACTORS_MAX_KERNEL_BYTES:
        return _factors(kernel, dtype)
    key = (kernel.tobytes(), kernel.shape, kernel.dtype.str, dtype.str)
    with _FACTORS_LOCK:
        if key in _FACTORS:
            _FACTORS.move_to_end(key)
            return _FACTORS[key]
    found = _factors(kernel, dtype)
    with _FACTORS_LOCK:
        _FACTORS[key] = found
        while len(_FACTORS) > FACTORS_ENTRIES:
            _FACTORS.popitem(last=False)
    return found


def _factors(kernel: npt.NDArray[Any], dtype: np.dtype[Any]) -> Factors | None:
    """:func:`factors` without the memo: the factors (read-only arrays), or None."""
    if not _near_rank_one(kernel):
        return None
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    tolerance = 1e-7 if dtype == np.float32 else 1e-14
    if s[0] == 0 or s[1] > tolerance * s[0]:
        return None
    column = (u[:, 0] * s[0]).astype(dtype)
    row = vt[0].astype(dtype)
    column.flags.writeable = row.flags.writeable = False  # shared by every call with this kernel
    return column, row


def _near_rank_one(kernel: npt.NDArray[Any]) -> bool:
    """A cheap test before the SVD: whether the rank-1 matrix through the largest entry's row and
    column reproduces ``kernel`` within 1e-3 of that entry (a looser bound than the SVD's, so no
    separable kernel is missed; a random 63x63 kernel is refused in about 30 us instead of 1-2 ms)."""
    k = kernel.astype(np.float64)
    p, q = np.unravel_index(int(np.argmax(np.abs(k))), k.shape)
    pivot = k[p, q]
    if pivot == 0 or not np.isfinite(pivot):
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(k - np.outer(k[:, q], k[p, :] / pivot)).max()
    return bool(error <= 1e-3 * abs(pivot))
