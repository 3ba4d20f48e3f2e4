"""The FFT product: products of cached transforms (FFTW or ducc0), real-to-complex for real data.

Single precision stays single precision; transform lengths are the backend's fast sizes. Plans and
their aligned buffers come from :mod:`convserve_server.engine.fft.plans` (cached, so a repeated shape neither plans
nor faults fresh pages); the inputs are copied into the plan's buffer once, zero-padded in
place, and the 1/L normalisation is folded into the copy of the smaller operand. The smaller
operand's spectrum is remembered by its bytes (:mod:`.kernel_spectra`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from convserve_server.engine.fft import plans, pruned
from convserve_server.engine.fft.ducc import DuccTransform
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.signal import kernel_spectra

Loader = Callable[[npt.NDArray[Any]], None]
Finisher = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]


def threads() -> int:
    """Most FFTW threads per transform (the engine setting ``fftw_threads``, default: every core)."""
    return plans.max_threads()


def load(buffer: npt.NDArray[Any], a: npt.NDArray[Any], scale: float = 1.0) -> None:
    """Copy ``a`` into the leading corner of ``buffer`` (times ``scale``) and zero the rest.

    The product is computed in the buffer's (the working) precision: numpy 2 would compute
    ``float32 array * Python float`` in float32 even into a float64 ``out`` (and a float16
    operand in float16, where 1/L is subnormal), so the dtype is given explicitly.
    """
    corner = tuple(slice(0, n) for n in a.shape)
    if scale == 1.0:
        np.copyto(buffer[corner], a, casting="unsafe")
    else:
        np.multiply(a, buffer.dtype.type(scale), out=buffer[corner], dtype=buffer.dtype, casting="unsafe")
    zero_outside(buffer, a.shape)


def zero_outside(buffer: npt.NDArray[Any], extents: Sequence[int]) -> None:
    """Zero every element of ``buffer`` outside the leading corner of size ``extents``."""
    for axis, n in enumerate(extents):
        if n < buffer.shape[axis]:
            index = tuple(slice(0, extents[i]) if i < axis else slice(None) for i in range(axis)) + (slice(n, None),)
            buffer[index] = 0


def periodic_product(
    x_shape: Sequence[int],
    load_x: Loader,
    h: npt.NDArray[Any],
    h_shape: Sequence[int],
    axes: Sequence[int],
    work_dtype: np.dtype[Any],
    finish: Finisher,
    backend: str = "fftw",
    x_extents: Sequence[int] | None = None,
    needed: Sequence[tuple[int, int]] | None = None,
) -> npt.NDArray[Any]:
    """Cyclic convolution of two zero-padded operands, handed to ``finish`` before release.

    Parameters
    ----------
    x_shape, h_shape : sequence of int
        Time-domain buffer shapes (transform sizes on ``axes``, broadcastable elsewhere).
    load_x : callable
        Fills x's time-domain buffer (all of it, zeros included).
    h : numpy.ndarray
        The second operand, copied into the leading corner of its buffer.
    axes : sequence of int
        Transformed axes; the transform size on each is its size in ``x_shape``.
    work_dtype : numpy.dtype
        float32/float64 (real transforms) or complex64/complex128.
    finish : callable
        Receives the (normalised) cyclic convolution, a view of a reused buffer, and returns
        an array that owns its memory (a crop copied out, an overlap-add...).
    backend : {"fftw", "ducc0"}
        Who transforms (:func:`convserve_server.engine.fft.plans.plan`).
    x_extents : sequence of int, optional
        How much of x's buffer ``load_x`` fills (zeros beyond): with ducc0 the transform skips
        the zero lines (:mod:`convserve_server.engine.fft.pruned`), as it does for ``h``'s.
    needed : sequence of (start, stop), optional
        The part of the cyclic convolution that ``finish`` reads (all of it when omitted); with
        ducc0 the inverse transform computes only that part.
    """
    real = work_dtype.kind != "c"
    axes = tuple(axes)
    scale = 1.0 / math.prod(x_shape[a] for a in axes)
    forward, inverse = ("r2c", "c2r") if real else ("c2c", "c2c_inverse")
    out_shape = _broadcast(x_shape, h_shape)
    spectrum_key = kernel_spectra.key(h, (tuple(h_shape), work_dtype.str, axes, backend, scale))
    spectrum = kernel_spectra.get(spectrum_key, h)
    if spectrum is None and spectrum_key is not None:  # transform the key's bytes (or a copy), even if the caller's array changes meanwhile
        h = kernel_spectra.kernel_of(spectrum_key, h)
    with plans.plan(forward, tuple(x_shape), work_dtype, axes, backend) as px:
        load_x(px.input)
        _transform(px, forward, axes, extents=x_extents or x_shape)
        if spectrum is not None:
            return _inverse_product(px.output, spectrum, out_shape, inverse, work_dtype, axes, backend, finish, needed)
        with plans.plan(forward, tuple(h_shape), work_dtype, axes, backend) as ph:
            load(ph.input, h, scale)
            _transform(ph, forward, axes, extents=h.shape)
            kernel_spectra.put(spectrum_key, ph.output, h)
            return _inverse_product(px.output, ph.output, out_shape, inverse, work_dtype, axes, backend, finish, needed)


def _inverse_product(
    x_spectrum: npt.NDArray[Any],
    h_spectrum: npt.NDArray[Any],
    out_shape: tuple[int, ...],
    inverse: str,
    work_dtype: np.dtype[Any],
    axes: tuple[int, ...],
    backend: str,
    finish: Finisher,
    needed: Sequence[tuple[int, int]] | None,
) -> npt.NDArray[Any]:
    """The inverse transform of the spectra's product, handed to ``finish``."""
    with plans.plan(inverse, out_shape, work_dtype, axes, backend) as pi:
        np.multiply(x_spectrum, h_spectrum, out=pi.input)
        _transform(pi, inverse, axes, needed=needed)
        return finish(pi.output)


