"""The ``depthwise`` ConvLayer path: ``groups == C_in == C_out``, one kernel per channel.

A depthwise layer has no channel contraction, so im2col would copy ``K`` times the input to
feed matrix products of inner size ``K`` (9 for 3x3): mostly memory traffic. Here the output
is accumulated tap by tap instead: for each kernel tap, the (strided, dilated) shifted view of
the padded input times that tap's per-channel weight is added into the output, in place.
That is ``K`` passes over an output-sized array and no im2col matrix. With stride 1 each tap
is one contiguous slice of the flattened padded planes (the output is accumulated at the padded
row pitch and the extra columns dropped), so numpy runs long inner loops; other strides use
strided views. Any number of spatial dimensions and any dilation.

Small float32 problems accumulate in float64 (see :func:`.gemm.working_dtype`).
"""

from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import cancellation
from convserve_server.engine.layers.gemm import working_dtype

_BLOCK_BYTES = 256 << 10


def depthwise(
    xp: NDArray[Any],
    w: NDArray[Any],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    out_spatial: tuple[int, ...],
    prepared: MutableMapping[Any, Any] | None,
) -> NDArray[Any]:
    """Depthwise cross-correlation of a padded input, accumulated tap by tap.

    Parameters
    ----------
    xp : ndarray
        ``(N, C, *padded_spatial)``, already padded.
    w : ndarray
        ``(C, 1, *kernel)``.
    strides, dilations : tuple of int
        Per spatial dimension.
    out_spatial : tuple of int
        The output's spatial shape.
    prepared : MutableMapping, optional
        The per-weights store for the ``(K, C, 1, ..., 1)`` tap weights.

    Returns
    -------
    ndarray
        ``(N, C, *out_spatial)`` in the working dtype.
    """
    n, c = xp.shape[0], xp.shape[1]
    nd = len(out_spatial)
    kernel = tuple(int(k) for k in w.shape[2:])
    taps = int(np.prod(kernel))
    dtype = working_dtype(xp.dtype, n * c * int(np.prod(out_spatial)) * taps)
    key = ("depthwise", dtype.str)
    tap_weights = prepared.get(key) if prepared is not None else None
    if tap_weights is None:
        tap_weights = np.ascontiguousarray(w.reshape(c, taps).T.reshape((taps, c) + (1,) * nd), dtype=dtype)
        if prepared is not None:
            prepared[key] = tap_weights
    src = np.ascontiguousarray(xp, dtype=dtype)
    if all(s == 1 for s in strides):
        return _flat(src, tap_weights, kernel, dilations, out_spatial)
    out = np.empty((n, c) + out_spatial, dtype=dtype)
    tmp = np.empty_like(out)
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        view = src[
            (slice(None), slice(None)) + tuple(slice(o * d, o * d + (size - 1) * s + 1, s) for o, d, s, size in zip(offsets, dilations, strides, out_spatial))
        ]
        if t == 0:
            np.multiply(view, tap_weights[t], out=out)
        else:
            np.multiply(view, tap_weights[t], out=tmp)
            out += tmp
        if t % 8 == 7:
            cancellation.check()
    return out


def _flat(src: NDArray[Any], tap_weights: NDArray[Any], kernel: tuple[int, ...], dilations: tuple[int, ...], out_spatial: tuple[int, ...]) -> NDArray[Any]:
    """Stride 1: every tap is one contiguous slice of the flattened padded planes.

    The output is accumulated "wide", at the padded row pitch (the columns past the output's
    width are computed and dropped), so each tap is a multiply-add over long contiguous rows
    rather than over many short ones.
    """
    n, c = src.shape[0], src.shape[1]
    padded = src.shape[2:]
    pitch = [int(np.prod(padded[i + 1 :])) for i in range(len(padded))]  # element strides of a plane
    length = sum((o - 1) * p for o, p in zip(out_spatial, pitch)) + 1
    flat = src.reshape(n * c, -1)
    weights = np.broadcast_to(tap_weights.reshape(tap_weights.shape[0], 1, c, 1), (tap_weights.shape[0], n, c, 1))
    weights = weights.reshape(tap_weights.shape[0], n * c, 1)
    wide = np.empty((n * c, length), dtype=src.dtype)
    # Blocks of planes small enough to stay in the L2 cache through all the taps.
    block = max(1, _BLOCK_BYTES // (length * src.itemsize))
    tmp = np.empty((min(block, n * c), length), dtype=src.dtype)
    starts = [sum(o * d * p for o, d, p in zip(offsets, dilations, pitch)) for offsets in itertools.product(*(range(k) for k in kernel))]
    for lo in range(0, n * c, block):
        hi = min(n * c, lo + block)
        acc, scratch = wide[lo:hi], tmp[: hi - lo]
        for t, start in enumerate(starts):
            view = flat[lo:hi, start : start + length]
            if t == 0:
                np.multiply(view, weights[t, lo:hi], out=acc)
            else:
                np.multiply(view, weights[t, lo:hi], out=scratch)
                acc += scratch
        cancellation.check()
    wide = wide.reshape(n, c, length)
    itemsize = wide.itemsize
    picked = np.lib.stride_tricks.as_strided(wide, shape=(n, c) + out_spatial, strides=wide.strides[:2] + tuple(p * itemsize for p in pitch))
    return np.ascontiguousarray(picked)
