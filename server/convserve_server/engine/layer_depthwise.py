"""The ``depthwise`` ConvLayer path: ``groups == C_in == C_out``, one kernel per channel.

A depthwise layer has no channel contraction, so im2col would copy ``K`` times the input to
feed matrix products of inner size ``K`` (9 for 3x3): mostly memory traffic. Here the output
is accumulated tap by tap instead: for each kernel tap, the (strided, dilated) shifted view of
the padded input times that tap's per-channel weight is added into the output, in place.
That is ``K`` passes over an output-sized array and no im2col matrix. Any number of spatial
dimensions, stride and dilation are handled by the views.

Small float32 problems accumulate in float64 (see :func:`.layer_gemm.working_dtype`).
"""

from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import cancellation
from .layer_gemm import working_dtype


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
    src = xp if xp.dtype == dtype else xp.astype(dtype)
    out = np.empty((n, c) + out_spatial, dtype=dtype)
    tmp = np.empty_like(out)
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        view = src[(slice(None), slice(None)) + tuple(
            slice(o * d, o * d + (size - 1) * s + 1, s) for o, d, s, size in zip(offsets, dilations, strides, out_spatial)
        )]
        if t == 0:
            np.multiply(view, tap_weights[t], out=out)
        else:
            np.multiply(view, tap_weights[t], out=tmp)
            out += tmp
        if t % 8 == 7:
            cancellation.check()
    return out
