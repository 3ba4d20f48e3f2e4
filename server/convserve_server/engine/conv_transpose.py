"""The transposed convolution ("deconvolution"), numerically ``torch.nn.functional.conv_transposeNd``.

It runs as an ordinary convolution layer (:func:`.conv_layer.conv_layer`, and so at its
speed): the input is zero-inserted by ``stride`` (``stride - 1`` zeros between samples), padded
by ``dilation * (kernel - 1) - padding`` on both sides (``output_padding`` more at the end;
cropped where that is negative), and correlated with ``dilation`` by the kernel flipped
spatially, with input and output channels swapped within each group.

The flipped, swapped weight depends only on the weight and ``groups``; with a ``prepared``
store (the registered-weights cache hands one in) it is made once per weight. The convolution
layer's own prepared forms of that weight go into the same store under keys of their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, MutableMapping
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from .conv_layer import conv_layer
from .errors import InvalidArgumentError
from .info import CallInfo
from .pooling import int_tuple, is_int

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Keys of this module in a ``prepared`` store: (PREFIX, groups) holds the flipped weight and
# (PREFIX, groups, key) the convolution layer's forms of it (never those of the weight itself).
PREFIX = "conv_transpose"


class _Prefixed(MutableMapping[Any, Any]):
    """A view of a ``prepared`` store that keeps its keys apart under ``prefix``."""

    def __init__(self, store: MutableMapping[Any, Any], prefix: tuple[Any, ...]) -> None:
        self._store = store
        self._prefix = prefix

    def __getitem__(self, key: Any) -> Any:
        return self._store[self._prefix + (key,)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._store[self._prefix + (key,)] = value

    def __delitem__(self, key: Any) -> None:
        del self._store[self._prefix + (key,)]

    def _mine(self) -> list[Any]:
        n = len(self._prefix)
        return [k[n] for k in list(self._store)
                if isinstance(k, tuple) and len(k) == n + 1 and k[:n] == self._prefix]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def _float_array(value: object, field: str) -> NDArray[Any]:
    """``np.asarray(value)``, required to be float32 or float64."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(field, f"expected a float32 or float64 array, got an unconvertible {type(value).__name__}: {exc}") from exc
    if arr.dtype not in _FLOAT_DTYPES:
        raise InvalidArgumentError(field, f"dtype must be float32 or float64 (as torch's conv layers), got {arr.dtype}")
    return arr


