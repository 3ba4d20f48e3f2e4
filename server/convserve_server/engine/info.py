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
    if result.dtype.kind not in "fc" or result.size == 0:
        return []
    with np.errstate(invalid="ignore", over="ignore"):
        total = result.sum(dtype=np.float32 if result.dtype == np.float16 else None)
    if np.isfinite(total) or np.isfinite(result).all():
        return []
    return [NONFINITE_WARNING]
