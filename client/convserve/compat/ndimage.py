"""``convserve.compat.ndimage``: ``scipy.ndimage.convolve`` and ``correlate``, computed on the service.

Same arguments, defaults, centring and dtypes as ``scipy.ndimage`` (the result has the input's
dtype unless ``output`` says otherwise; complex weights or input give a complex result). How it
maps onto the service, exactly:

- ``mode``: ndimage's ``reflect`` (and ``grid-mirror``) is the service's ``symmetric``, ``mirror``
  its ``reflect``, ``nearest`` its ``edge``, ``wrap``/``grid-wrap`` its ``wrap`` and
  ``constant``/``grid-constant`` its ``fill`` with ``cval``.
- ``origin`` and the centring of even kernels (which differs from ``scipy.signal``'s ``same``) are
  zeros added to the kernel, so the service's ``same`` window lands where ndimage's does; only
  the kernel grows, never the data sent or received.
- Weights are taken in float64 as ndimage takes them, and those of magnitude at most 2**-52 are
  dropped as ndimage drops them. Integral weights on integer images are sent as integers and the
  sum is exact; other sums are float64, truncated toward zero for an integer output as ndimage does
  (a sum that lands within rounding error of an integer may then differ by one from ndimage's,
  whose summation order differs).

Deviations, on purpose: an integer result that does not fit the output dtype raises
:class:`convserve.OutOfRangeError` naming a dtype that holds it, where ndimage wraps around
silently (``uint8`` images!); a ``bool`` output holds what ``uint8`` holds, as ndimage stores a
byte (outside 0..255: OUT_OF_RANGE), then is true where nonzero; NaN or Inf into an integer
output is OUT_OF_RANGE too (ndimage stores garbage); float16 input is computed (ndimage refuses it).

Examples
--------
>>> from convserve.compat import ndimage                                    # doctest: +SKIP
>>> blurred = ndimage.convolve(image, np.ones((4, 4)) / 16, mode="nearest")  # doctest: +SKIP
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve.compat._config import lease
from convserve.errors import OutOfRangeError

MODES = {
    "reflect": "symmetric",
    "grid-mirror": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "grid-wrap": "wrap",
    "constant": "fill",
    "grid-constant": "fill",
}
EPSILON = np.finfo(np.float64).eps  # ndimage leaves out weights of at most this magnitude


def correlate(
    input: npt.ArrayLike,
    weights: npt.ArrayLike,
    output: npt.NDArray[Any] | npt.DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int | Sequence[int] = 0,
    *,
    axes: int | Sequence[int] | None = None,
) -> npt.NDArray[Any]:
    """Multidimensional correlation, as ``scipy.ndimage.correlate``.

    Parameters
    ----------
    input : array_like
        The image or volume.
    weights : array_like
        As many dimensions as ``input`` (or as ``axes``); complex weights are conjugated, as ndimage.
    output : numpy.ndarray or dtype, optional
        An array of input's shape to fill (and return), or the result dtype (default: input's).
    mode : {"reflect", "constant", "nearest", "mirror", "wrap"}
        How input is extended, as ndimage (``grid-mirror``, ``grid-constant``, ``grid-wrap`` too).
    cval : scalar
        The value outside input for ``constant``.
    origin : int or sequence of int
        Shift of the kernel's centre, per axis of ``axes``; ``-(m // 2) <= origin <= (m - 1) // 2``.
    axes : int or sequence of int, optional
        Axes to filter (default: all).

    Returns
    -------
    numpy.ndarray
        ``output`` itself when it is an array.

    Raises
    ------
    convserve.OutOfRangeError
        An integer result does not fit the output dtype (ndimage wraps it around).
    ValueError, RuntimeError
        Where ndimage raises them: a bad origin, mode, output shape or weights dimensionality.
    """
    return _filter(False, input, weights, output, mode, cval, origin, axes)


def convolve(
    input: npt.ArrayLike,
    weights: npt.ArrayLike,
    output: npt.NDArray[Any] | npt.DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int | Sequence[int] = 0,
    *,
    axes: int | Sequence[int] | None = None,
) -> npt.NDArray[Any]:
    """Multidimensional convolution, as ``scipy.ndimage.convolve`` (arguments as :func:`correlate`).

    The kernel is flipped (not conjugated) and, on axes of even length, centred one sample
    earlier than ``scipy.signal.convolve(..., "same")`` centres it, exactly as ndimage does.
    """
    return _filter(True, input, weights, output, mode, cval, origin, axes)


def check_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    """``axes`` as non-negative ints, checked as ndimage checks them."""
    if axes is None:
        return tuple(range(ndim))
    if not isinstance(axes, Iterable):
        try:
            axes = (operator.index(axes),)
        except TypeError as exc:
            raise ValueError("axes must be an integer, iterable of integers, or None") from exc
    result = []
    for axis in axes:
        axis = operator.index(axis)
        if axis < -ndim or axis > ndim - 1:
            raise ValueError(f"specified axis: {axis} is out of range")
        result.append(axis % ndim)
    if len(set(result)) != len(result):
        raise ValueError("axes must be unique")
    return tuple(result)


def kernel_padding(size: int, origin: int) -> tuple[int, int]:
    """Zeros before and after a kernel of ``size`` so that a centre ``size // 2 + origin`` becomes the ``same`` window's.

    The service's correlate ``same`` window of a kernel of ``m`` taps with ``s`` zeros in front is
    centred on tap ``m // 2 - s``; this returns the fewest zeros that put it on the wanted tap.
    """
    if origin > 0:
        return 0, 2 * origin - size % 2
    if origin < 0:
        return -2 * origin - (1 - size % 2), 0
    return 0, 0


def output_array(output: Any, input: npt.NDArray[Any], complex_output: bool) -> npt.NDArray[Any]:
    """The array the result goes into, as ndimage's ``_get_output`` makes it."""
    shape = input.shape
    if output is None:
        dtype = np.promote_types(input.dtype, np.complex64) if complex_output else np.dtype(input.dtype.name)  # native order, as ndimage
        return np.zeros(shape, dtype=dtype)
    if isinstance(output, (type, np.dtype)):
        if complex_output and np.dtype(output).kind != "c":
            warnings.warn("promoting specified output dtype to complex", stacklevel=4)
            output = np.promote_types(output, np.complex64)
        return np.zeros(shape, dtype=output)
    if isinstance(output, str):
        dtype = np.dtype(output)
        if complex_output and dtype.kind != "c":
            raise RuntimeError("output must have complex dtype")
        if not issubclass(dtype.type, np.number):
            raise RuntimeError("output must have numeric dtype")
        return np.zeros(shape, dtype=dtype)
    array = np.asarray(output)
    if array.shape != shape:
        raise RuntimeError("output shape not correct")
    if complex_output and array.dtype.kind != "c":
        raise RuntimeError("output must have complex dtype")
    return array


