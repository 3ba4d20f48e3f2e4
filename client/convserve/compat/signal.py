"""``convserve.compat.signal``: ``scipy.signal``'s convolution functions, computed on the service.

Same names, arguments, defaults, result shapes and dtypes as ``scipy.signal``; the server is the
one of :func:`convserve.compat.configure`. Deviations, each on purpose:

- an integer result that would wrap around in scipy's dtype (``uint8`` images, say) raises
  :class:`convserve.OutOfRangeError` naming a dtype that holds it, where scipy wraps silently;
- integer inputs give exact integers with every ``method`` (scipy's ``fft`` rounds a float result);
- NaN and Inf stay local (the server runs ``direct`` for them), where an FFT spreads them;
- float16 is computed (scipy's direct method refuses it) and bool 2-D inputs too;
- empty inputs: ``fftconvolve`` and ``oaconvolve`` return an empty array as scipy does; the others
  raise ValueError (scipy raises for ``convolve`` and ``correlate`` too, and returns meaningless
  shapes from ``convolve2d``).

Examples
--------
>>> from convserve.compat import signal                     # doctest: +SKIP
>>> signal.convolve2d(image, kernel, "same", boundary="symm")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from convserve.compat._config import lease
from convserve.errors import OutOfRangeError

_MODES = ("full", "valid", "same")
_BOUNDARIES = {"fill": "fill", "pad": "fill", "wrap": "wrap", "circular": "wrap", "symm": "symmetric", "symmetric": "symmetric"}


def convolve(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", method: str = "auto") -> npt.NDArray[Any]:
    """Convolve two N-dimensional arrays, as ``scipy.signal.convolve``.

    Parameters
    ----------
    in1, in2 : array_like
        Inputs of the same dimensionality.
    mode : {"full", "valid", "same"}
        Output size, as scipy (``valid`` swaps the inputs when in2 is the larger, as scipy).
    method : {"auto", "direct", "fft"}
        How the server computes (integers are exact with every method).

    Returns
    -------
    numpy.ndarray
        ``numpy.result_type(in1, in2)``, as scipy.

    Raises
    ------
    ValueError
        Bad mode or method, different dimensionality, shapes ``valid`` cannot use.
    convserve.OutOfRangeError
        An integer result would wrap around in that dtype (scipy wraps).
    """
    return _signal(False, in1, in2, mode, method)


def correlate(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", method: str = "auto") -> npt.NDArray[Any]:
    """Cross-correlate two N-dimensional arrays, as ``scipy.signal.correlate`` (in2 conjugated; arguments as :func:`convolve`)."""
    return _signal(True, in1, in2, mode, method)


def fftconvolve(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", axes: int | Sequence[int] | None = None) -> npt.NDArray[Any]:
    """Convolve two N-dimensional arrays, as ``scipy.signal.fftconvolve`` (the server picks the method).

    Parameters
    ----------
    in1, in2 : array_like
        Inputs of the same dimensionality; on axes not in ``axes`` equal sizes or 1.
    mode : {"full", "valid", "same"}
        Output size, as scipy.
    axes : int or sequence of int, optional
        Axes to convolve over (default: all).

    Returns
    -------
    numpy.ndarray
        scipy's FFT dtype: float32 (complex64) when both inputs are float16/float32 (/complex64),
        float64 (complex128) otherwise, integers and bools included; ``numpy.result_type(in1, in2)``
        when every convolved axis has length 1 in an input (scipy multiplies then).
    """
    return _fft_like(in1, in2, mode, axes)


def oaconvolve(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", axes: int | Sequence[int] | None = None) -> npt.NDArray[Any]:
    """Convolve two N-dimensional arrays, as ``scipy.signal.oaconvolve`` (arguments and dtypes as :func:`fftconvolve`)."""
    return _fft_like(in1, in2, mode, axes)


def convolve2d(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", boundary: str = "fill", fillvalue: complex = 0) -> npt.NDArray[Any]:
    """Convolve two 2-D arrays, as ``scipy.signal.convolve2d``.

    Parameters
    ----------
    in1, in2 : array_like
        2-D inputs.
    mode : {"full", "valid", "same"}
        Output size, as scipy.
    boundary : {"fill", "wrap", "symm"}
        How in1 is extended (aliases ``pad``, ``circular``, ``symmetric``, as scipy).
    fillvalue : scalar
        The value outside in1 for ``fill``, cast to the result dtype as scipy casts it (2.7 is 2
        for integers; a value the dtype cannot hold raises ValueError).

    Returns
    -------
    numpy.ndarray
        ``numpy.result_type(in1, in2)``.
    """
    a, b, name, fill = _two_d("convolve2d", in1, in2, mode, boundary, fillvalue)
    with lease() as client:
        return _call(client.convolve, a, b, mode, "auto", None, name, fill)


def correlate2d(in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = "full", boundary: str = "fill", fillvalue: complex = 0) -> npt.NDArray[Any]:
    """Cross-correlate two 2-D arrays, as ``scipy.signal.correlate2d`` (arguments as :func:`convolve2d`).

    Its ``same`` window differs from :func:`correlate`'s for even kernels, and ``valid`` with the
    larger array second returns scipy's reversed result; both are reproduced exactly.
    """
    a, b, name, fill = _two_d("correlate2d", in1, in2, mode, boundary, fillvalue)
    if mode == "valid" and not all(n >= m for n, m in zip(a.shape, b.shape)):
        if not all(m >= n for n, m in zip(a.shape, b.shape)):
            raise ValueError("For 'valid' mode, one must be at least as large as the other in every dimension")
        with lease() as client:
            return _call(client.correlate, b, a, "valid")[::-1, ::-1].copy()  # scipy swaps, correlates and reverses
    if mode == "same":
        b = np.pad(b, [(1 - m % 2, 0) for m in b.shape])  # scipy's window starts at m // 2: a leading zero on even axes moves it there
    with lease() as client:
        return _call(client.correlate, a, b, mode, "auto", None, name, fill)


def _call(run: Any, *arguments: Any) -> npt.NDArray[Any]:
    """One call to the service; an integer overflow told in terms of scipy's signature (which has no output_dtype)."""
    try:
        return np.asarray(run(*arguments))
    except OutOfRangeError as exc:
        raise OutOfRangeError(scipy_advice(exc.details, "in1"), code=exc.code, field_violations=exc.field_violations) from exc


