"""Overlap-add: a long signal convolved block by block with FFTs of one fixed size."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import pyfftw

from . import fft
from .options import output_shape

# Block length as a multiple of the kernel length (balances FFT size against block count).
BLOCK_TO_KERNEL = 8


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
) -> npt.NDArray[Any]:
    """Part of the full linear convolution (see ``direct.linear_region``), blocked along one axis."""
    if np.prod([h.shape[a] for a in axes]) > np.prod([x.shape[a] for a in axes]):
        x, h = h, x
    position = max(range(len(axes)), key=lambda i: x.shape[axes[i]] / h.shape[axes[i]])
    axis = axes[position]
    n, m = x.shape[axis], h.shape[axis]
    block = pyfftw.next_fast_len(BLOCK_TO_KERNEL * m) - m + 1
    if n <= 2 * block:
        return fft.linear_region(x, h, axes, starts, lengths, work_dtype)
    full_shape = output_shape(x.shape, h.shape, axes, [x.shape[a] + h.shape[a] - 1 for a in axes])
    out = np.zeros(full_shape, dtype=work_dtype)
    block_full = [x.shape[a] + h.shape[a] - 1 if a != axis else block + m - 1 for a in axes]
    for begin in range(0, n, block):
        chunk = np.take(x, np.arange(begin, min(begin + block, n)), axis=axis)
        if chunk.shape[axis] < block:  # pad the last block so every block reuses one transform size
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, block - chunk.shape[axis])
            chunk = np.pad(chunk, pad)
        piece = fft.linear_region(chunk, h, axes, [0] * len(axes), block_full, work_dtype)
        stop = min(begin + block + m - 1, full_shape[axis])
        target = [slice(None)] * out.ndim
        target[axis] = slice(begin, stop)
        source = [slice(None)] * out.ndim
        source[axis] = slice(0, stop - begin)
        out[tuple(target)] += piece[tuple(source)]
    index = [slice(None)] * out.ndim
    for a, start, length in zip(axes, starts, lengths):
        index[a] = slice(start, start + length)
    return out[tuple(index)]
