"""The convolution layer of a CNN, numerically the same as ``torch.nn.Conv1d/2d/3d``.

A call runs in two named steps. :func:`~convserve_server.engine.layers.planner.plan_layer`
checks every argument before any work, with torch's rules (a bad one raises
:class:`~convserve_server.engine.errors.InvalidArgumentError` naming the argument), and the path
policy (:mod:`convserve_server.engine.layers.policy`) picks a path by the layer's shapes
(deterministically): the result is a :class:`~convserve_server.engine.layers.planner.LayerPlan`.
:func:`execute` then runs it: ONNX Runtime's MLAS kernels for float32
(:mod:`convserve_server.engine.layers.onnx`), FFTW with cached weight spectra for large kernels
(:mod:`convserve_server.engine.layers.fft`), a plain matrix product for 1x1 kernels, a
tap-by-tap depthwise path, or im2col and one batched ``np.matmul``
(:mod:`convserve_server.engine.layers.gemm`, :mod:`convserve_server.engine.layers.depthwise`).
It computes cross-correlation, as deep-learning frameworks do, adds the bias and applies the
optional ReLU (fused into the kernel where the path can) and max/avg pooling (see
:mod:`convserve_server.engine.layers.pooling`).

The weight's prepared forms (packed matrices, spectra, ONNX Runtime sessions) are memoized in
the caller's ``prepared`` store, keyed by what they depend on. See ``docs/conv_layer.md``.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.info import CallInfo, has_nonfinite, nonfinite_warnings
from convserve_server.engine.layers import depthwise, fft, gemm, onnx, policy, pooling_taps
from convserve_server.engine.layers.planner import ACTIVATIONS, PADDING_MODES, LayerPlan, plan_layer
from convserve_server.engine.layers.prepared import store_for

__all__ = ["ACTIVATIONS", "PADDING_MODES", "LayerPlan", "conv_layer", "execute", "plan_layer"]

_NUMPY_PAD_MODE: dict[str, str] = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


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
        Also return a :class:`~convserve_server.engine.info.CallInfo`.
    prepared : MutableMapping, optional
        A per-weights store that lives as long as the weights (the server's registered-weights
        cache): paths keep the weight's prepared forms (packed matrices, spectra) in it, keyed
        by what they depend on, so repeated calls with the same weights skip that work.
        Without one, a small LRU of stores keyed by a digest of the weights serves
        (:mod:`convserve_server.engine.layers.prepared`).
    path : str
        ``"auto"`` (the policy of :mod:`convserve_server.engine.layers.policy` chooses) or one of
        :data:`convserve_server.engine.layers.policy.PATHS` to force a path (an error if it
        cannot compute the layer).

    Returns
    -------
    ndarray or (ndarray, CallInfo)
        ``(N, C_out, *out_spatial)`` (unbatched if ``input`` was), ``input``'s dtype.

    Raises
    ------
    InvalidArgumentError
        Any malformed or inconsistent argument (``.field`` names it), before any work.
    """
    plan = plan_layer(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool, path)
    return execute(plan, prepared, return_info)


