"""The direct engine: a sum of shifted, scaled copies of the signal, one per kernel tap.

Works in any number of dimensions, broadcasts over the axes that are not convolved, and is exact
for integer inputs (numpy's integer arithmetic accumulates without rounding). Compiled kernels
(OpenCV, numpy.convolve: :mod:`.direct_fast`) run first where they apply; this tap loop is the
fallback for complex 2-D data, three or more convolved axes and integers beyond 2^53.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation
from convserve_server.engine.info import FiniteCheck
from convserve_server.engine.signal import direct_fast
from convserve_server.engine.signal.options import output_shape


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
    checked: FiniteCheck | None = None,
) -> npt.NDArray[Any]:
    """Return part of the full linear convolution of ``x`` and ``h`` along ``axes``.

    On axis ``axes[i]`` the result holds full-convolution indices
    ``starts[i] .. starts[i] + lengths[i] - 1``; other axes broadcast. ``x`` and ``h`` have the
    same number of dimensions. ``checked`` learns whether the result holds NaN or Inf when the
    compiled path found out while computing it.
    """
    # Convolution is commutative: loop over the taps of the smaller operand.
    if _taps(h, axes) > _taps(x, axes):
        x, h = h, x
    fast = direct_fast.try_linear_region(x, h, axes, starts, lengths, work_dtype, checked)
    if fast is not None:
        return fast.astype(work_dtype, copy=False)
    x = x.astype(work_dtype, copy=False)
    h = h.astype(work_dtype, copy=False)
    kernel = [h.shape[a] for a in axes]
    # Zero-pad x so every tap reads a full window: index n - k of x is n + (M-1) - k of xz.
    pad = [(0, 0)] * x.ndim
    for axis, m, start, length in zip(axes, kernel, starts, lengths):
        before = max(0, (m - 1) - start)
        after = max(0, start + length - x.shape[axis])
        pad[axis] = (before, after)
    xz = np.pad(x, pad) if any(p != (0, 0) for p in pad) else x
    out_shape = output_shape(x.shape, h.shape, axes, lengths)
    out = np.zeros(out_shape, dtype=work_dtype)
    scratch = np.empty(out_shape, dtype=work_dtype)
    varies = any(h.shape[a] > 1 for a in range(h.ndim) if a not in axes)
    for tap in itertools.product(*(range(m) for m in kernel)):
        cancellation.check()  # one tap is one block of work
        weight_index = [slice(None)] * h.ndim
        window = [slice(None)] * x.ndim
        for axis, k, m, start, length in zip(axes, tap, kernel, starts, lengths):
            weight_index[axis] = slice(k, k + 1)
            offset = start - k + pad[axis][0]
            window[axis] = slice(offset, offset + length)
        weight = h[tuple(weight_index)]
        if not varies and not weight.any():
            continue  # a zero tap adds nothing (sparse kernels such as an echo)
        np.multiply(xz[tuple(window)], weight, out=scratch)
        np.add(out, scratch, out=out)
    return out


def _taps(array: npt.NDArray[Any], axes: Sequence[int]) -> int:
    """Number of elements of ``array`` along the convolved axes."""
    return math.prod(array.shape[a] for a in axes)
