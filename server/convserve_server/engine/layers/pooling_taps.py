"""Max and average pooling (of a CNN layer's output, not a thread pool) for the numpy ConvLayer paths, tap by tap.

Same semantics as :func:`.pooling.apply_pool` (torch's ``max_poolNd`` / ``avg_poolNd`` with
their defaults: max ignores the padding, average counts it as zeros, floor mode), but instead
of reducing a strided window view (numpy then walks short, scattered inner loops) it folds the
``prod(kernel_size)`` strided views of the input into the output with ``np.maximum`` / ``+=``:
a handful of whole-array passes. Measured on a (8, 64, 56, 56) float32 map with 2x2 max
pooling: about 10x faster than the window reduction.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.layers.pooling import PoolSpec


def pool(x: NDArray[Any], spec: PoolSpec) -> NDArray[Any]:
    """Pool the trailing ``len(spec.kernel_size)`` axes of ``x`` as ``spec`` says.

    Parameters
    ----------
    x : ndarray
        ``(..., *spatial)`` float array, already checked by :func:`.pooling.validate_pool`.
    spec : PoolSpec
        The validated request.

    Returns
    -------
    ndarray
        Same dtype as ``x``, spatial shape ``spec.output_shape``, C-contiguous.
    """
    nd = len(spec.kernel_size)
    lead = x.ndim - nd
    if any(spec.padding):
        fill = -np.inf if spec.kind == "max" else 0.0
        x = np.pad(x, [(0, 0)] * lead + [(p, p) for p in spec.padding], mode="constant", constant_values=fill)
    out_shape = spec.output_shape
    out: NDArray[Any] | None = None
    for offsets in itertools.product(*(range(k) for k in spec.kernel_size)):
        view = x[(slice(None),) * lead + tuple(slice(o, o + (size - 1) * s + 1, s) for o, s, size in zip(offsets, spec.stride, out_shape))]
        if out is None:
            out = np.array(view, dtype=np.float64 if spec.kind == "avg" else x.dtype, order="C")
        elif spec.kind == "max":
            np.maximum(out, view, out=out)  # NaN propagates, as torch
        else:
            out += view
    assert out is not None
    if spec.kind == "avg":
        out *= 1.0 / math.prod(spec.kernel_size)
        return out.astype(x.dtype, copy=False)
    return out
