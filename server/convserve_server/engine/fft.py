"""The FFT engine: products of FFTW transforms (pyFFTW), real-to-complex for real data.

Single precision stays single precision. Transform lengths are FFTW's fast sizes. Plans are made
with FFTW_ESTIMATE so that no request ever waits for FFTW_MEASURE planning.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import pyfftw
import pyfftw.builders

PLANNER_EFFORT = "FFTW_ESTIMATE"


def threads() -> int:
    """FFTW threads per transform (``CONVSERVE_FFTW_THREADS``, default: every core)."""
    value = os.environ.get("CONVSERVE_FFTW_THREADS")
    return max(1, int(value)) if value else (os.cpu_count() or 1)


def _forward(a: npt.NDArray[Any], shape: Sequence[int], axes: Sequence[int], real: bool) -> npt.NDArray[Any]:
    """Forward transform of ``a`` zero-padded to ``shape`` along ``axes``."""
    builder = pyfftw.builders.rfftn if real else pyfftw.builders.fftn
    plan = builder(a, s=tuple(shape), axes=tuple(axes), threads=threads(), planner_effort=PLANNER_EFFORT)
    return np.asarray(plan())


def _inverse(spectrum: npt.NDArray[Any], shape: Sequence[int], axes: Sequence[int], real: bool) -> npt.NDArray[Any]:
    """Inverse transform to ``shape`` along ``axes`` (normalised)."""
    builder = pyfftw.builders.irfftn if real else pyfftw.builders.ifftn
    plan = builder(spectrum, s=tuple(shape), axes=tuple(axes), threads=threads(), planner_effort=PLANNER_EFFORT)
    return np.asarray(plan())


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
) -> npt.NDArray[Any]:
    """Return part of the full linear convolution of ``x`` and ``h`` along ``axes`` (see direct)."""
    real = work_dtype.kind != "c"
    x = x.astype(work_dtype, copy=False)
    h = h.astype(work_dtype, copy=False)
    full = [x.shape[a] + h.shape[a] - 1 for a in axes]
    fast = [pyfftw.next_fast_len(n) for n in full]
    product = _forward(x, fast, axes, real) * _forward(h, fast, axes, real)
    result = _inverse(product, fast, axes, real)
    index = [slice(None)] * result.ndim
    for axis, start, length in zip(axes, starts, lengths):
        index[axis] = slice(start, start + length)
    return result[tuple(index)]


def circular(x: npt.NDArray[Any], h: npt.NDArray[Any], axes: Sequence[int], work_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Cyclic convolution along ``axes``: ``h`` zero-padded to ``x``'s length there."""
    real = work_dtype.kind != "c"
    x = x.astype(work_dtype, copy=False)
    h = h.astype(work_dtype, copy=False)
    shape = [x.shape[a] for a in axes]
    product = _forward(x, shape, axes, real) * _forward(h, shape, axes, real)
    return _inverse(product, shape, axes, real)
