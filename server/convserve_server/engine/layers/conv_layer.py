"""The convolution layer of a CNN, numerically the same as ``torch.nn.Conv1d/2d/3d``.

Every argument is checked before any work, with torch's rules; a bad one raises
:class:`~.errors.InvalidArgumentError` naming the argument. Then :mod:`.layer_policy` picks a
path by the layer's shapes (deterministically): ONNX Runtime's MLAS kernels for float32
(:mod:`.layer_onnx`), FFTW with cached weight spectra for large kernels (:mod:`.layer_fft`),
a plain matrix product for 1x1 kernels, a tap-by-tap depthwise path, or im2col and one batched
``np.matmul`` (:mod:`.layer_gemm`, :mod:`.layer_depthwise`). It computes cross-correlation, as
deep-learning frameworks do, adds the bias and applies the optional ReLU (fused into the
kernel where the path can) and max/avg pooling (see :mod:`.pooling`).

The weight's prepared forms (packed matrices, spectra, ONNX Runtime sessions) are memoized in
the caller's ``prepared`` store, keyed by what they depend on. See ``docs/conv_layer.md``.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.info import CallInfo, nonfinite_warnings
from convserve_server.engine.layers import (
    args as layer_args,
    prepared as layer_cache,
    depthwise as layer_depthwise,
    fft as layer_fft,
    gemm as layer_gemm,
    onnx as layer_onnx,
    policy as layer_policy,
    pooling_taps as layer_pool,
)
from convserve_server.engine.layers.pooling import int_tuple, validate_pool

PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")
ACTIVATIONS: tuple[str, ...] = ("relu",)
_NUMPY_PAD_MODE: dict[str, str] = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _resolve_padding(padding: object, nd: int, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """Return (before, after) padding per spatial dim, with torch's ``same`` split."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise InvalidArgumentError("padding", f"padding='same' is not supported for strided convolutions, got stride {stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return pads
        raise InvalidArgumentError("padding", f"expected an int, a tuple of {nd} ints, 'same' or 'valid', got {padding!r}")
    return [(p, p) for p in int_tuple(padding, nd, "padding", "padding", 0)]


def _pad(x: NDArray[Any], pads: list[tuple[int, int]], padding_mode: str) -> NDArray[Any]:
    """Pad the spatial axes of ``(N, C, *spatial)`` as torch's ``padding_mode`` does."""
    if not any(b or a for b, a in pads):
        return x
    pad_width = [(0, 0), (0, 0)] + pads
    result: NDArray[Any] = np.pad(x, pad_width, mode=_NUMPY_PAD_MODE[padding_mode])  # type: ignore[call-overload]
    return result


def _run_path(
    chosen: str,
    xb: NDArray[Any],
    w: NDArray[Any],
    b: NDArray[Any] | None,
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    padding_mode: str,
    dilations: tuple[int, ...],
    groups: int,
    out_spatial: tuple[int, ...],
    relu: bool,
    prepared: MutableMapping[Any, Any],
) -> NDArray[Any]:
    """Run numpy path ``chosen``, then add the bias and apply the ReLU in place."""
    nd = len(strides)
    xp = _pad(xb, pads, padding_mode)
    if chosen == "fft":
        out = layer_fft.fft_correlate(xp, w, strides, out_spatial, prepared)
    elif chosen == "pointwise":
        out = layer_gemm.pointwise(xp, w, strides, prepared)
    elif chosen == "depthwise":
        out = layer_depthwise.depthwise(xp, w, strides, dilations, out_spatial, prepared)
    else:
        out = layer_gemm.im2col_gemm(xp, w, strides, dilations, groups, out_spatial, prepared)
    if b is not None:
        out += b.astype(out.dtype).reshape((1, -1) + (1,) * nd)
    if out.dtype != xb.dtype:
        out = out.astype(xb.dtype)
    if relu:
        np.maximum(out, 0, out=out)  # NaN propagates, as torch.relu
    return out