def _filter(convolution: bool, input: Any, weights: Any, output: Any, mode: Any, cval: Any, origin: Any, axes: Any) -> npt.NDArray[Any]:
    """One ndimage filter call: ndimage's checks, the kernel placed for the service's ``same`` window, one call, ndimage's cast."""
    x, w = np.asarray(input), np.asarray(weights)
    complex_output = x.dtype.kind == "c" or w.dtype.kind == "c"
    if np.iscomplexobj(cval) and x.dtype.kind != "c":
        if w.dtype.kind == "c":
            raise ValueError("Cannot provide a complex-valued cval when the input is real.")
        raise TypeError("must be real number, not complex")
    if not isinstance(mode, str) and isinstance(mode, Iterable):
        raise RuntimeError("A sequence of modes is not supported")
    if mode not in MODES:
        raise RuntimeError("boundary mode not supported")
    filtered = check_axes(axes, x.ndim)
    kernel, origins = _placed_kernel(convolution, x, w, origin, filtered)
    out = output_array(output, x, complex_output)
    if MODES[mode] == "reflect":  # the service's reflect needs 2 samples; on a 1-sample axis every mode but constant repeats it
        for axis in range(x.ndim):
            if x.shape[axis] == 1 and kernel.shape[axis] > 1:
                kernel, origins[axis] = kernel.sum(axis=axis, keepdims=True), 0
    pads = [kernel_padding(m, o) for m, o in zip(kernel.shape, origins)]
    kernel = np.pad(kernel, pads) if any(p != (0, 0) for p in pads) else kernel
    if x.size == 0:
        return out
    result = _compute(x, kernel, MODES[mode], cval, out.dtype)
    out[...] = _cast(result, out.dtype)
    return out