def execute(plan: LayerPlan, prepared: MutableMapping[Any, Any] | None = None, return_info: bool = False) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]:
    """Run a :class:`~convserve_server.engine.layers.planner.LayerPlan` (the work of :func:`conv_layer`).

    An ``fft`` plan meeting a non-finite input or weight runs on :func:`.policy.fallback`'s path
    instead (an FFT would smear NaN/Inf over the output); an ONNX Runtime failure falls back to
    the numpy path, with a warning. Without a ``prepared`` store the inline-weights LRU of
    :mod:`convserve_server.engine.layers.prepared` serves one.
    """
    started = time.perf_counter()
    chosen = plan.path
    if chosen == "fft" and not (_all_finite(plan.x) and _all_finite(plan.w)):
        chosen = policy.fallback(plan.problem)  # an FFT would smear NaN/Inf over the output
    if prepared is None:
        prepared = store_for(plan.w)
    warnings: tuple[str, ...] = ()
    out: NDArray[Any] | None = None
    if chosen == "onnxruntime":  # bias, ReLU and pooling all run inside ONNX Runtime
        xo, ort_pads = _onnx_input(plan)
        try:
            out = onnx.run(xo, plan.w, plan.bias, plan.strides, ort_pads, plan.dilations, plan.groups, plan.relu, prepared, plan.pool)
        except onnx.RUNTIME_ERRORS as exc:  # never fail a call ONNX Runtime cannot run
            chosen = policy.numpy_path(plan.problem)
            warnings = (f"onnxruntime failed ({type(exc).__name__}: {str(exc)[:200]}); computed by {chosen}",)
    if out is None:
        out = _run_numpy(plan, chosen, prepared)
        if plan.pool is not None:
            out = pooling_taps.pool(out, plan.pool)
    if not plan.batched:
        out = out[0]
    elapsed = time.perf_counter() - started
    if return_info:
        warnings += tuple(nonfinite_warnings(out))
        return out, CallInfo(method=chosen, compute_seconds=elapsed, warnings=warnings)
    return out


def _pad(x: NDArray[Any], pads: list[tuple[int, int]], padding_mode: str) -> NDArray[Any]:
    """Pad the spatial axes of ``(N, C, *spatial)`` as torch's ``padding_mode`` does."""
    if not any(b or a for b, a in pads):
        return x
    pad_width = [(0, 0), (0, 0)] + pads
    result: NDArray[Any] = np.pad(x, pad_width, mode=_NUMPY_PAD_MODE[padding_mode])  # type: ignore[call-overload]
    return result


def _onnx_input(plan: LayerPlan) -> tuple[NDArray[Any], list[tuple[int, int]]]:
    """The ``onnxruntime`` path's input and pads: zero padding runs inside the model, other modes are padded here."""
    pads = list(plan.pads)
    if plan.padding_mode == "zeros":
        return plan.x, pads
    return _pad(plan.x, pads, plan.padding_mode), [(0, 0)] * plan.nd


def _all_finite(a: NDArray[Any]) -> bool:
    """Whether ``a`` has no NaN or Inf: the engine's one single-threaded pass (:func:`convserve_server.engine.info.has_nonfinite`)."""
    return not has_nonfinite(a)


def _run_numpy(plan: LayerPlan, chosen: str, prepared: MutableMapping[Any, Any]) -> NDArray[Any]:
    """Run numpy path ``chosen``, then add the bias and apply the ReLU in place (no pooling)."""
    if chosen == "fft" and plan.padding_mode == "zeros":  # the transform pads in its own buffer
        out = fft.fft_correlate(plan.x, plan.w, plan.strides, plan.out_spatial, prepared, pads=plan.pads)
        return _finish(plan, out)
    xp = _pad(plan.x, list(plan.pads), plan.padding_mode)
    if chosen == "fft":
        out = fft.fft_correlate(xp, plan.w, plan.strides, plan.out_spatial, prepared)
    elif chosen == "pointwise":
        out = gemm.pointwise(xp, plan.w, plan.strides, prepared)
    elif chosen == "depthwise":
        out = depthwise.depthwise(xp, plan.w, plan.strides, plan.dilations, plan.out_spatial, prepared)
    else:
        out = gemm.im2col_gemm(xp, plan.w, plan.strides, plan.dilations, plan.groups, plan.out_spatial, prepared)
    return _finish(plan, out)


def _finish(plan: LayerPlan, out: NDArray[Any]) -> NDArray[Any]:
    """Add the bias and apply the ReLU in place; return ``out`` in the input's dtype."""
    if plan.bias is not None:
        out += plan.bias.astype(out.dtype).reshape((1, -1) + (1,) * plan.nd)
    if out.dtype != plan.x.dtype:
        out = out.astype(plan.x.dtype)
    if plan.relu:
        np.maximum(out, 0, out=out)  # NaN propagates, as torch.relu
    return out