@overload
def conv_layer(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    groups: int = ...,
    padding_mode: str = ...,
    activation: str | None = ...,
    pool: Any = ...,
    return_info: Literal[False] = ...,
    prepared: MutableMapping[Any, Any] | None = ...,
    path: str = ...,
) -> NDArray[Any]: ...
@overload
def conv_layer(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    groups: int = ...,
    padding_mode: str = ...,
    activation: str | None = ...,
    pool: Any = ...,
    *,
    return_info: Literal[True],
    prepared: MutableMapping[Any, Any] | None = ...,
    path: str = ...,
) -> tuple[NDArray[Any], CallInfo]: ...
@overload
def conv_layer(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    groups: int = ...,
    padding_mode: str = ...,
    activation: str | None = ...,
    pool: Any = ...,
    return_info: bool = ...,
    prepared: MutableMapping[Any, Any] | None = ...,
    path: str = ...,
) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]: ...


def conv_layer(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    activation: str | None = None,
    pool: Any = None,
    return_info: bool = False,
    prepared: MutableMapping[Any, Any] | None = None,
    path: str = "auto",
) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]:
    """Apply a CNN convolution layer, as ``torch.nn.ConvNd``, then ReLU and pooling.

    Parameters
    ----------
    input : array_like
        ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``; float32 or float64;
        1, 2 or 3 spatial dimensions (given by ``weight.ndim - 2``).
    weight : array_like
        ``(C_out, C_in / groups, *kernel)``, same dtype as ``input``.
    bias : array_like, optional
        ``(C_out,)``. An ndarray must have ``input``'s dtype; other array-likes are cast.
    stride, dilation : int or tuple of int
        Positive; one value per spatial dimension or one for all.
    padding : int, tuple of int, "same" or "valid"
        Non-negative. ``"same"`` needs stride 1 and puts the extra sample at the end
        for an even total padding, as torch.
    groups : int
        Divides both ``C_in`` and ``C_out``.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        As torch's module: reflect needs padding < input size, circular <= input size.
    activation : {None, "relu"}
        Applied after the bias (``""`` and ``"none"`` also mean no activation).
    pool : dict, optional
        ``{"kind": "max" | "avg", "kernel_size": k, "stride": k, "padding": 0}`` with
        ``torch.nn.functional.max_poolNd`` / ``avg_poolNd`` default semantics.
    return_info : bool
        Also return a :class:`~.info.CallInfo`.
    prepared : MutableMapping, optional
        A per-weights store that lives as long as the weights (the server's registered-weights
        cache): paths keep the weight's prepared forms (packed matrices, spectra) in it, keyed
        by what they depend on, so repeated calls with the same weights skip that work.
        Without one, a small LRU of stores keyed by a digest of the weights serves
        (:mod:`.layer_cache`).
    path : str
        ``"auto"`` (the policy of :mod:`.layer_policy` chooses) or one of
        :data:`.layer_policy.PATHS` to force a path (an error if it cannot compute the layer).

    Returns
    -------
    ndarray or (ndarray, CallInfo)
        ``(N, C_out, *out_spatial)`` (unbatched if ``input`` was), ``input``'s dtype.

    Raises
    ------
    InvalidArgumentError
        Any malformed or inconsistent argument (``.field`` names it), before any work.
    """
    x, w, nd, batched = layer_args.input_and_weight(input, weight, "(C_out, C_in/groups, *kernel)", "convolution")
    xb = x if batched else x[np.newaxis]
    n, c_in = xb.shape[0], xb.shape[1]
    spatial = tuple(int(s) for s in xb.shape[2:])
    c_out = w.shape[0]
    kernel = tuple(int(k) for k in w.shape[2:])

    groups = layer_args.groups_count(groups, c_in)
    if c_out % groups:
        raise InvalidArgumentError("groups", f"C_out ({c_out}) must be divisible by groups ({groups})")
    if w.shape[1] * groups != c_in:
        raise InvalidArgumentError(
            "weight",
            f"expected weight.shape[1] == C_in / groups = {c_in} / {groups} = {c_in // groups}, got weight of shape {w.shape} for input of shape {x.shape}",
        )
    b = layer_args.bias_vector(bias, x.dtype, c_out)

    strides = int_tuple(stride, nd, "stride", "stride", 1)
    dilations = int_tuple(dilation, nd, "dilation", "dilation", 1)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise InvalidArgumentError("padding_mode", f"expected one of {list(PADDING_MODES)}, got {padding_mode!r}")
    pads = _resolve_padding(padding, nd, kernel, strides, dilations)
    for size, (before, after) in zip(spatial, pads):
        if padding_mode == "reflect" and max(before, after) >= size:
            raise InvalidArgumentError("padding", f"reflect padding must be less than the input size, got padding {pads} for spatial shape {spatial}")
        if padding_mode == "circular" and max(before, after) > size:
            raise InvalidArgumentError("padding", f"circular padding must be at most the input size, got padding {pads} for spatial shape {spatial}")
    effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    padded = tuple(size + bfr + aft for size, (bfr, aft) in zip(spatial, pads))
    if any(e > p for e, p in zip(effective, padded)):
        raise InvalidArgumentError(
            "weight",
            f"kernel size can't be greater than the padded input size: padded input {padded}, (dilated) kernel {effective}",
        )
    out_spatial = tuple((p - e) // s + 1 for p, e, s in zip(padded, effective, strides))

    if activation in ("", "none"):
        activation = None
    if activation is not None and activation not in ACTIVATIONS:
        raise InvalidArgumentError("activation", f"expected None or 'relu', got {activation!r}")
    pool_spec = validate_pool(pool, out_spatial)

    if path not in ("auto",) + layer_policy.PATHS:
        raise InvalidArgumentError("path", f"expected 'auto' or one of {list(layer_policy.PATHS)}, got {path!r}")
    problem = layer_policy.Problem(
        dtype=x.dtype.name,
        n=int(n),
        c_in=int(c_in),
        c_out=int(c_out),
        groups=groups,
        kernel=kernel,
        strides=strides,
        dilations=dilations,
        padded=padded,
        out_spatial=out_spatial,
    )
    if path == "auto":
        chosen = layer_policy.choose(problem)
    elif layer_policy.eligible(path, problem):
        chosen = path
    else:
        raise InvalidArgumentError("path", f"path {path!r} cannot compute this layer ({problem})")

    started = time.perf_counter()
    if chosen == "fft" and not (np.isfinite(xb).all() and np.isfinite(w).all()):
        chosen = layer_policy.fallback(problem)  # an FFT would smear NaN/Inf over the output
    relu = activation == "relu"
    if prepared is None:
        prepared = layer_cache.store_for(w)
    warnings: tuple[str, ...] = ()
    out: NDArray[Any] | None = None
    if chosen == "onnxruntime":  # bias, ReLU and pooling all run inside ONNX Runtime
        xo = xb if padding_mode == "zeros" else _pad(xb, pads, padding_mode)
        ort_pads = pads if padding_mode == "zeros" else [(0, 0)] * nd
        try:
            out = layer_onnx.run(xo, w, b, strides, ort_pads, dilations, groups, relu, prepared, pool_spec)
        except layer_onnx.RUNTIME_ERRORS as exc:  # never fail a call ONNX Runtime cannot run
            chosen = layer_policy.numpy_path(problem)
            warnings = (f"onnxruntime failed ({type(exc).__name__}: {str(exc)[:200]}); computed by {chosen}",)
    if out is None:
        out = _run_path(chosen, xb, w, b, strides, pads, padding_mode, dilations, groups, out_spatial, relu, prepared)
        if pool_spec is not None:
            out = layer_pool.pool(out, pool_spec)
    if not batched:
        out = out[0]
    elapsed = time.perf_counter() - started
    if return_info:
        warnings += tuple(nonfinite_warnings(out))
        return out, CallInfo(method=chosen, compute_seconds=elapsed, warnings=warnings)
    return out
