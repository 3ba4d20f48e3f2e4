"""Exact integer convolution: worst-case bounds, overflow checks, and when an FFT is still exact."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine.errors import OutOfRangeError

INT64 = np.iinfo(np.int64)
UINT64 = np.iinfo(np.uint64)
# Candidate dtypes to suggest, smallest first.
_HOLDERS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def worst_case_bound(x: npt.NDArray[Any], h: npt.NDArray[Any], fill: float = 0.0) -> float:
    """Return max|x| * sum|h| (with the fill value counted in x), a bound on every output value."""
    max_x = max(float(np.max(np.abs(x.astype(np.float64)))), abs(fill))
    sum_h = float(np.sum(np.abs(h.astype(np.float64))))
    return max_x * sum_h * (1 + 1e-9)


def accumulator_for(bound: float, out: np.dtype[Any], unsigned_inputs: bool) -> np.dtype[Any]:
    """Choose an integer dtype in which the sum cannot wrap, or raise OutOfRangeError."""
    if bound <= INT64.max:
        return np.dtype(np.int64)
    if out == np.uint64 and unsigned_inputs and bound <= UINT64.max:
        return np.dtype(np.uint64)
    raise OutOfRangeError(f"the worst-case magnitude of the result ({bound:.3g}) exceeds what int64 can hold", "float64")


def fits(bound: float, out: np.dtype[Any]) -> bool:
    """Whether every value within +-bound fits ``out`` (bool results never overflow)."""
    if out.kind == "b":
        return True
    info = np.iinfo(out)
    return -bound >= info.min and bound <= info.max


def check_range(result: npt.NDArray[Any], out: np.dtype[Any]) -> None:
    """Raise OutOfRangeError if an exactly computed result does not fit ``out``."""
    if out.kind == "b" or result.size == 0:
        return
    low, high = int(result.min()), int(result.max())
    info = np.iinfo(out)
    if low >= info.min and high <= info.max:
        return
    holder = next((name for name in _HOLDERS if np.iinfo(name).min <= low and high <= np.iinfo(name).max), "float64")
    raise OutOfRangeError(f"the result ranges over [{low}, {high}], which does not fit {out.name}", holder)


def fft_is_exact(x: npt.NDArray[Any], h: npt.NDArray[Any], transform_size: int) -> bool:
    """Whether a float64 FFT convolution rounds back to the exact integers.

    The round-off of an FFT convolution is about eps * log2(L) * ||x||_2 * ||h||_2; a safety
    factor of 10 and a 0.05 margin below the 0.5 rounding threshold keep it exact.
    """
    norm_x = float(np.linalg.norm(x.astype(np.float64).ravel()))
    norm_h = float(np.linalg.norm(h.astype(np.float64).ravel()))
    error = 10 * np.finfo(np.float64).eps * math.log2(transform_size + 1) * norm_x * norm_h
    return bool(error < 0.05)
