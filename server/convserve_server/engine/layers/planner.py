"""The pure part of a ConvLayer call: checked arguments, the output geometry and the path to run.

:func:`plan_layer` checks every argument of
:func:`convserve_server.engine.layers.conv_layer.conv_layer` with torch's rules (a bad one raises
:class:`~convserve_server.engine.errors.InvalidArgumentError` naming it, before any work),
resolves the padding, the output's spatial shape and the pooling, lets the path policy
(:mod:`convserve_server.engine.layers.policy`) choose a path, and returns a :class:`LayerPlan`;
nothing is computed yet. :mod:`convserve_server.engine.layers.conv_layer` executes the plan.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.layers import args, policy
from convserve_server.engine.layers.args import int_tuple
from convserve_server.engine.layers.pooling import PoolSpec, validate_pool

PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")
ACTIVATIONS: tuple[str, ...] = ("relu",)


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """Everything needed to compute one ConvLayer call, decided before any work.

    Attributes
    ----------
    x : ndarray
        The input with a batch axis, ``(N, C_in, *spatial)``, float32 or float64.
    w : ndarray
        The weight, ``(C_out, C_in / groups, *kernel)``, ``x``'s dtype.
    bias : ndarray or None
        ``(C_out,)`` in ``x``'s dtype.
    batched : bool
        Whether the caller's input had the batch axis (else the result drops it).
    strides, dilations : tuple of int
        One value per spatial dimension.
    pads : tuple of (int, int)
        Padding (before, after) per spatial dimension, ``"same"`` already split.
    padding_mode : str
        One of :data:`PADDING_MODES`.
    groups : int
        Channel groups.
    out_spatial : tuple of int
        The convolution's output spatial shape (before pooling).
    relu : bool
        Whether the ReLU follows the bias.
    pool : PoolSpec or None
        The checked max/avg pooling after the activation.
    problem : policy.Problem
        The shapes the path policy looked at.
    path : str
        The chosen path (one of :data:`.policy.PATHS`); only a non-finite input may still turn
        ``fft`` into :func:`.policy.fallback`'s path when the plan is executed.
    """

    x: NDArray[Any]
    w: NDArray[Any]
    bias: NDArray[Any] | None
    batched: bool
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    padding_mode: str
    groups: int
    out_spatial: tuple[int, ...]
    relu: bool
    pool: PoolSpec | None
    problem: policy.Problem
    path: str

    @property
    def nd(self) -> int:
        """Number of spatial dimensions."""
        return len(self.strides)


def resolve_padding(padding: object, nd: int, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
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


def _arrays(input: Any, weight: Any, bias: Any, groups: Any) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None, int, bool]:
    """Step 1: the input (given a batch axis), the weight, the bias and ``groups``, checked together."""
    x, w, _, batched = args.input_and_weight(input, weight, "(C_out, C_in/groups, *kernel)", "convolution")
    xb = x if batched else x[np.newaxis]
    c_in, c_out = xb.shape[1], w.shape[0]
    groups = args.groups_count(groups, c_in)
    if c_out % groups:
        raise InvalidArgumentError("groups", f"C_out ({c_out}) must be divisible by groups ({groups})")
    if w.shape[1] * groups != c_in:
        raise InvalidArgumentError(
            "weight",
            f"expected weight.shape[1] == C_in / groups = {c_in} / {groups} = {c_in // groups}, got weight of shape {w.shape} for input of shape {x.shape}",
        )
    b = args.bias_vector(bias, x.dtype, c_out)
    return xb, w, b, groups, batched


def _geometry(
    xb: NDArray[Any], w: NDArray[Any], stride: Any, padding: Any, dilation: Any, padding_mode: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...], tuple[int, ...]]:
    """Step 2: strides, dilations, pads, the padded input's and the output's spatial shapes.

    A pure function of the shapes and the options: memoised by them (:func:`_geometry_of`) when
    every option is a plain int, a tuple of plain ints or a string, so a repeated layer pays one
    dictionary lookup. Errors are never memoised.
    """
    key = (stride, padding, dilation, padding_mode)
    if all(_memoisable(v) for v in key):
        return _geometry_of(tuple(xb.shape), tuple(w.shape), *key)
    return _geometry_uncached(tuple(xb.shape), tuple(w.shape), *key)


def _memoisable(value: object) -> bool:
    """Whether an option may key the memo: a str, a plain int or a tuple of plain ints (no bool, no numpy)."""
    return type(value) in (int, str) or (type(value) is tuple and all(type(v) is int for v in value))


def _geometry_uncached(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any, dilation: Any, padding_mode: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...], tuple[int, ...]]:
    """The checks and the geometry of :func:`_geometry`, from the shapes."""
    nd = len(w_shape) - 2
    spatial = tuple(int(s) for s in x_shape[2:])
    kernel = tuple(int(k) for k in w_shape[2:])
    strides = int_tuple(stride, nd, "stride", "stride", 1)
    dilations = int_tuple(dilation, nd, "dilation", "dilation", 1)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise InvalidArgumentError("padding_mode", f"expected one of {list(PADDING_MODES)}, got {padding_mode!r}")
    pads = resolve_padding(padding, nd, kernel, strides, dilations)
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
    return strides, dilations, tuple(pads), padded, out_spatial


# Distinct layer geometries remembered (least recently used dropped): a few hundred bytes each.
MAX_GEOMETRIES = 4096
_geometry_of = functools.lru_cache(maxsize=MAX_GEOMETRIES)(_geometry_uncached)


def _activation(activation: str | None) -> bool:
    """Step 3: whether the ReLU runs (``None``, ``""`` and ``"none"``: no activation)."""
    if activation in ("", "none"):
        activation = None
    if activation is not None and activation not in ACTIVATIONS:
        raise InvalidArgumentError("activation", f"expected None or 'relu', got {activation!r}")
    return activation == "relu"


def _path(path: str, problem: policy.Problem) -> str:
    """Step 4: the path ``"auto"`` chooses by :func:`.policy.choose`, or the forced one if it can compute ``problem``."""
    if path not in ("auto",) + policy.PATHS:
        raise InvalidArgumentError("path", f"expected 'auto' or one of {list(policy.PATHS)}, got {path!r}")
    if path == "auto":
        return policy.choose(problem)
    if policy.eligible(path, problem):
        return path
    raise InvalidArgumentError("path", f"path {path!r} cannot compute this layer ({problem})")


def plan_layer(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    padding_mode: Any = "zeros",
    activation: str | None = None,
    pool: Any = None,
    path: str = "auto",
) -> LayerPlan:
    """Check a ConvLayer call and decide how to compute it (the arguments of ``conv_layer``).

    A call whose signature (:func:`_signature`: ndarrays of one float dtype, plain options, no
    pooling) passed every check before reuses that call's decisions: the shapes in the signature
    are the ones checked, so only the path is chosen again (its rules read the configuration
    and the calibration in force). A repeated layer's plan went from 15.6 to 5 us here.

    Raises
    ------
    InvalidArgumentError
        Any malformed or inconsistent argument (``.field`` names it), in argument order.
    """
    key = _signature(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool, path)
    decided = None if key is None else _DECIDED.get(key)
    if decided is None:
        plan = _plan(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool, path)
        if key is not None:  # only a call that passed every check is remembered
            if len(_DECIDED) >= MAX_SIGNATURES:
                _DECIDED.clear()
            _DECIDED[key] = (plan.batched, plan.strides, plan.dilations, plan.pads, plan.groups, plan.out_spatial, plan.relu, plan.problem)
        return plan
    batched, strides, dilations, pads, groups, out_spatial, relu, problem = decided
    xb = input if batched else input[np.newaxis]
    return LayerPlan(xb, weight, bias, batched, strides, dilations, pads, padding_mode, groups, out_spatial, relu, None, problem, _path(path, problem))


# Signatures of checked calls remembered (all dropped when full): a few hundred bytes each.
MAX_SIGNATURES = 4096
_DECIDED: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _signature(
    input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any, padding_mode: Any, activation: Any, pool: Any, path: Any
) -> tuple[Any, ...] | None:
    """The key of a call's decisions, or None when the call must be checked in full.

    Only plain calls have one: ``input``, ``weight`` and ``bias`` (or None) ndarrays of one
    dtype, float32 or float64; ``groups`` a plain int; the options plain ints, tuples of plain
    ints or strings; no pooling. Everything the checks read is then in the key.
    """
    if type(input) is not np.ndarray or type(weight) is not np.ndarray or pool is not None or type(groups) is not int:
        return None
    dtype = input.dtype
    if dtype not in _NATIVE_FLOATS or weight.dtype != dtype or (bias is not None and (type(bias) is not np.ndarray or bias.dtype != dtype)):
        return None
    options = (stride, padding, dilation, padding_mode, path)
    if not all(_memoisable(v) for v in options) or not (activation is None or type(activation) is str):
        return None
    return (input.shape, weight.shape, dtype.char, None if bias is None else bias.shape, groups, activation) + options


def _plan(
    input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any, padding_mode: Any, activation: Any, pool: Any, path: str
) -> LayerPlan:
    """:func:`plan_layer` in full: every check, in argument order."""
    xb, w, b, groups, batched = _arrays(input, weight, bias, groups)
    strides, dilations, pads, padded, out_spatial = _geometry(xb, w, stride, padding, dilation, padding_mode)
    relu = _activation(activation)
    pool_spec = None if pool is None else validate_pool(pool, out_spatial)
    problem = policy.Problem(
        dtype="float32" if xb.dtype.char == "f" else "float64",
        n=int(xb.shape[0]),
        c_in=int(xb.shape[1]),
        c_out=int(w.shape[0]),
        groups=groups,
        kernel=tuple(int(k) for k in w.shape[2:]),
        strides=strides,
        dilations=dilations,
        padded=padded,
        out_spatial=out_spatial,
    )
    chosen = _path(path, problem)
    return LayerPlan(xb, w, b, batched, strides, dilations, pads, padding_mode, groups, out_spatial, relu, pool_spec, problem, chosen)