def scipy_advice(details: str, name: str) -> str:
    """The server's overflow message told for scipy's signatures, which have no ``output_dtype``: cast an input instead."""
    match = re.search(r"; use output_dtype='?(\w+)'?", details)
    holder = match.group(1) if match else "float64"
    what = details[: match.start()] if match else details
    return f"{what}; cast an input to get the exact result, e.g. {name}.astype({holder!r}) (scipy would wrap around silently)"


def _check_mode(mode: Any) -> None:
    if mode not in _MODES:
        raise ValueError("Acceptable mode flags are 'valid', 'same', or 'full'.")


def _signal(correlate: bool, in1: Any, in2: Any, mode: str, method: str) -> npt.NDArray[Any]:
    """convolve/correlate: scipy's checks, then one call."""
    a, b = np.asarray(in1), np.asarray(in2)
    if method not in ("auto", "direct", "fft"):
        raise ValueError("Acceptable method flags are 'auto', 'direct', or 'fft'.")
    _check_mode(mode)
    if a.ndim != b.ndim:
        raise ValueError("in1 and in2 should have the same dimensionality")
    with lease() as client:
        return _call(client.correlate if correlate else client.convolve, a, b, mode, method)


def fft_dtype(a: np.dtype[Any], b: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype of ``scipy.signal.fftconvolve``/``oaconvolve`` for these input dtypes."""
    complex_ = a.kind == "c" or b.kind == "c"
    single = all(d.char in "efF" for d in (a, b))
    if complex_:
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)


def widens(natural: np.dtype[Any], requested: np.dtype[Any]) -> bool:
    """Whether the server accepts ``requested`` as the output dtype of a ``natural`` result (its rule)."""
    if np.can_cast(natural, requested, casting="safe"):
        return True
    return natural.kind in "iu" and requested.kind in "iu" and requested.itemsize >= natural.itemsize


def _fft_like(in1: Any, in2: Any, mode: str, axes: Any) -> npt.NDArray[Any]:
    """fftconvolve/oaconvolve: the server's method, scipy's FFT dtype, the inputs sent as they are when the server can widen."""
    a, b = np.asarray(in1), np.asarray(in2)
    _check_mode(mode)
    if a.ndim == b.ndim == 0:
        return np.asarray(a * b)
    if a.ndim != b.ndim:
        raise ValueError("in1 and in2 should have the same dimensionality")
    if a.size == 0 or b.size == 0:
        return np.array([])
    remaining = [axis for axis in _axes(axes, a.ndim) if a.shape[axis] != 1 and b.shape[axis] != 1]  # scipy's: no FFT over length-1 axes
    if not remaining:  # scipy multiplies (broadcasting), no convolution at all: so does this, locally
        product = np.asarray(a * b)
        return _centered(product, a.shape) if mode == "same" else product
    target = fft_dtype(a.dtype, b.dtype)
    natural = np.result_type(a, b)
    if natural != target and not widens(natural, target):  # a result the service cannot widen: the inputs go in scipy's FFT dtype
        a, b = a.astype(np.result_type(a.dtype, target)), b.astype(np.result_type(b.dtype, target))
    output = None if np.result_type(a, b) == target else target
    with lease() as client:
        result = _call(client.convolve, a, b, mode, "auto", remaining, "fill", 0, output)
    return _centered(result, a.shape) if mode == "same" else result  # scipy's same is in1's shape on every axis


def _axes(axes: Any, ndim: int) -> list[int]:
    """The axes of fftconvolve/oaconvolve as non-negative ints (scipy's checks)."""
    if axes is None:
        return list(range(ndim))
    values = [axes] if isinstance(axes, (int, np.integer)) else list(axes)
    if not values:
        raise ValueError("when provided, axes cannot be empty")
    result = []
    for axis in values:
        if not -ndim <= int(axis) < ndim:
            raise ValueError(f"axes exceeds dimensionality of input: {axis}")
        result.append(int(axis) % ndim)
    if len(set(result)) != len(result):
        raise ValueError("all axes must be unique")
    return result


def _centered(array: npt.NDArray[Any], shape: Sequence[int]) -> npt.NDArray[Any]:
    """The centre of ``array`` with ``shape`` (scipy's ``_centered``)."""
    if array.shape == tuple(shape):
        return array
    start = [(n - m) // 2 for n, m in zip(array.shape, shape)]
    return array[tuple(slice(b, b + m) for b, m in zip(start, shape))].copy()


def fill_value(fillvalue: Any, dtype: np.dtype[Any]) -> Any:
    """``fillvalue`` cast to ``dtype`` as ``scipy.signal.convolve2d`` casts it (ValueError when it cannot)."""
    message = "could not cast `fillvalue` directly to the output type (it was first converted to complex)."
    given = np.asarray(fillvalue)
    try:
        value = complex(given.item())
    except (TypeError, ValueError) as exc:
        raise ValueError("fillvalue must be a scalar") from exc
    if dtype.kind == "c":
        return value
    if given.dtype.kind == "c":  # scipy refuses a complex fill for a real result, even 2 + 0j
        raise ValueError(message)
    if dtype.kind in "iub":
        whole = np.trunc(value.real)
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        if not (np.isfinite(whole) and info.min <= whole <= info.max):
            raise ValueError(message)
        return int(whole) if dtype.kind != "b" else int(whole != 0)
    return float(np.asarray(value.real).astype(dtype))


def _two_d(name: str, in1: Any, in2: Any, mode: str, boundary: str, fillvalue: Any) -> tuple[npt.NDArray[Any], npt.NDArray[Any], str, Any]:
    """convolve2d/correlate2d: scipy's checks; the server's boundary name and the fill value."""
    a, b = np.asarray(in1), np.asarray(in2)
    if not a.ndim == b.ndim == 2:
        raise ValueError(f"{name} inputs must both be 2-D arrays")
    _check_mode(mode)
    if boundary not in _BOUNDARIES:
        raise ValueError("Incorrect boundary value. Acceptable boundary flags are 'fill' (or 'pad'), 'wrap' (or 'circular') and 'symm' (or 'symmetric').")
    if mode == "valid" and not (all(n >= m for n, m in zip(a.shape, b.shape)) or all(m >= n for n, m in zip(a.shape, b.shape))):
        raise ValueError("For 'valid' mode, one must be at least as large as the other in every dimension")
    fill = fill_value(fillvalue, np.result_type(a, b))  # scipy checks the cast for every boundary...
    server = _BOUNDARIES[boundary]
    return a, b, server, fill if server == "fill" else 0  # ...but uses the value with "fill" only (the server refuses it elsewhere)
