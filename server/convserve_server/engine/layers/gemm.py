"""The numpy GEMM ConvLayer paths: ``im2col_gemm`` (any layer) and ``pointwise`` (1x1 kernels).

``im2col_gemm``: the padded input is viewed as windows with ``sliding_window_view``, copied
once into a ``(groups, N*P, C_in/groups*K)`` matrix and multiplied by the packed weight matrix
with one batched ``np.matmul`` (BLAS). It serves float64, tiny calls and any layer when ONNX
Runtime is missing. Small float32 problems are computed in float64 (cheap, and exact to the
last float32 bit in practice).

``pointwise``: a 1x1 kernel with ``groups == 1`` is a plain matrix product per batch item,
``W (C_out, C_in) @ x[n] (C_in, P)``, which lands directly in NCHW order with no im2col and
no transpose of the result.

The packed weight matrices are memoized in the caller's ``prepared`` store.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from convserve_server.engine import cancellation

# Below this many multiply-adds, float32 work is done in float64 (cheap, exact-ish).
FLOAT64_ACCUMULATE_MACS = 1 << 24
# Rows of the im2col matrix per block: bounds the temporary and gives cancellation points.
_BLOCK_BYTES = 64 << 20


def _memo(prepared: MutableMapping[Any, Any] | None, key: tuple[Any, ...], make: Any) -> Any:
    """``prepared[key]``, computed by ``make()`` and stored when absent (no store: just make)."""
    if prepared is None:
        return make()
    found = prepared.get(key)
    if found is None:
        found = make()
        prepared[key] = found
    return found


def working_dtype(dtype: np.dtype[Any], macs: int) -> np.dtype[Any]:
    """The dtype the GEMM runs in: float64 for small float32 problems, else ``dtype``."""
    if dtype == np.float32 and macs <= FLOAT64_ACCUMULATE_MACS:
        return np.dtype(np.float64)
    return dtype


def im2col_gemm(
    xp: NDArray[Any],
    w: NDArray[Any],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    groups: int,
    out_spatial: tuple[int, ...],
    prepared: MutableMapping[Any, Any] | None,
) -> NDArray[Any]:
    """Cross-correlate a padded input with ``w`` by im2col and one batched matrix product.

    Parameters
    ----------
    xp : ndarray
        ``(N, C_in, *padded_spatial)``, already padded.
    w : ndarray
        ``(C_out, C_in / groups, *kernel)``.
    strides, dilations : tuple of int
        Per spatial dimension.
    groups : int
        Channel groups.
    out_spatial : tuple of int
        The output's spatial shape.
    prepared : MutableMapping, optional
        The per-weights store for the packed weight matrix.

    Returns
    -------
    ndarray
        ``(N, C_out, *out_spatial)`` in the working dtype (see :func:`working_dtype`).
    """
    nd = len(strides)
    n, c_in = xp.shape[0], xp.shape[1]
    c_out = w.shape[0]
    kernel = tuple(int(k) for k in w.shape[2:])
    effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    cg, cog = c_in // groups, c_out // groups
    positions = math.prod(out_spatial)
    taps = cg * math.prod(kernel)
    dtype = working_dtype(xp.dtype, groups * n * positions * taps * cog)

    def pack() -> NDArray[Any]:
        return np.ascontiguousarray(w.reshape(groups, cog, taps).transpose(0, 2, 1), dtype=dtype)

    wmat: NDArray[Any] = _memo(prepared, ("im2col_gemm", dtype.str, groups), pack)
    windows = sliding_window_view(xp, effective, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    windows = windows[index + tuple(slice(None, None, d) for d in dilations)]  # (N, C, *O, *K)
    windows = windows.reshape((n, groups, cg) + out_spatial + kernel)
    perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    cols_view = windows.transpose(perm)  # (G, N, *O, Cg, *K)
    out = np.empty((groups, n) + out_spatial + (cog,), dtype=dtype)
    # Block over the batch so the im2col temporary stays bounded (and cancellable).
    per_item = groups * positions * taps * dtype.itemsize
    block = max(1, min(n, _BLOCK_BYTES // max(1, per_item)))
    for start in range(0, n, block):
        stop = min(n, start + block)
        cols = np.ascontiguousarray(cols_view[:, start:stop], dtype=dtype).reshape(groups, (stop - start) * positions, taps)
        np.matmul(cols, wmat, out=out[:, start:stop].reshape(groups, (stop - start) * positions, cog))
        cancellation.check()
    result = out.transpose((1, 0, 2 + nd) + tuple(range(2, 2 + nd))).reshape((n, c_out) + out_spatial)
    return np.ascontiguousarray(result)


def pointwise(
    xp: NDArray[Any],
    w: NDArray[Any],
    strides: tuple[int, ...],
    prepared: MutableMapping[Any, Any] | None,
) -> NDArray[Any]:
    """A 1x1 convolution (``groups == 1``) as ``W @ x[n]`` per batch item.

    Parameters
    ----------
    xp : ndarray
        ``(N, C_in, *padded_spatial)``, already padded.
    w : ndarray
        ``(C_out, C_in, 1, ..., 1)``.
    strides : tuple of int
        Per spatial dimension (a strided 1x1 conv reads every ``s``-th sample).
    prepared : MutableMapping, optional
        The per-weights store for the ``(C_out, C_in)`` matrix.

    Returns
    -------
    ndarray
        ``(N, C_out, *out_spatial)`` in the working dtype (see :func:`working_dtype`).
    """
    if any(s != 1 for s in strides):
        xp = xp[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    n, c_in = xp.shape[0], xp.shape[1]
    out_spatial = tuple(int(s) for s in xp.shape[2:])
    positions = math.prod(out_spatial)
    c_out = w.shape[0]
    dtype = working_dtype(xp.dtype, n * positions * c_in * c_out)
    wmat: NDArray[Any] = _memo(prepared, ("pointwise", dtype.str), lambda: np.ascontiguousarray(w.reshape(c_out, c_in), dtype=dtype))
    cols = np.ascontiguousarray(xp, dtype=dtype).reshape(n, c_in, positions)
    out = np.empty((n, c_out, positions), dtype=dtype)
    for i in range(n):
        np.matmul(wmat, cols[i], out=out[i])
        cancellation.check()
    return out.reshape((n, c_out) + out_spatial)