def _transform(
    plan: plans.Plan,
    kind: str,
    axes: tuple[int, ...],
    extents: Sequence[int] | None = None,
    needed: Sequence[tuple[int, int]] | None = None,
) -> None:
    """Run a checked-out plan: FFTW's whole transform, or ducc0's pruned one (zeros in, unread output out skipped)."""
    transform = plan.fftw
    if not isinstance(transform, DuccTransform):
        transform.execute()
    elif extents is not None:
        pruned.forward(kind, plan.input, plan.output, axes, extents, transform.threads)
    else:
        pruned.inverse(kind, plan.input, plan.output, axes, needed or [(0, n) for n in plan.output.shape], transform.threads)


def _crop(starts: Sequence[int], lengths: Sequence[int], axes: Sequence[int], ndim: int) -> tuple[slice, ...]:
    """Index selecting ``starts[i] .. starts[i] + lengths[i]`` on each of ``axes``."""
    index = [slice(None)] * ndim
    for axis, start, length in zip(axes, starts, lengths):
        index[axis] = slice(start, start + length)
    return tuple(index)


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The broadcast shape of two shapes (equal shapes, the common case, without numpy's general rule: 3-5 us a call)."""
    a, b = tuple(a), tuple(b)
    return a if a == b else tuple(np.broadcast_shapes(a, b))


def _owned(view: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A C-contiguous copy of ``view`` (never a view of a cached buffer)."""
    return np.array(view, copy=True, order="C")


def linear_region(
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    work_dtype: np.dtype[Any],
    backend: str = "fftw",
) -> npt.NDArray[Any]:
    """Return part of the full linear convolution of ``x`` and ``h`` along ``axes``.

    On axis ``axes[i]`` the result holds full-convolution indices
    ``starts[i] .. starts[i] + lengths[i] - 1``; other axes broadcast. Transform lengths are
    ``backend``'s fast lengths.
    """
    if math.prod(h.shape) > math.prod(x.shape):
        x, h = h, x  # the scale and the zero-padding go with the smaller operand
    real = work_dtype.kind != "c"
    sizes = {a: fast_length(x.shape[a] + h.shape[a] - 1, backend, real) for a in axes}
    x_shape = [sizes.get(i, n) for i, n in enumerate(x.shape)]
    h_shape = [sizes.get(i, n) for i, n in enumerate(h.shape)]
    crop = _crop(starts, lengths, axes, x.ndim)
    out_shape = _broadcast(x_shape, h_shape)
    needed = [(index.start or 0, out_shape[i] if index.stop is None else index.stop) for i, index in enumerate(crop)]
    load_x = lambda buffer: load(buffer, x)  # noqa: E731
    return periodic_product(x_shape, load_x, h, h_shape, axes, work_dtype, lambda y: _owned(y[crop]), backend, x.shape, needed)


def circular(x: npt.NDArray[Any], h: npt.NDArray[Any], axes: Sequence[int], work_dtype: np.dtype[Any], backend: str = "fftw") -> npt.NDArray[Any]:
    """Cyclic convolution along ``axes``: ``h`` zero-padded to ``x``'s length there."""
    x_shape = list(x.shape)
    h_shape = [x.shape[i] if i in axes else n for i, n in enumerate(h.shape)]
    return periodic_product(x_shape, lambda buffer: load(buffer, x), h, h_shape, axes, work_dtype, _owned, backend, x.shape)
