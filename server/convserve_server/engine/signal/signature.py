"""What a Convolve/Correlate call's shapes, dtypes and options decide, checked once per signature.

A call's *signature* is its inputs' shapes and dtypes and its options (mode, method, axes,
boundary, fill value, output dtype, correlate). Everything that depends on the signature alone
(the option names, the axes, the kernel's alignment, the output window and shape, the output and
working dtypes) is validated and computed by :func:`call_shape` and memoised, so a repeated
signature pays one dictionary lookup instead of the checks. What depends on the values (integer
bounds, NaN/Inf, a kernel's separability) is the planner's, on every call. A bad signature raises
:class:`InvalidArgumentError` every time (errors are never memoised).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.signal.options import (
    BOUNDARIES,
    BOUNDARY_ALIASES,
    METHODS,
    MODES,
    SUPPORTED_DTYPES,
    choose,
    normalize_axes,
    normalize_fill_value,
    normalize_output_dtype,
    output_shape,
)

# Distinct signatures remembered (least recently used dropped): each entry is a few hundred bytes.
MAX_SIGNATURES = 4096


@dataclass(frozen=True)
class CallShape:
    """The signature-only part of a call's plan (see :class:`~convserve_server.engine.signal.planner.SignalPlan`)."""

    mode: str
    method: str
    boundary: str
    fill: complex | float
    scalar: bool  # both inputs 0-d: computed as length-1 signals, returned 0-d
    axes: tuple[int, ...]
    h_shape: tuple[int, ...]  # in2 aligned to in1's dimensions
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    extends: bool  # in1 is extended by the boundary (full/same modes, a boundary other than zero fill)
    out_dtype: np.dtype[Any]
    work_dtype: np.dtype[Any] | None  # None for integers: chosen from the values' bound
    exact: bool
    output_shape: tuple[int, ...]


def check_input(shape: tuple[int, ...], dtype: np.dtype[Any], field: str) -> None:
    """Refuse an unsupported dtype or an empty input (as ``options.as_input`` does for an array)."""
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dt.name for dt in SUPPORTED_DTYPES)
        raise InvalidArgumentError(field, f"dtype {dtype} is not supported; expected one of {names}")
    if 0 in shape:
        raise InvalidArgumentError(field, f"is empty (shape {shape}); convolution needs at least one element")


@functools.lru_cache(maxsize=MAX_SIGNATURES)
def call_shape(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype[Any],
    h_shape: tuple[int, ...],
    h_dtype: np.dtype[Any],
    mode: str,
    method: str,
    axes: Any,
    boundary: str,
    fill_value: Any,
    output_dtype: Any,
) -> CallShape:
    """Validate a call's signature and return what it decides (memoised; arguments must be hashable).

    Raises
    ------
    InvalidArgumentError
        Naming the argument, for every check that needs no values.
    """
    mode = choose(mode, MODES, "mode")
    method = choose(method, METHODS, "method")
    boundary = choose(boundary, BOUNDARIES, "boundary", BOUNDARY_ALIASES)
    check_input(x_shape, x_dtype, "in1")
    check_input(h_shape, h_dtype, "in2")
    scalar = not x_shape and not h_shape
    if scalar:
        x_shape, h_shape = (1,), (1,)
    natural = np.result_type(x_dtype, h_dtype)
    out_dtype = normalize_output_dtype(output_dtype, natural)
    complex_work = out_dtype.kind == "c" or natural.kind == "c"
    fill = normalize_fill_value(fill_value, complex_work)
    conv_axes = normalize_axes(axes, len(x_shape)) if x_shape else ()
    if not x_shape:
        raise InvalidArgumentError("in2", "in1 is a scalar but in2 is not; both must have the same dimensionality")
    h_shape = align_kernel_shape(x_shape, h_shape, conv_axes, axes is not None)
    sizes_x = [x_shape[a] for a in conv_axes]
    sizes_h = [h_shape[a] for a in conv_axes]
    starts, lengths = output_window(mode, sizes_x, sizes_h)
    extends = mode in ("full", "same") and (boundary != "fill" or fill != 0)
    if boundary != "fill" and fill != 0:  # numpy.pad refuses constant_values for its other modes too
        raise InvalidArgumentError("fill_value", f"only boundary='fill' uses a fill value; boundary={boundary!r} takes its values from in1")
    if mode == "circular" and (boundary != "fill" or fill != 0):
        raise InvalidArgumentError("boundary", "mode 'circular' is periodic by definition; leave boundary='fill', fill_value=0")
    if extends:
        if boundary == "reflect" and any(x_shape[a] == 1 and m > 1 for a, m in zip(conv_axes, sizes_h)):
            raise InvalidArgumentError("boundary", "'reflect' needs at least 2 samples on every convolved axis of in1")
        starts = [s + m - 1 for s, m in zip(starts, sizes_h)]
        x_shape = tuple(n + 2 * (h_shape[i] - 1) if i in conv_axes else n for i, n in enumerate(x_shape))
    exact = out_dtype.kind in "biu"
    if extends and boundary == "fill":  # a nonzero fill value widens in1 as numpy.pad's constant does
        x_dtype = np.result_type(x_dtype, np.asarray(fill).dtype)
    work = None if exact else float_work_dtype(x_dtype, h_dtype, out_dtype, complex_work)
    shape = () if scalar else tuple(output_shape(x_shape, h_shape, conv_axes, lengths))
    return CallShape(mode, method, boundary, fill, scalar, conv_axes, h_shape, tuple(starts), tuple(lengths), extends, out_dtype, work, exact, shape)


def align_kernel_shape(x_shape: tuple[int, ...], h_shape: tuple[int, ...], axes: tuple[int, ...], axes_given: bool) -> tuple[int, ...]:
    """``h``'s shape with x's number of dimensions; checks broadcasting on the axes not convolved.

    ``h`` has x's number of dimensions, or (with ``axes`` given) one per axis, laid on those axes
    with size 1 on the others.
    """
    if len(h_shape) != len(x_shape):
        if axes_given and len(h_shape) == len(axes):
            shape = [1] * len(x_shape)
            for axis, size in zip(axes, h_shape):
                shape[axis] = size
            h_shape = tuple(shape)
        else:
            expected = f"{len(x_shape)}" + (f" or len(axes) = {len(axes)}" if axes_given else "")
            raise InvalidArgumentError("in2", f"has {len(h_shape)} dimensions; expected the same dimensionality as in1 ({expected})")
    for axis in range(len(x_shape)):
        if axis not in axes and x_shape[axis] != h_shape[axis] and 1 not in (x_shape[axis], h_shape[axis]):
            raise InvalidArgumentError(
                "in2",
                f"size {h_shape[axis]} on axis {axis}, which is not convolved, does not match in1's size {x_shape[axis]}; expected equal sizes or 1",
            )
    return h_shape


def output_window(mode: str, sizes_x: list[int], sizes_h: list[int]) -> tuple[list[int], list[int]]:
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


def float_work_dtype(a: np.dtype[Any], b: np.dtype[Any], out: np.dtype[Any], complex_work: bool) -> np.dtype[Any]:
    """Single precision when the output and both inputs are at most single; double otherwise."""
    small = {"f2", "f4", "c8", "b1", "u1", "i1", "u2", "i2"}
    single = out.itemsize <= (8 if out.kind == "c" else 4) and all(f"{d.kind}{d.itemsize}" in small for d in (a, b))
    if complex_work:
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)
