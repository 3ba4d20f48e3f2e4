"""The pure part of a Convolve/Correlate call: validated shapes, dtypes and the method to run.

``plan_signal_call`` reads the inputs' shapes and dtypes (and, for exactness and NaN checks,
their values) and returns a :class:`SignalPlan`; nothing is computed yet. Every bad argument is
found here, before any work starts. ``auto`` is a pure function of shapes, dtypes and options
(and the kernel's separability): the method of least predicted time by :mod:`convserve_server.engine.signal.cost_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine.signal import cost_model, direct_fast, integers
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.signal.options import (
    BOUNDARIES,
    BOUNDARY_ALIASES,
    METHODS,
    MODES,
    as_input,
    choose,
    normalize_axes,
    normalize_fill_value,
    normalize_output_dtype,
    output_shape,
)


@dataclass
class SignalPlan:
    """Everything needed to compute one call, decided before any work."""

    x: npt.NDArray[Any]  # in1, boundary-extended when the boundary needs it
    h: npt.NDArray[Any]  # in2 broadcast to x's ndim, flipped and conjugated for correlate
    axes: tuple[int, ...]
    mode: str
    starts: list[int]  # per axis: first full-convolution index of the output
    lengths: list[int]  # per axis: output length
    out_dtype: np.dtype[Any]
    work_dtype: np.dtype[Any]
    method: str
    exact_integer: bool
    output_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)


def plan_signal_call(
    in1: npt.ArrayLike,
    in2: npt.ArrayLike,
    mode: str,
    method: str,
    axes: Any,
    boundary: str,
    fill_value: Any,
    output_dtype: Any,
    correlate: bool,
) -> SignalPlan:
    """Validate a call and decide how to compute it (see ``engine.convolve`` for the arguments)."""
    mode = choose(mode, MODES, "mode")
    method = choose(method, METHODS, "method")
    boundary = choose(boundary, BOUNDARIES, "boundary", BOUNDARY_ALIASES)
    x = as_input(in1, "in1")
    h = as_input(in2, "in2")
    scalar = x.ndim == 0 and h.ndim == 0
    if scalar:
        x, h = x.reshape(1), h.reshape(1)
    natural = np.result_type(x.dtype, h.dtype)
    out_dtype = normalize_output_dtype(output_dtype, natural)
    complex_work = out_dtype.kind == "c" or natural.kind == "c"
    fill = normalize_fill_value(fill_value, complex_work)
    conv_axes = normalize_axes(axes, x.ndim) if x.ndim else ()
    if x.ndim == 0:
        raise InvalidArgumentError("in2", "in1 is a scalar but in2 is not; both must have the same dimensionality")
    h = _align_kernel(x, h, conv_axes, axes is not None)
    if correlate:
        h = np.flip(h, axis=conv_axes)
        if h.dtype.kind == "c":
            h = np.conj(h)
    sizes_x = [x.shape[a] for a in conv_axes]
    sizes_h = [h.shape[a] for a in conv_axes]
    starts, lengths = _output_window(mode, sizes_x, sizes_h)
    needs_extension = mode in ("full", "same") and (boundary != "fill" or fill != 0)
    if mode == "circular" and (boundary != "fill" or fill != 0):
        raise InvalidArgumentError("boundary", "mode 'circular' is periodic by definition; leave boundary='fill', fill_value=0")
    if needs_extension:
        x = _extend(x, conv_axes, sizes_h, boundary, fill)
        starts = [s + m - 1 for s, m in zip(starts, sizes_h)]
    exact = out_dtype.kind in "biu"
    plan_warnings: list[str] = []
    bound = 0.0
    if exact:
        bound = integers.worst_case_bound(x, h)
        work = integers.accumulator_for(bound, out_dtype, x.dtype.kind in "bu" and h.dtype.kind in "bu")
    else:
        work = _float_work_dtype(x.dtype, h.dtype, out_dtype, complex_work)
    shape = output_shape(x.shape, h.shape, conv_axes, lengths)
    chosen = _choose_method(method, mode, x, h, conv_axes, lengths, exact, bound, work, plan_warnings)
    return SignalPlan(
        x=x,
        h=h,
        axes=conv_axes,
        mode=mode,
        starts=starts,
        lengths=lengths,
        out_dtype=out_dtype,
        work_dtype=work,
        method=chosen,
        exact_integer=exact,
        output_shape=() if scalar else tuple(shape),
        warnings=plan_warnings,
    )


def _align_kernel(x: npt.NDArray[Any], h: npt.NDArray[Any], axes: tuple[int, ...], axes_given: bool) -> npt.NDArray[Any]:
    """Give ``h`` x's number of dimensions and check broadcasting on the axes not convolved.

    ``h`` has x's number of dimensions, or (with ``axes`` given) one per axis, laid on those axes
    with size 1 on the others.
    """
    if h.ndim != x.ndim:
        if axes_given and h.ndim == len(axes):
            shape = [1] * x.ndim
            for axis, size in zip(axes, h.shape):
                shape[axis] = size
            h = h.reshape(shape)
        else:
            expected = f"{x.ndim}" + (f" or len(axes) = {len(axes)}" if axes_given else "")
            raise InvalidArgumentError("in2", f"has {h.ndim} dimensions; expected the same dimensionality as in1 ({expected})")
    for axis in range(x.ndim):
        if axis not in axes and x.shape[axis] != h.shape[axis] and 1 not in (x.shape[axis], h.shape[axis]):
            raise InvalidArgumentError(
                "in2",
                f"size {h.shape[axis]} on axis {axis}, which is not convolved, does not match in1's size {x.shape[axis]}; expected equal sizes or 1",
            )
    return h


def _output_window(mode: str, sizes_x: list[int], sizes_h: list[int]) -> tuple[list[int], list[int]]:
    """First full-convolution index and length of the output on each convolved axis."""
    if mode == "full":
        return [0] * len(sizes_x), [n + m - 1 for n, m in zip(sizes_x, sizes_h)]
    if mode == "same":
        return [(m - 1) // 2 for m in sizes_h], list(sizes_x)
    if mode == "circular":
        if any(m > n for n, m in zip(sizes_x, sizes_h)):
            raise InvalidArgumentError("in2", f"shape {sizes_h} is longer than in1 {sizes_x} on a convolved axis; mode 'circular' needs in2 no longer than in1")
        return [0] * len(sizes_x), list(sizes_x)
    x_larger = all(n >= m for n, m in zip(sizes_x, sizes_h))
    h_larger = all(m >= n for n, m in zip(sizes_x, sizes_h))
    if not (x_larger or h_larger):
        raise InvalidArgumentError(
            "in2",
            f"for 'valid' mode, one must be at least as large as the other in every dimension; in1 is {sizes_x} and in2 is {sizes_h} on the convolved axes",
        )
    return [min(n, m) - 1 for n, m in zip(sizes_x, sizes_h)], [abs(n - m) + 1 for n, m in zip(sizes_x, sizes_h)]


_PAD_MODE = {"fill": "constant", "wrap": "wrap", "symmetric": "symmetric", "reflect": "reflect", "edge": "edge"}


def _extend(x: npt.NDArray[Any], axes: tuple[int, ...], sizes_h: list[int], boundary: str, fill: complex | float) -> npt.NDArray[Any]:
    """Extend ``x`` by M-1 samples on both sides of each convolved axis, as numpy.pad names it."""
    pad = [(0, 0)] * x.ndim
    for axis, m in zip(axes, sizes_h):
        pad[axis] = (m - 1, m - 1)
    if boundary == "reflect" and any(x.shape[a] == 1 and m > 1 for a, m in zip(axes, sizes_h)):
        raise InvalidArgumentError("boundary", "'reflect' needs at least 2 samples on every convolved axis of in1")
    if boundary == "fill":
        dtype = np.result_type(x.dtype, np.asarray(fill).dtype) if fill != 0 else x.dtype
        return np.pad(x.astype(dtype, copy=False), pad, mode="constant", constant_values=fill)
    return np.pad(x, pad, mode=_PAD_MODE[boundary])  # type: ignore[call-overload]


def _float_work_dtype(a: np.dtype[Any], b: np.dtype[Any], out: np.dtype[Any], complex_work: bool) -> np.dtype[Any]:
    """Single precision when the output and both inputs are at most single; double otherwise."""
    small = {"f2", "f4", "c8", "b1", "u1", "i1", "u2", "i2"}
    single = out.itemsize <= (8 if out.kind == "c" else 4) and all(f"{d.kind}{d.itemsize}" in small for d in (a, b))
    if complex_work:
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)


def _choose_method(
    method: str,
    mode: str,
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: tuple[int, ...],
    lengths: list[int],
    exact: bool,
    bound: float,
    work: np.dtype[Any],
    notes: list[str],
) -> str:
    """Resolve ``auto`` with the cost model and keep integer results exact and NaN local."""
    sizes = [(x.shape[a], h.shape[a]) for a in axes]
    fft_size = math.prod(fast_length(n + m - 1) for n, m in sizes)
    if exact and method in ("fft", "overlap_add", "auto") and not integers.fft_is_exact(x, h, fft_size):
        if method != "auto":
            notes.append(f"method '{method}' cannot give exact integers at this range; ran 'direct' instead")
        return "direct"
    if method != "auto":
        if method != "direct" and not (exact or _finite(x, h)):
            notes.append(f"an input holds NaN or Inf; method '{method}' spreads it over the output (use 'direct' to keep it local)")
        if method == "overlap_add" and mode == "circular":
            notes.append("overlap-add does not apply to circular mode; ran 'fft'")
            return "fft"
        return method
    chosen = fastest(mode, x.shape, h, axes, lengths, exact, bound < direct_fast.EXACT_FLOAT64, work)
    if chosen != "direct" and not (exact or _finite(x, h)):
        notes.append("an input holds NaN or Inf; ran 'direct' to keep it local")
        return "direct"
    return chosen


def _finite(x: npt.NDArray[Any], h: npt.NDArray[Any]) -> bool:
    """Whether both inputs are free of NaN and Inf (checked only when an FFT would run)."""
    return bool(np.isfinite(h).all()) and bool(np.isfinite(x).all())


def fastest(
    mode: str,
    x_shape: tuple[int, ...],
    h: npt.NDArray[Any] | tuple[int, ...],
    axes: tuple[int, ...],
    lengths: list[int],
    exact: bool,
    integer_ok: bool,
    work: np.dtype[Any],
) -> str:
    """The method of least predicted time (``auto``'s choice before the exactness and NaN rules).

    ``h`` is the aligned kernel, or only its shape (see :func:`predict_method`).
    """
    h_shape = tuple(h.shape) if isinstance(h, np.ndarray) else tuple(h)
    sizes = [(x_shape[a], h_shape[a]) for a in axes]
    batch = math.prod(max(x_shape[a], h_shape[a]) for a in range(len(x_shape)) if a not in axes)
    c = cost_model.constants()
    fft_work = np.dtype(np.float64) if exact else work
    predicted = {
        "direct": cost_model.direct_cost(x_shape, h, axes, lengths, batch, fft_work, integer_ok, c),
        "fft": cost_model.fft_cost(batch, sizes, fft_work, c),
    }
    if mode != "circular" and len(sizes) == 1:  # measured: blocking one axis of an image loses to a whole FFT
        predicted["overlap_add"] = cost_model.overlap_add_cost(batch, sizes, fft_work, c)
    return min(predicted, key=lambda name: predicted[name])


@dataclass
class Prediction:
    """What a call will run, predicted from its declared shapes and dtypes (no data)."""

    method: str
    work_dtype: np.dtype[Any]  # the transforms' or sums' dtype (float64 for exact integers on an FFT)
    out_dtype: np.dtype[Any]
    x_shape: tuple[int, ...]  # in1 after boundary extension, in2 aligned to its dimensions
    h_shape: tuple[int, ...]
    axes: tuple[int, ...]
    lengths: list[int]


def predict_method(
    shape1: tuple[int, ...],
    shape2: tuple[int, ...],
    dtype1: np.dtype[Any],
    dtype2: np.dtype[Any],
    mode: str,
    method: str,
    axes: Any,
    extends: bool,
    output_dtype: Any,
) -> Prediction:
    """The method a call of these shapes and dtypes will run, for a memory estimate from headers.

    The same rules as :func:`plan_signal_call` and the same cost model, with what needs the data
    taken the conservative way: the kernel counts as not separable, integers as exact in float64
    sums only when the dtypes' worst case is below 2^53. The data-dependent rules (inexact FFT
    for integers, NaN) only ever switch to ``direct``, which needs less memory than predicted.
    ``extends``: the boundary extends in1 (a boundary other than zero fill, full/same modes).

    Raises
    ------
    InvalidArgumentError
        When the shapes or options are invalid (the call itself will be refused too).
    """
    mode = choose(mode, MODES, "mode")
    method = choose(method, METHODS, "method")
    ndim = max(len(shape1), len(shape2), 1)
    x_shape = tuple(shape1) or (1,)
    conv_axes = normalize_axes(axes, len(x_shape))
    h_shape = tuple(shape2) or (1,)
    if len(h_shape) != len(x_shape):
        if axes is not None and len(h_shape) == len(conv_axes):
            aligned = [1] * len(x_shape)
            for axis, size in zip(conv_axes, h_shape):
                aligned[axis] = size
            h_shape = tuple(aligned)
        else:
            raise InvalidArgumentError("in2", f"has {len(h_shape)} dimensions; in1 has {ndim}")
    natural = np.result_type(dtype1, dtype2)
    out_dtype = normalize_output_dtype(output_dtype, natural)
    sizes_h = [h_shape[a] for a in conv_axes]
    _, lengths = _output_window(mode, [x_shape[a] for a in conv_axes], sizes_h)
    if extends and mode in ("full", "same"):
        x_shape = tuple(n + 2 * (sizes_h[conv_axes.index(i)] - 1) if i in conv_axes else n for i, n in enumerate(x_shape))
    exact = out_dtype.kind in "biu"
    complex_work = out_dtype.kind == "c" or natural.kind == "c"
    work: np.dtype[Any]
    if exact:
        worst = _dtype_max(dtype1) * _dtype_max(dtype2) * math.prod(min(x_shape[a], h_shape[a]) for a in conv_axes)
        integer_ok = worst < direct_fast.EXACT_FLOAT64
        work = np.dtype(np.int64)
    else:
        integer_ok = True
        work = _float_work_dtype(np.dtype(dtype1), np.dtype(dtype2), out_dtype, complex_work)
    if method == "auto":
        chosen = fastest(mode, x_shape, h_shape, conv_axes, lengths, exact, integer_ok, work)
    else:
        chosen = "fft" if method == "overlap_add" and mode == "circular" else method
    if exact and chosen != "direct":
        work = np.dtype(np.float64)
    return Prediction(chosen, work, out_dtype, x_shape, h_shape, conv_axes, lengths)


def _dtype_max(dtype: np.dtype[Any]) -> float:
    """Largest magnitude of an integer or bool dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    info = np.iinfo(dtype)
    return float(max(abs(int(info.min)), int(info.max)))
