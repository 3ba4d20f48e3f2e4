"""The transposed convolution ("deconvolution"), numerically ``torch.nn.functional.conv_transposeNd``.

It runs as ordinary convolution layers
(:func:`convserve_server.engine.layers.conv_layer.conv_layer`, and so at its speed).
By definition, input sample ``i`` times tap ``k`` lands on output ``stride * i + dilation * k -
padding``. The textbook route inserts ``stride - 1`` zeros between input samples and correlates
with the flipped kernel, which wastes all but ``1 / stride**nd`` of the multiplications on those
zeros. Here the output is split by phase instead (sub-pixel decomposition): the outputs ``o``
with ``o % stride == r`` only see the taps ``k`` with ``(dilation * k - r - padding) % stride ==
0``, and they form an ordinary dilated correlation of the un-stretched input with those taps,
flipped. So each of the ``stride**nd`` phases is one conv_layer call on the (padded or cropped)
input, with input and output channels swapped within each group, and the results interleave.

The per-phase weights depend only on the weight, ``groups`` and the taps; with a ``prepared``
store (the registered-weights cache hands one in) each is made once. The convolution layer's own
prepared forms of them go into the same store under keys of their own.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import cancellation
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.info import CallInfo, nonfinite_warnings
from convserve_server.engine.layers import args
from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.args import int_tuple

# Keys of this module in a ``prepared`` store: (PREFIX, groups, taps) holds a phase's weight and
# (PREFIX, groups, taps, key) the convolution layer's forms of it (never those of the weight itself).
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
        return [k[n] for k in list(self._store) if isinstance(k, tuple) and len(k) == n + 1 and k[:n] == self._prefix]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int) -> int:
    """Spatial output size of one axis: ``(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def swapped_weight(w: NDArray[Any], groups: int) -> NDArray[Any]:
    """The weight with input and output channels swapped per group: ``(C_out, C_in/groups, *k)``.

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
    grouped = w.reshape((groups, cig, cog) + kernel).swapaxes(1, 2)  # (G, C_out/G, C_in/G, *k)
    return grouped.reshape((groups * cog, cig) + kernel)


@dataclass(frozen=True)
class _Phase:
    """One phase of one axis: outputs ``r, r + stride, ...``; the taps they see, flipped."""

    residue: int
    count: int  # outputs in the phase
    taps: tuple[int, ...]  # tap indices, last first (the flip)
    step: int  # the phase's dilation: input distance between consecutive taps
    start: int  # input index under the first flipped tap for the phase's first output


def _phases(size: int, kernel: int, stride: int, padding: int, dilation: int, out: int) -> list[_Phase]:
    """The phases of one axis (those with at least one output)."""
    phases = []
    for r in range(min(stride, out)):
        taps = [k for k in range(kernel) if (dilation * k - r - padding) % stride == 0]
        count = (out - r + stride - 1) // stride
        if not taps:
            phases.append(_Phase(r, count, (), 1, 0))
            continue
        offsets = [(dilation * k - r - padding) // stride for k in taps]  # output m sees input m - offset
        step = offsets[1] - offsets[0] if len(taps) > 1 else 1
        phases.append(_Phase(r, count, tuple(reversed(taps)), step, -offsets[-1]))
    return phases


def _window(xb: NDArray[Any], phases: tuple[_Phase, ...]) -> NDArray[Any]:
    """The input a phase correlates: indices ``start .. start + count - 1 + step * (taps - 1)`` per axis, zeros outside."""
    lengths = tuple(ph.count + ph.step * (len(ph.taps) - 1) for ph in phases)
    inside = all(0 <= ph.start and ph.start + n <= size for ph, n, size in zip(phases, lengths, xb.shape[2:]))
    if inside:
        return xb[(slice(None), slice(None)) + tuple(slice(ph.start, ph.start + n) for ph, n in zip(phases, lengths))]
    window = np.zeros(xb.shape[:2] + lengths, dtype=xb.dtype)
    source: list[slice] = [slice(None), slice(None)]
    target: list[slice] = [slice(None), slice(None)]
    for ph, n, size in zip(phases, lengths, xb.shape[2:]):
        first, last = max(0, ph.start), min(size, ph.start + n)
        if last <= first:
            return window  # this phase sees only zeros
        source.append(slice(first, last))
        target.append(slice(first - ph.start, last - ph.start))
    window[tuple(target)] = xb[tuple(source)]
    return window


@overload
def conv_transpose(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    output_padding: Any = ...,
    groups: int = ...,
    dilation: Any = ...,
    return_info: Literal[False] = ...,
    prepared: MutableMapping[Any, Any] | None = ...,
) -> NDArray[Any]: ...
@overload
def conv_transpose(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    output_padding: Any = ...,
    groups: int = ...,
    dilation: Any = ...,
    *,
    return_info: Literal[True],
    prepared: MutableMapping[Any, Any] | None = ...,
) -> tuple[NDArray[Any], CallInfo]: ...
@overload
def conv_transpose(
    input: Any,
    weight: Any,
    bias: Any = ...,
    stride: Any = ...,
    padding: Any = ...,
    output_padding: Any = ...,
    groups: int = ...,
    dilation: Any = ...,
    return_info: bool = ...,
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
        Also return a :class:`~convserve_server.engine.info.CallInfo`.
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
    plan = plan_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return execute(plan, prepared, return_info)


@dataclass(frozen=True, eq=False)
class TransposePlan:
    """Everything needed to compute one transposed convolution, decided before any work.

    Attributes
    ----------
    x : ndarray
        The input with a batch axis, ``(N, C_in, *spatial)``.
    w : ndarray
        The weight, ``(C_in, C_out / groups, *kernel)``, ``x``'s dtype.
    bias : ndarray or None
        ``(C_out,)`` in ``x``'s dtype.
    batched : bool
        Whether the caller's input had the batch axis.
    groups, c_out : int
        Channel groups and output channels.
    strides : tuple of int
        One value per spatial dimension.
    out_spatial : tuple of int
        The output's spatial shape.
    phases : tuple of tuple of _Phase
        Per spatial dimension, its phases (those with at least one output).
    """

    x: NDArray[Any]
    w: NDArray[Any]
    bias: NDArray[Any] | None
    batched: bool
    groups: int
    c_out: int
    strides: tuple[int, ...]
    out_spatial: tuple[int, ...]
    phases: tuple[tuple[_Phase, ...], ...]


def plan_transpose(
    input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, output_padding: Any = 0, groups: Any = 1, dilation: Any = 1
) -> TransposePlan:
    """Check a transposed convolution's arguments (those of :func:`conv_transpose`) and split it into phases.

    Raises
    ------
    InvalidArgumentError
        Any malformed or inconsistent argument (``.field`` names it), in argument order.
    """
    x, w, _, batched = args.input_and_weight(input, weight, "(C_in, C_out/groups, *kernel)", "transposed convolution")
    xb = x if batched else x[np.newaxis]
    c_in = xb.shape[1]
    groups = args.groups_count(groups, c_in)
    if w.shape[0] != c_in:
        raise InvalidArgumentError(
            "weight",
            f"expected weight.shape[0] == C_in = {c_in} (weight is (C_in, C_out/groups, *kernel)), got weight of shape {w.shape} for input of shape {x.shape}",
        )
    c_out = w.shape[1] * groups
    b = args.bias_vector(bias, x.dtype, c_out)
    spatial = tuple(int(s) for s in xb.shape[2:])
    kernel = tuple(int(k) for k in w.shape[2:])
    strides, dilations, pads, out_spatial = _geometry(spatial, kernel, stride, padding, output_padding, dilation)
    phases = tuple(tuple(_phases(*a)) for a in zip(spatial, kernel, strides, pads, dilations, out_spatial))
    return TransposePlan(xb, w, b, batched, groups, c_out, strides, out_spatial, phases)


def _geometry(
    spatial: tuple[int, ...], kernel: tuple[int, ...], stride: Any, padding: Any, output_padding: Any, dilation: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Strides, dilations, pads and the output's spatial shape, checked (torch's rules)."""
    nd = len(kernel)
    strides = int_tuple(stride, nd, "stride", "stride", 1)
    dilations = int_tuple(dilation, nd, "dilation", "dilation", 1)
    pads = int_tuple(padding, nd, "padding", "padding", 0)
    extras = int_tuple(output_padding, nd, "output_padding", "output_padding", 0)
    for op, s, d in zip(extras, strides, dilations):
        if op >= s and op >= d:
            raise InvalidArgumentError(
                "output_padding",
                f"output_padding must be smaller than either stride or dilation, got output_padding {extras}, stride {strides}, dilation {dilations}",
            )
    out_spatial = tuple(output_size(*a) for a in zip(spatial, kernel, strides, pads, extras, dilations))
    if any(o < 1 for o in out_spatial):
        raise InvalidArgumentError(
            "padding",
            f"the output would be empty: input {spatial}, kernel {kernel}, stride {strides}, padding {pads}, "
            f"output_padding {extras}, dilation {dilations} give output size {out_spatial}",
        )
    return strides, dilations, pads, out_spatial


def execute(plan: TransposePlan, prepared: MutableMapping[Any, Any] | None = None, return_info: bool = False) -> NDArray[Any] | tuple[NDArray[Any], CallInfo]:
    """Run a :class:`TransposePlan`: one convolution layer per phase, interleaved into the output."""
    started = time.perf_counter()
    swapped = swapped_weight(plan.w, plan.groups)
    nd = len(plan.strides)
    out = np.empty((plan.x.shape[0], plan.c_out) + plan.out_spatial, dtype=plan.x.dtype)
    method = ""
    for phase in itertools.product(*plan.phases):
        cancellation.check()
        target = (slice(None), slice(None)) + tuple(slice(ph.residue, None, s) for ph, s in zip(phase, plan.strides))
        if not all(ph.taps for ph in phase):  # no tap reaches these outputs: only the bias
            out[target] = 0 if plan.bias is None else plan.bias.reshape((plan.c_out,) + (1,) * nd)
            continue
        out[target], phase_method = _run_phase(plan, phase, swapped, prepared)
        method = method or phase_method
    if not plan.batched:
        out = out[0]
    elapsed = time.perf_counter() - started
    if return_info:
        return out, CallInfo(method=method or "bias_only", compute_seconds=elapsed, warnings=tuple(nonfinite_warnings(out)))
    return out


def _run_phase(plan: TransposePlan, phase: tuple[_Phase, ...], swapped: NDArray[Any], prepared: MutableMapping[Any, Any] | None) -> tuple[NDArray[Any], str]:
    """One phase's outputs by :func:`conv_layer` (its weight kept in ``prepared``) and the path that ran."""
    taps = tuple(ph.taps for ph in phase)
    key = (PREFIX, plan.groups, taps)
    stored: Any = None if prepared is None else prepared.get(key)
    if isinstance(stored, np.ndarray) and stored.dtype == plan.w.dtype and stored.shape[:2] == swapped.shape[:2]:
        sub = stored
    else:
        sub = np.ascontiguousarray(swapped[(slice(None), slice(None)) + np.ix_(*taps)])
        if prepared is not None:
            prepared[key] = sub
    store = None if prepared is None else _Prefixed(prepared, key)
    window, dilation = _window(plan.x, phase), tuple(ph.step for ph in phase)
    result, info = conv_layer(window, sub, plan.bias, stride=1, padding=0, groups=plan.groups, dilation=dilation, return_info=True, prepared=store)
    return result, info.method


def sizes(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    groups: int,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[tuple[int, ...], int]:
    """The output shape, and a bound on the elements of the largest phase's input, from shapes alone.

    For checks before admission; the arguments must already be one value per spatial dimension.
    ``input_shape`` may be batched or not.
    """
    nd = len(weight_shape) - 2
    lead, spatial, kernel = input_shape[: -nd - 1], input_shape[-nd:], weight_shape[2:]
    out = tuple(output_size(*a) for a in zip(spatial, kernel, stride, padding, output_padding, dilation))
    lengths = [-(-o // s) - (-(d * (k - 1)) // s) for o, k, s, d in zip(out, kernel, stride, dilation)]
    return lead + (weight_shape[1] * groups,) + out, math.prod(input_shape[:-nd]) * math.prod(lengths)
