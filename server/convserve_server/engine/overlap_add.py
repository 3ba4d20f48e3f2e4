"""Overlap-add: a long signal cut into blocks, all blocks transformed in one batched FFTW call.

Along the axis where the signal is longest relative to the kernel, the signal is reshaped into
``nb`` blocks of ``B`` samples, zero-padded to the transform length ``L = B + M - 1``; one
batched real FFT transforms every block, the product with the kernel's spectrum and one batched
inverse give every block's convolution, and the tails (``M - 1`` samples) are added onto the
next block's head. Other convolved axes are transformed whole. ``L`` is chosen by cost
(:func:`choose_block`): many short transforms run in cache, few long ones waste less overlap.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from . import fft

# Transform lengths tried for a block (powers of two and their 3- and 5-multiples).
_CANDIDATES = sorted({p * f for p in (2 ** k for k in range(4, 25)) for f in (1, 3, 5)})
# Per point, a transform costs log2(L) plus this (the multiply, copies and overlap adds).
_PER_POINT = 6.0
# Longer transforms fall out of cache: their cost per point and level grows by this factor.
_CACHE_POINTS = 1 << 16
_OUT_OF_CACHE = 1.35


def transform_cost(length: int) -> float:
    """Relative cost of one length-``length`` transform and its share of the pointwise work."""
    per_level = _OUT_OF_CACHE if length > _CACHE_POINTS else 1.0
    return length * (per_level * math.log2(max(length, 2)) + _PER_POINT)


def choose_block(n: int, m: int) -> int:
    """Return the transform length ``L`` minimising the cost of convolving ``n`` by ``m`` samples.

    The whole-signal FFT (``fast_length(n + m - 1)``) is a candidate too; the caller runs a plain
    FFT when it wins.
    """
    whole = fft.fast_length(n + m - 1)
    best, best_cost = whole, 2 * transform_cost(whole)
    for length in _CANDIDATES:
        if length < 2 * m or length >= whole:
            continue
        blocks = -(-n // (length - m + 1))
        cost = 2 * blocks * transform_cost(length)
        if cost < best_cost:
            best, best_cost = length, cost
    return best


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
) -> npt.NDArray[Any]:
    """Part of the full linear convolution (see ``direct.linear_region``), blocked along one axis."""
    if math.prod(h.shape[a] for a in axes) > math.prod(x.shape[a] for a in axes):
        x, h = h, x
    position = max(range(len(axes)), key=lambda i: x.shape[axes[i]] / h.shape[axes[i]])
    axis = axes[position]
    n, m = x.shape[axis], h.shape[axis]
    length = choose_block(n, m)
    if length >= fft.fast_length(n + m - 1):
        return fft.linear_region(x, h, axes, starts, lengths, work_dtype)
    block = length - m + 1
    blocks = -(-n // block)
    # Move the blocked axis last; the block index becomes a new batch axis just before it.
    last = x.ndim - 1
    xm, hm = np.moveaxis(x, axis, -1), np.moveaxis(h, axis, -1)
    moved = [a - (a > axis) for a in axes if a != axis]
    others = {a: fft.fast_length(xm.shape[a] + hm.shape[a] - 1) for a in moved}
    x_shape = [others.get(i, s) for i, s in enumerate(xm.shape[:-1])] + [blocks, length]
    h_shape = [others.get(i, s) for i, s in enumerate(hm.shape[:-1])] + [1, length]
    h_blocked = hm.reshape(hm.shape[:-1] + (1, m))
    transform_axes = tuple(moved) + (last + 1,)

    def load_x(buffer: npt.NDArray[Any]) -> None:
        corner = tuple(slice(0, s) for s in xm.shape[:-1])
        full = n // block
        if full:
            np.copyto(buffer[corner + (slice(0, full), slice(0, block))],
                      xm[..., : full * block].reshape(xm.shape[:-1] + (full, block)), casting="unsafe")
        if full < blocks:
            rest = n - full * block
            np.copyto(buffer[corner + (full, slice(0, rest))], xm[..., full * block:], casting="unsafe")
            buffer[corner + (full, slice(rest, None))] = 0
        fft.zero_outside(buffer, list(xm.shape[:-1]) + [blocks, block])

    crop_others = [slice(None)] * (x.ndim - 1)
    for a, start, size in zip(axes, starts, lengths):
        if a != axis:
            crop_others[a - (a > axis)] = slice(start, start + size)
    start_axis, size_axis = starts[position], lengths[position]

    def finish(y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        y = y[tuple(crop_others)]
        acc = np.empty(y.shape[:-2] + ((blocks + 1) * block,), dtype=y.dtype)
        head = acc[..., : blocks * block].reshape(y.shape[:-2] + (blocks, block))
        np.copyto(head, y[..., :block])
        acc[..., blocks * block:] = 0
        tails = acc[..., block:].reshape(y.shape[:-2] + (blocks, block))
        assert np.shares_memory(tails, acc) and np.shares_memory(head, acc)
        tails[..., : m - 1] += y[..., block:]
        return acc[..., start_axis:start_axis + size_axis]

    result = fft.periodic_product(x_shape, load_x, h_blocked, h_shape, transform_axes, work_dtype, finish)
    return np.moveaxis(result, -1, axis)
