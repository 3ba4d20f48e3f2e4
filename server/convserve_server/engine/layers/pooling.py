"""Max and average pooling of a CNN layer's output (not a thread pool): the spec and a reference.

``torch.nn.functional.max_poolNd`` / ``avg_poolNd`` semantics. :func:`validate_pool` checks a
``pool`` argument into a :class:`PoolSpec`; :func:`apply_pool` is the plain reference that
:mod:`convserve_server.engine.layers.pooling_taps` (the fast version the numpy paths run) is
tested against.

The pooling runs after the convolution (and the optional activation) of
:func:`convserve_server.engine.layers.conv_layer.conv_layer`. Pure numpy: windows come from
``sliding_window_view``; no copy is made for max pooling without padding.

Semantics (the torch defaults): ``stride`` defaults to ``kernel_size``,
``ceil_mode=False``, ``dilation=1``; max pooling pads with ``-inf``; average
pooling pads with zeros and divides by the full kernel volume
(``count_include_pad=True``); padding may be at most half the kernel size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.layers.args import int_tuple

POOL_KINDS: tuple[str, ...] = ("max", "avg")
_POOL_KEYS: frozenset[str] = frozenset({"kind", "kernel_size", "stride", "padding"})


@dataclass(frozen=True)
class PoolSpec:
    """A validated pooling request.

    Attributes
    ----------
    kind : str
        ``"max"`` or ``"avg"``.
    kernel_size, stride, padding : tuple of int
        One value per spatial dimension.
    output_shape : tuple of int
        Spatial shape of the pooled result.
    """

    kind: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_shape: tuple[int, ...]


def validate_pool(pool: object, spatial_shape: tuple[int, ...]) -> PoolSpec | None:
    """Check a ``pool`` argument against the spatial shape it will pool.

    Parameters
    ----------
    pool : None or mapping
        ``None`` or ``{"kind": "max" | "avg", "kernel_size": k, "stride": k, "padding": 0}``
        (``stride`` and ``padding`` optional; ``stride=None`` means ``kernel_size``).
    spatial_shape : tuple of int
        Spatial shape of the array to pool (the convolution output).

    Returns
    -------
    PoolSpec or None
        ``None`` when ``pool`` is ``None``.

    Raises
    ------
    InvalidArgumentError
        With field ``"pool"`` for anything malformed, as torch would refuse it.
    """
    if pool is None:
        return None
    if not isinstance(pool, Mapping):
        raise InvalidArgumentError("pool", f"expected None or a dict with keys kind, kernel_size, stride, padding; got {type(pool).__name__}")
    unknown = sorted(str(k) for k in pool if k not in _POOL_KEYS)
    if unknown:
        raise InvalidArgumentError("pool", f"unknown key(s) {unknown}; expected only {sorted(_POOL_KEYS)}")
    kind = pool.get("kind")
    if not isinstance(kind, str) or kind not in POOL_KINDS:
        raise InvalidArgumentError("pool", f"kind must be one of {list(POOL_KINDS)}, got {kind!r}")
    if "kernel_size" not in pool:
        raise InvalidArgumentError("pool", "kernel_size is required")
    nd = len(spatial_shape)
    kernel = int_tuple(pool["kernel_size"], nd, "pool", "pool kernel_size", 1)
    stride_raw = pool.get("stride")
    stride = kernel if stride_raw is None else int_tuple(stride_raw, nd, "pool", "pool stride", 1)
    padding = int_tuple(pool.get("padding", 0), nd, "pool", "pool padding", 0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise InvalidArgumentError("pool", f"pool padding should be at most half of kernel_size, got padding {padding} for kernel_size {kernel}")
    out: list[int] = []
    for size, k, s, p in zip(spatial_shape, kernel, stride, padding):
        if k > size + 2 * p:
            raise InvalidArgumentError(
                "pool",
                f"pool kernel_size {kernel} is larger than the convolution output {tuple(spatial_shape)} plus padding {padding}",
            )
        out.append((size + 2 * p - k) // s + 1)
    return PoolSpec(kind, kernel, stride, padding, tuple(out))


def apply_pool(x: NDArray[Any], spec: PoolSpec) -> NDArray[Any]:
    """Pool the trailing ``len(spec.kernel_size)`` axes of ``x``.

    Parameters
    ----------
    x : ndarray
        ``(..., *spatial)`` float array, already checked by :func:`validate_pool`.
    spec : PoolSpec
        The validated request.

    Returns
    -------
    ndarray
        Same dtype as ``x``, spatial shape ``spec.output_shape``.
    """
    nd = len(spec.kernel_size)
    lead = x.ndim - nd
    axes = tuple(range(lead, x.ndim))
    if any(spec.padding):
        fill = -np.inf if spec.kind == "max" else 0.0
        pad_width = [(0, 0)] * lead + [(p, p) for p in spec.padding]
        x = np.pad(x, pad_width, mode="constant", constant_values=fill)
    windows = sliding_window_view(x, spec.kernel_size, axis=axes)
    index = (slice(None),) * lead + tuple(slice(None, None, s) for s in spec.stride)
    windows = windows[index]
    window_axes = tuple(range(-nd, 0))
    if spec.kind == "max":
        result = windows.max(axis=window_axes)
    else:
        total = windows.sum(axis=window_axes, dtype=np.float64)
        result = (total / math.prod(spec.kernel_size)).astype(x.dtype, copy=False)
    return np.ascontiguousarray(result)