def _placed_kernel(convolution: bool, x: npt.NDArray[Any], w: npt.NDArray[Any], origin: Any, axes: tuple[int, ...]) -> tuple[npt.NDArray[Any], list[int]]:
    """The weights in input's dimensions, in correlation order, eps-small taps dropped; the per-axis origins in correlation terms."""
    if w.dtype.kind == "c":
        w = w.astype(np.complex128)
        w = np.where(np.abs(w.real) > EPSILON, w.real, 0) + 1j * np.where(np.abs(w.imag) > EPSILON, w.imag, 0)
        if convolution:  # the service's correlate conjugates its kernel, as ndimage's correlate does; its convolve does not
            w = np.conj(w)
    else:
        w = np.asarray(w, dtype=np.float64)
        w = np.where(np.abs(w) > EPSILON, w, 0.0)
    sizes = [n for n in w.shape if n > 0]
    if len(sizes) != len(axes) or w.ndim != len(axes):
        raise RuntimeError(f"weights.ndim ({len(sizes)}) must match len(axes) ({len(axes)})")
    shape = [1] * x.ndim
    for axis, n in zip(sorted(axes), w.shape):  # ndimage lays the weights on the axes in increasing order
        shape[axis] = n
    w = w.reshape(shape)
    given = [operator.index(o) for o in origin] if isinstance(origin, Iterable) else [operator.index(origin)] * len(axes)
    if len(given) != len(axes):
        raise RuntimeError("sequence argument must have length equal to input rank")
    origins = list(given) if len(axes) == x.ndim else [0] * x.ndim  # and the origins in the order of axes, when some are left out
    if len(axes) < x.ndim:
        for axis, o in zip(axes, given):
            origins[axis] = o
    if convolution:
        w = np.flip(w)
        origins = [-o - (1 - m % 2) for o, m in zip(origins, w.shape)]
    for o, m in zip(origins, w.shape):
        if o < -(m // 2) or o > (m - 1) // 2:
            raise ValueError("Invalid origin; origin must satisfy -(weights.shape[k] // 2) <= origin[k] <= (weights.shape[k]-1) // 2")
    return w, origins


def _compute(x: npt.NDArray[Any], kernel: npt.NDArray[Any], boundary: str, cval: Any, out_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """The service's correlate ``same``: exact integers for integral weights on an integer image, float64 (complex128) otherwise."""
    fill: Any = complex(cval)
    integral = (
        x.dtype.kind in "biu"
        and kernel.dtype.kind == "f"
        and bool(np.all(np.trunc(kernel) == kernel))
        and float(np.max(np.abs(kernel), initial=0)) < 2.0**53
        and (boundary != "fill" or (fill.imag == 0 and np.isfinite(fill.real) and fill.real == int(fill.real)))
    )
    fill = fill if boundary == "fill" else 0
    if integral:
        ints = kernel.astype(np.int64)
        ints = ints.astype(np.result_type(np.min_scalar_type(int(ints.min())), np.min_scalar_type(int(ints.max()))))
        holder = integer_holder(np.result_type(x.dtype, ints.dtype), _bounds(x, ints, int(fill.real) if boundary == "fill" else None), out_dtype)
        if holder is not None:
            with lease() as client:
                return np.asarray(client.correlate(x, ints, "same", "auto", None, boundary, int(fill.real), holder))
    with lease() as client:
        return np.asarray(client.correlate(x, kernel, "same", "auto", None, boundary, fill))  # float64 (complex128): the kernel's


def _bounds(x: npt.NDArray[Any], kernel: npt.NDArray[Any], fill: int | None) -> tuple[int, int]:
    """The smallest and largest value a correlation of ``x`` (extended by ``fill``, if any) with ``kernel`` can take."""
    low, high = int(x.min()), int(x.max())
    if fill is not None:
        low, high = min(low, fill), max(high, fill)
    taps = kernel.astype(object).ravel()
    return sum(min(t * low, t * high) for t in taps), sum(max(t * low, t * high) for t in taps)


def integer_holder(natural: np.dtype[Any], bounds: tuple[int, int], wanted: np.dtype[Any]) -> np.dtype[Any] | None:
    """The integer dtype the service returns an exact result in: ``wanted`` if it holds the bounds, else the smallest that does.

    Only dtypes the service accepts for a ``natural`` result (the same kind, as wide or wider); None when
    none holds the bounds (the sum is then taken in float64).
    """
    candidates = [wanted] if wanted.kind in "iu" else []
    candidates += [np.dtype(name) for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")]
    for dtype in candidates:
        info = np.iinfo(dtype)
        if dtype.itemsize >= natural.itemsize and widens(natural, dtype) and info.min <= bounds[0] and bounds[1] <= info.max:
            return dtype
    return None


def widens(natural: np.dtype[Any], requested: np.dtype[Any]) -> bool:
    """Whether the service accepts ``requested`` as the output dtype of a ``natural`` result."""
    if np.can_cast(natural, requested, casting="safe"):
        return True
    return natural.kind in "iub" and requested.kind in "iu" and requested.itemsize >= natural.itemsize


def _cast(result: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``result`` in the output dtype as ndimage's C cast gives it (truncation toward zero), refusing what would wrap."""
    if dtype.kind not in "iub":
        return result.astype(dtype, copy=False)
    whole = result if result.dtype.kind in "iub" else np.trunc(result)
    if whole.size == 0:
        return whole.astype(dtype)
    info = np.iinfo(dtype if dtype.kind != "b" else np.uint8)  # ndimage stores a bool as its C cast to a byte
    low, high = whole.min(), whole.max()
    if whole.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise OutOfRangeError(f"the result holds NaN or Inf, which {dtype} cannot hold (scipy.ndimage would store garbage); ask for output=np.float64")
    if low < info.min or high > info.max:
        holder = "float64"
        for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
            limits = np.iinfo(name)
            if limits.min <= low and high <= limits.max:
                holder = name
                break
        raise OutOfRangeError(f"the result spans [{low}, {high}], which {dtype} cannot hold (scipy.ndimage would wrap it around); ask for output=np.{holder}")
    return whole != 0 if dtype.kind == "b" else whole.astype(dtype)
