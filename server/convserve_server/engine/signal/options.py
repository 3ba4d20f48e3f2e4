"""Normalisation of the Convolve/Correlate options: names, aliases, axes and output dtype.

Every function raises :class:`InvalidArgumentError` naming the argument when a value is not
understood, so that all errors are found before any work starts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine.errors import InvalidArgumentError

MODES = ("full", "same", "valid", "circular")
METHODS = ("auto", "direct", "fft", "overlap_add")
BOUNDARIES = ("fill", "wrap", "symmetric", "reflect", "edge")
# Aliases that mean one thing only: numpy, scipy.signal and scipy.ndimage names.
BOUNDARY_ALIASES = {
    "constant": "fill",
    "circular": "wrap",
    "symm": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
}
SUPPORTED_DTYPES = tuple(
    np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)


def choose(value: Any, allowed: Sequence[str], field: str, aliases: dict[str, str] | None = None) -> str:
    """Return ``value`` lower-cased if it names one of ``allowed`` (or an alias of one)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(field, f"expected one of {', '.join(allowed)}; got {value!r}")
    name = value.lower()
    name = (aliases or {}).get(name, name)
    if name not in allowed:
        known = list(allowed) + sorted(aliases or {})
        raise InvalidArgumentError(field, f"expected one of {', '.join(known)}; got {value!r}")
    return name


def as_input(value: npt.ArrayLike, field: str) -> npt.NDArray[Any]:
    """Convert an array-like input, checking that its dtype is supported and it is not empty."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(field, f"cannot be converted to an array: {exc}") from exc
    if array.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dt.name for dt in SUPPORTED_DTYPES)
        raise InvalidArgumentError(field, f"dtype {array.dtype} is not supported; expected one of {names}")
    if array.size == 0:
        raise InvalidArgumentError(field, f"is empty (shape {array.shape}); convolution needs at least one element")
    return array


def normalize_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    """Return sorted non-negative axes of an ``ndim``-dimensional in1 (``None`` means all)."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    try:
        values = [int(a) for a in axes]
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError("axes", f"expected an int or a sequence of ints; got {axes!r}") from exc
    if any(not isinstance(a, (int, np.integer)) for a in axes):
        raise InvalidArgumentError("axes", f"expected integers; got {axes!r}")
    result = []
    for axis in values:
        if not -ndim <= axis < ndim:
            raise InvalidArgumentError("axes", f"axis {axis} is out of range for in1 with {ndim} dimensions")
        result.append(axis % ndim)
    if len(set(result)) != len(result):
        raise InvalidArgumentError("axes", f"axes must be unique; got {list(values)}")
    if not result:
        raise InvalidArgumentError("axes", "expected at least one axis to convolve over; got an empty list")
    return tuple(sorted(result))


def normalize_output_dtype(output_dtype: Any, natural: np.dtype[Any]) -> np.dtype[Any]:
    """Return the output dtype: scipy's ``natural`` one, or a requested one of the same kind or wider."""
    if output_dtype is None:
        return natural
    try:
        requested = np.dtype(output_dtype)
    except TypeError as exc:
        raise InvalidArgumentError("output_dtype", f"expected a numpy dtype; got {output_dtype!r}") from exc
    if requested not in SUPPORTED_DTYPES:
        names = ", ".join(dt.name for dt in SUPPORTED_DTYPES)
        raise InvalidArgumentError("output_dtype", f"dtype {requested} is not supported; expected one of {names}")
    if not np.can_cast(natural, requested, casting="same_kind"):
        raise InvalidArgumentError(
            "output_dtype",
            f"the result is {natural}; it cannot be given as {requested} without losing its kind "
            "(e.g. complex to real); ask for a dtype of the same kind or wider",
        )
    if not widens(natural, requested):
        raise InvalidArgumentError(
            "output_dtype",
            f"the result is {natural}; {requested} is narrower and would lose precision or overflow; ask for {natural} or a wider dtype of the same kind",
        )
    return requested


def widens(natural: np.dtype[Any], requested: np.dtype[Any]) -> bool:
    """Whether ``requested`` is ``natural`` or wider (an output dtype is accepted if of the same kind or wider).

    Floats and complex need a safe cast (float64 -> float16 is refused, never an overflow to
    inf). Integer results may change signedness at the same width or more (their range is
    checked exactly, with OUT_OF_RANGE naming a holder such as uint16 for an int16 result).
    """
    if np.can_cast(natural, requested, casting="safe"):
        return True
    integers = "iu"
    return natural.kind in integers and requested.kind in integers and requested.itemsize >= natural.itemsize


def normalize_fill_value(fill_value: Any, complex_ok: bool) -> complex | float:
    """Return the fill value as a float, or a complex when the computation is complex."""
    try:
        value = complex(fill_value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError("fill_value", f"expected a number; got {fill_value!r}") from exc
    if value.imag != 0 and not complex_ok:
        raise InvalidArgumentError("fill_value", f"a complex fill value {fill_value!r} needs complex inputs or output")
    return value if complex_ok else value.real


def output_shape(x_shape: Sequence[int], h_shape: Sequence[int], axes: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """Shape of a result: ``lengths`` on the convolved axes, broadcast sizes on the others."""
    shape = [max(a, b) for a, b in zip(x_shape, h_shape)]
    for axis, length in zip(axes, lengths):
        shape[axis] = length
    return shape