def output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int) -> int:
    """Spatial output size of one axis: ``(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def flipped_weight(w: NDArray[Any], groups: int) -> NDArray[Any]:
    """The conv_layer weight of a transposed convolution: ``(C_out, C_in/groups, *k)``, kernel flipped.

    Parameters
    ----------
    w : ndarray
        ``(C_in, C_out/groups, *kernel)``.
    groups : int
        Divides ``C_in``.
    """
    c_in, cog = w.shape[0], w.shape[1]
    kernel = w.shape[2:]
    cig = c_in // groups
    nd = len(kernel)
    flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * nd]
    grouped = flipped.reshape((groups, cig, cog) + kernel).swapaxes(1, 2)  # (G, C_out/G, C_in/G, *k)
    result = np.ascontiguousarray(grouped.reshape((groups * cog, cig) + kernel))
    result.flags.writeable = False
    return result


def _upsample(xb: NDArray[Any], strides: tuple[int, ...], before: tuple[int, ...],
              lengths: tuple[int, ...]) -> NDArray[Any]:
    """Zeros of spatial ``lengths`` with sample ``i`` of each axis at ``before + stride * i`` (outside: dropped)."""
    out = np.zeros(xb.shape[:2] + lengths, dtype=xb.dtype)
    source: list[slice] = [slice(None), slice(None)]
    target: list[slice] = [slice(None), slice(None)]
    for size, s, b, length in zip(xb.shape[2:], strides, before, lengths):
        first = 0 if b >= 0 else (-b + s - 1) // s  # first i with b + s*i >= 0
        last = min(size, (length - 1 - b) // s + 1) if length - 1 - b >= 0 else 0  # one past the last that fits
        if last <= first:
            return out  # nothing of the input lands inside
        source.append(slice(first, last))
        target.append(slice(b + s * first, b + s * (last - 1) + 1, s))
    out[tuple(target)] = xb[tuple(source)]
    return out


@overload
def conv_transpose(
    input: Any, weight: Any, bias: Any = ..., stride: Any = ..., padding: Any = ..., output_padding: Any = ...,
    groups: int = ..., dilation: Any = ..., return_info: Literal[False] = ...,
    prepared: MutableMapping[Any, Any] | None = ...,
) -> NDArray[Any]: ...
@overload
def conv_transpose(
    input: Any, weight: Any, bias: Any = ..., stride: Any = ..., padding: Any = ..., output_padding: Any = ...,
    groups: int = ..., dilation: Any = ..., *, return_info: Literal[True],
    prepared: MutableMapping[Any, Any] | None = ...,
) -> tuple[NDArray[Any], CallInfo]: ...
@overload
def conv_transpose(
    input: Any, weight: Any, bias: Any = ..., stride: Any = ..., padding: Any = ..., output_padding: Any = ...,
    groups: int = ..., dilation: Any = ..., return_info: bool = ...,
    prepared: MutableMapping[Any, Any] | None = ...,
) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]: ...


def conv_transpose(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    return_info: bool = False,
    prepared: MutableMapping[Any, Any] | None = None,
) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]:
    """Apply a transposed convolution, as ``torch.nn.functional.conv_transpose1d/2d/3d``.

    Parameters
    ----------
    input : array_like
        ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``; float32 or float64;
        1, 2 or 3 spatial dimensions (given by ``weight.ndim - 2``).
    weight : array_like
        ``(C_in, C_out / groups, *kernel)``, same dtype as ``input``.
    bias : array_like, optional
        ``(C_out,)``. An ndarray must have ``input``'s dtype; other array-likes are cast.
    stride, dilation : int or tuple of int
        Positive; one value per spatial dimension or one for all.
    padding : int or tuple of int
        Non-negative: ``dilation * (kernel - 1) - padding`` zeros are added to both sides.
    output_padding : int or tuple of int
        Non-negative and, per dimension, below ``stride`` or below ``dilation`` (as torch):
        extra size at the end of the output.
    groups : int
        Divides ``C_in``; ``C_out = weight.shape[1] * groups``.
    return_info : bool
        Also return a :class:`~.info.CallInfo`.
    prepared : MutableMapping, optional
        A per-weights store that lives as long as the weights: the flipped weight is kept there
        under ``("conv_transpose", groups)``, so repeated calls skip making it.

    Returns
    -------
    ndarray or (ndarray, CallInfo)
        ``(N, C_out, *out_spatial)`` (unbatched if ``input`` was), ``input``'s dtype, where
        ``out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``.

    Raises
    ------
    InvalidArgumentError
        Any malformed or inconsistent argument (``.field`` names it), before any work.
    """
    x = _float_array(input, "input")
    w = _float_array(weight, "weight")
    if w.ndim not in (3, 4, 5):
        raise InvalidArgumentError("weight", f"expected a 3-D, 4-D or 5-D weight (C_in, C_out/groups, *kernel), got shape {w.shape}")
    nd = w.ndim - 2
    if x.ndim not in (nd + 1, nd + 2):
        raise InvalidArgumentError(
            "input",
            f"expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input for a {nd}-D transposed convolution "
            f"with weight of shape {w.shape}, got {x.ndim}-D input of shape {x.shape}",
        )
    if x.dtype != w.dtype:
        raise InvalidArgumentError("weight", f"input and weight must have the same dtype, got input {x.dtype} and weight {w.dtype}")
    if 0 in x.shape:
        raise InvalidArgumentError("input", f"every dimension must be non-empty, got shape {x.shape}")
    if 0 in w.shape:
        raise InvalidArgumentError("weight", f"every dimension must be non-empty, got shape {w.shape}")
    batched = x.ndim == nd + 2
    xb = x if batched else x[np.newaxis]
    c_in = xb.shape[1]
    spatial = tuple(int(s) for s in xb.shape[2:])
    kernel = tuple(int(k) for k in w.shape[2:])

    if not is_int(groups) or groups < 1:
        raise InvalidArgumentError("groups", f"expected a positive int, got {groups!r}")
    groups = int(groups)
    if c_in % groups:
        raise InvalidArgumentError("groups", f"C_in ({c_in}) must be divisible by groups ({groups})")
    if w.shape[0] != c_in:
        raise InvalidArgumentError(
            "weight", f"expected weight.shape[0] == C_in = {c_in} (weight is (C_in, C_out/groups, *kernel)), "
            f"got weight of shape {w.shape} for input of shape {x.shape}",
        )
    c_out = w.shape[1] * groups

    b: NDArray[Any] | None = None
    if bias is not None:
        b = _float_array(bias, "bias")
        if isinstance(bias, np.ndarray) and b.dtype != x.dtype:
            raise InvalidArgumentError("bias", f"bias must have the input's dtype {x.dtype}, got {b.dtype}")
        b = b.astype(x.dtype, copy=False)
        if b.shape != (c_out,):
            raise InvalidArgumentError("bias", f"expected shape (C_out,) = ({c_out},), got {b.shape}")

    strides = int_tuple(stride, nd, "stride", "stride", 1)
    dilations = int_tuple(dilation, nd, "dilation", "dilation", 1)
    pads = int_tuple(padding, nd, "padding", "padding", 0)
    extras = int_tuple(output_padding, nd, "output_padding", "output_padding", 0)
    for op, s, d in zip(extras, strides, dilations):
        if op >= s and op >= d:
            raise InvalidArgumentError(
                "output_padding", f"output_padding must be smaller than either stride or dilation, got output_padding "
                f"{extras}, stride {strides}, dilation {dilations}")
    out_spatial = tuple(output_size(*a) for a in zip(spatial, kernel, strides, pads, extras, dilations))
    if any(o < 1 for o in out_spatial):
        raise InvalidArgumentError(
            "padding", f"the output would be empty: input {spatial}, kernel {kernel}, stride {strides}, padding {pads}, "
            f"output_padding {extras}, dilation {dilations} give output size {out_spatial}")

    started = time.perf_counter()
    if prepared is None:
        wt = flipped_weight(w, groups)
        layer_store: MutableMapping[Any, Any] | None = None
    else:
        stored: Any = prepared.get((PREFIX, groups))
        if isinstance(stored, np.ndarray) and stored.shape == (c_out, c_in // groups) + kernel and stored.dtype == w.dtype:
            wt = stored
        else:
            wt = flipped_weight(w, groups)
            prepared[(PREFIX, groups)] = wt
        layer_store = _Prefixed(prepared, (PREFIX, groups))
    before = tuple(d * (k - 1) - p for k, d, p in zip(kernel, dilations, pads))
    lengths = tuple(o + d * (k - 1) for o, k, d in zip(out_spatial, kernel, dilations))
    upsampled = _upsample(xb, strides, before, lengths)
    out, info = conv_layer(upsampled, wt, b, stride=1, padding=0, dilation=dilations, groups=groups,
                           return_info=True, prepared=layer_store)
    if not batched:
        out = out[0]
    elapsed = time.perf_counter() - started
    if return_info:
        return out, CallInfo(method=info.method, compute_seconds=elapsed, warnings=info.warnings)
    return out


def sizes(input_shape: tuple[int, ...], weight_shape: tuple[int, ...], groups: int, stride: tuple[int, ...],
          padding: tuple[int, ...], output_padding: tuple[int, ...],
          dilation: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The output shape and the elements of the upsampled input, from shapes and arguments alone.

    For checks before admission; the arguments must already be one value per spatial dimension.
    ``input_shape`` may be batched or not.
    """
    nd = len(weight_shape) - 2
    lead, spatial, kernel = input_shape[:-nd - 1], input_shape[-nd:], weight_shape[2:]
    out = tuple(output_size(*a) for a in zip(spatial, kernel, stride, padding, output_padding, dilation))
    lengths = [o + d * (k - 1) for o, k, d in zip(out, kernel, dilation)]
    return lead + (weight_shape[1] * groups,) + out, math.prod(input_shape[:-nd]) * math.prod(lengths)
