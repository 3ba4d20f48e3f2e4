"""What a call did: the method that ran, its compute time and any warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

NONFINITE_WARNING = "NaN or Inf in the input or result (an input holds NaN or Inf, or the result overflowed its dtype)"


@dataclass(frozen=True)
class CallInfo:
    """Facts about one engine call, returned when ``return_info=True``.

    Attributes
    ----------
    method : str
        The method that ran (``"direct"``, ``"fft"``, ``"overlap_add"``, ``"gemm"``...).
    compute_seconds : float
        Wall time of the computation itself.
    warnings : tuple of str
        Anything the caller should know (for example NaN present in an input).
    """

    method: str
    compute_seconds: float
    warnings: tuple[str, ...] = field(default=())


def nonfinite_warnings(result: npt.NDArray[Any]) -> list[str]:
    """``[NONFINITE_WARNING]`` for a float or complex result holding NaN or Inf, else ``[]``.

    One cheap reduction (about 2 us for a small array): a finite sum proves every element
    finite; only a non-finite sum (NaN/Inf present, or an overflowing sum of large finite
    values) pays for the element-wise check.
    """
    return [NONFINITE_WARNING] if has_nonfinite(result) else []


def has_nonfinite(array: npt.NDArray[Any]) -> bool:
    """Whether a float or complex array holds NaN or Inf: one reduction, then (only when the sum is
    not finite, which large finite values can also cause) the element-wise check."""
    if array.dtype.kind not in "fc" or array.size == 0:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        total = array.sum(dtype=np.float32 if array.dtype == np.float16 else None)
    return not np.isfinite(total) and not np.isfinite(array).all()
