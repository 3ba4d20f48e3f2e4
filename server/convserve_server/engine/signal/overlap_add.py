"""Overlap-add: a long signal cut into blocks, transformed in batched FFTW calls of a group each.

Along the axis where the signal is longest relative to the kernel, the signal is reshaped into
``nb`` blocks of ``B`` samples, zero-padded to the transform length ``L = B + M - 1``; one
batched real FFT transforms every block, the product with the kernel's spectrum and one batched
inverse give every block's convolution, and the tails (``M - 1`` samples) are added onto the
next block's head. Other convolved axes are transformed whole. ``L`` is chosen by cost
(:func:`choose_block`): many short transforms run in cache, few long ones waste less overlap.

The blocks go through the transforms in groups of at most :data:`GROUP_BYTES` of spectra (one
plan shape for every group, the last one zero-padded), with ``cancellation.check`` between
groups: a cancelled request stops within one group, and memory holds one group's spectra.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation
from convserve_server.engine.fft import plans
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.signal import fft_product

# Transform lengths tried for a block (powers of two and their 3- and 5-multiples).
_CANDIDATES = sorted({p * f for p in (2**k for k in range(4, 25)) for f in (1, 3, 5)})
# Per point, a transform costs log2(L) plus this (the multiply, copies and overlap adds).
_PER_POINT = 6.0
# Longer transforms fall out of cache: their cost per point and level grows by this factor.
_CACHE_POINTS = 1 << 16
_OUT_OF_CACHE = 1.35
# Most bytes of one group's spectra (x's, and the product's): one block of work between checks.
GROUP_BYTES = 16 << 20


def transform_cost(length: int) -> float:
    """Relative cost of one length-``length`` transform and its share of the pointwise work."""
    per_level = _OUT_OF_CACHE if length > _CACHE_POINTS else 1.0
    return length * (per_level * math.log2(max(length, 2)) + _PER_POINT)


@functools.lru_cache(maxsize=4096)
def choose_block(n: int, m: int) -> int:
    """Return the transform length ``L`` minimising the cost of convolving ``n`` by ``m`` samples.

    The whole-signal FFT (``fast_length(n + m - 1)``) is a candidate too; the caller runs a plain
    FFT when it wins.
    """
    whole = fast_length(n + m - 1)
    best, best_cost = whole, 2 * transform_cost(whole)
    for length in _CANDIDATES:
        if length < 2 * m or length >= whole:
            continue
        blocks = -(-n // (length - m + 1))
        cost = 2 * blocks * transform_cost(length)
        if cost < best_cost:
            best, best_cost = length, cost
    return best


@dataclass(frozen=True)
class _Layout:
    """The blocked transforms, with the blocked axis moved last and the block index just before it."""

    n: int  # x's samples on the blocked axis
    m: int  # h's samples on it
    block: int  # samples of x per block (B)
    blocks: int  # blocks of x
    group: int  # blocks per transform
    x_shape: tuple[int, ...]  # the forward transform of one group of x's blocks: (..., group, L)
    h_shape: tuple[int, ...]  # the forward transform of h: (..., 1, L)
    out_shape: tuple[int, ...]  # the inverse transform of their product
    transform_axes: tuple[int, ...]
    backend: str  # who transforms: "fftw" or "ducc0"


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
    backend: str = "fftw",
) -> npt.NDArray[Any]:
    """Part of the full linear convolution (see ``direct.linear_region``), blocked along one axis.

    ``backend`` ("fftw" or "ducc0") runs the transforms; the other convolved axes get its fast lengths.
    """
    if math.prod(h.shape[a] for a in axes) > math.prod(x.shape[a] for a in axes):
        x, h = h, x
    position = max(range(len(axes)), key=lambda i: x.shape[axes[i]] / h.shape[axes[i]])
    axis = axes[position]
    length = choose_block(x.shape[axis], h.shape[axis])
    if length >= fast_length(x.shape[axis] + h.shape[axis] - 1):
        return fft_product.linear_region(x, h, axes, starts, lengths, work_dtype, backend)
    # Move the blocked axis last; the block index becomes a new batch axis just before it.
    xm, hm = np.moveaxis(x, axis, -1), np.moveaxis(h, axis, -1)
    layout = _layout(xm.shape, hm.shape, [a - (a > axis) for a in axes if a != axis], length, work_dtype, backend)
    crop = _crop_other_axes(axes, starts, lengths, axis, x.ndim)
    acc = _convolve_blocks(xm, hm, layout, crop, work_dtype)
    start, size = starts[position], lengths[position]
    return np.moveaxis(acc[..., start : start + size], -1, axis)


def _layout(x_shape: tuple[int, ...], h_shape: tuple[int, ...], others: list[int], length: int, work_dtype: np.dtype[Any], backend: str) -> _Layout:
    """The transforms for blocks of transform length ``length`` along the last axis (``others``: the other convolved axes)."""
    n, m = x_shape[-1], h_shape[-1]
    block = length - m + 1
    blocks = -(-n // block)
    sizes = {a: fast_length(x_shape[a] + h_shape[a] - 1, backend, work_dtype.kind != "c") for a in others}
    x_blocked = [sizes.get(i, s) for i, s in enumerate(x_shape[:-1])] + [blocks, length]
    h_blocked = [sizes.get(i, s) for i, s in enumerate(h_shape[:-1])] + [1, length]
    # Blocks per group: spectra bytes per block bounded by GROUP_BYTES (all blocks if they fit).
    real = work_dtype.kind != "c"
    item = np.dtype(np.complex64 if work_dtype in (np.float32, np.complex64) else np.complex128).itemsize
    spectrum = math.prod(x_blocked[:-2]) * ((length // 2 + 1) if real else length) * item
    group = max(1, min(blocks, GROUP_BYTES // max(1, spectrum)))
    x_blocked[-2] = group
    out_shape = tuple(np.broadcast_shapes(tuple(x_blocked), tuple(h_blocked)))
    return _Layout(n, m, block, blocks, group, tuple(x_blocked), tuple(h_blocked), out_shape, tuple(others) + (len(x_shape),), backend)


def _crop_other_axes(axes: Sequence[int], starts: Sequence[int], lengths: Sequence[int], axis: int, ndim: int) -> tuple[slice, ...]:
    """The output's window on the convolved axes other than ``axis`` (moved last: not in the index)."""
    crop = [slice(None)] * (ndim - 1)
    for a, start, size in zip(axes, starts, lengths):
        if a != axis:
            crop[a - (a > axis)] = slice(start, start + size)
    return tuple(crop)


def _load_blocks(buffer: npt.NDArray[Any], xm: npt.NDArray[Any], layout: _Layout, first: int) -> int:
    """Blocks ``first..`` of ``xm`` into ``buffer`` (zero-padded); returns how many are real."""
    n, block, group = layout.n, layout.block, layout.group
    corner = tuple(slice(0, s) for s in xm.shape[:-1])
    count = min(group, layout.blocks - first)
    full = min(count, n // block - first)
    if full > 0:
        np.copyto(
            buffer[corner + (slice(0, full), slice(0, block))],
            xm[..., first * block : (first + full) * block].reshape(xm.shape[:-1] + (full, block)),
            casting="unsafe",
        )
    full = max(full, 0)
    if full < count:  # the last, partial block
        rest = n - (first + full) * block
        np.copyto(buffer[corner + (full, slice(0, rest))], xm[..., (first + full) * block :], casting="unsafe")
        buffer[corner + (full, slice(rest, block))] = 0
    buffer[corner + (slice(count, None), slice(0, block))] = 0
    if not first:  # the forward transform keeps its input: the rest stays zero between groups
        fft_product.zero_outside(buffer, list(xm.shape[:-1]) + [group, block])
    return count


def _convolve_blocks(xm: npt.NDArray[Any], hm: npt.NDArray[Any], layout: _Layout, crop: tuple[slice, ...], work_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Full convolution along the last axis (cropped on the others): x's blocks through the transforms, group by group, overlap-added."""
    real = work_dtype.kind != "c"
    forward = "r2c" if real else "c2c"
    axes = layout.transform_axes
    scale = 1.0 / math.prod(layout.x_shape[a] for a in axes)
    backend = layout.backend
    with (
        plans.plan(forward, layout.x_shape, work_dtype, axes, backend) as px,
        plans.plan(forward, layout.h_shape, work_dtype, axes, backend) as ph,
        plans.plan("c2r" if real else "c2c_inverse", layout.out_shape, work_dtype, axes, backend) as pi,
    ):
        fft_product.load(ph.input, hm.reshape(hm.shape[:-1] + (1, layout.m)), scale)
        ph.fftw.execute()
        cancellation.check()
        acc: npt.NDArray[Any] | None = None
        carry = np.zeros(0, dtype=pi.output.dtype)  # the tail a group leaves for the next one
        for first in range(0, layout.blocks, layout.group):
            cancellation.check()
            count = _load_blocks(px.input, xm, layout, first)
            px.fftw.execute()
            cancellation.check()  # between transforms too: one group may be the whole signal
            np.multiply(px.output, ph.output, out=pi.input)
            pi.fftw.execute()
            y = pi.output[crop]
            if acc is None:
                acc = np.empty(y.shape[:-2] + ((layout.blocks + 1) * layout.block,), dtype=y.dtype)
                acc[..., layout.blocks * layout.block :] = 0
            carry = _overlap_add_group(acc, y, first, count, carry, layout)
    assert acc is not None
    return acc


def _overlap_add_group(acc: npt.NDArray[Any], y: npt.NDArray[Any], first: int, count: int, carry: npt.NDArray[Any], layout: _Layout) -> npt.NDArray[Any]:
    """Add one group's block convolutions ``y`` (blocks ``first..first + count - 1``) into ``acc``.

    Heads of this group's blocks, then each block's tail onto the next block's head (the next
    group's first head is written before this group's last tail, ``carry``, is added). Returns the
    tail this group leaves for the next one.
    """
    block, m = layout.block, layout.m
    span = acc[..., first * block : (first + count + 1) * block]
    head = span[..., : count * block].reshape(y.shape[:-2] + (count, block))
    np.copyto(head, y[..., :count, :block])
    if first:
        span[..., : m - 1] += carry
    tails = span[..., block:].reshape(y.shape[:-2] + (count, block))
    assert np.shares_memory(tails, acc) and np.shares_memory(head, acc)
    if first + count < layout.blocks:
        tails[..., : count - 1, : m - 1] += y[..., : count - 1, block:]
        return np.array(y[..., count - 1, block:])
    tails[..., :count, : m - 1] += y[..., :count, block:]
    return carry
