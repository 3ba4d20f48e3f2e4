"""The ``fft`` ConvLayer path: large kernels by FFTs (FFTW or ducc0) with cached weight spectra.

A cross-correlation of the padded input (spatial size ``P``) with a kernel of size ``k`` is the
leading ``P - k + 1`` samples of a *circular* correlation of any length ``L >= P``: no output
sample there wraps around. So each dimension is transformed at ``L = fast_length(P)`` only
(not ``P + k - 1``), by real-to-complex plans from :mod:`convserve_server.engine.fft.plans`
(cached, with their aligned buffers) of the backend the signal cost model predicts faster for the
batch of transforms (:func:`convserve_server.engine.signal.cost_model.fft_backend`). Per frequency the channel contraction is a small matrix product,
``Y[f] (N, C_out) = X[f] (N, C_in) @ conj(W[f]) (C_in, C_out)``, done for all frequencies by
one batched ``np.matmul``. Each of the three stages is split over the request's share of the
cores (transforms by rows, products by frequencies) in a small thread pool: FFTW's own
threads do not pay at these sizes here, but independent batches do. The weight spectra
``conj(W)`` (already scaled by ``1/L``) depend only on the weights, ``L`` and the dtype, and are
memoized in the caller's ``prepared`` store.

When the whole input's spectrum would be large (the channel products then stream it from
memory), :func:`~convserve_server.engine.layers.tiling.plan_tiles` may cut the input into
overlap-save tiles that become extra batch items, so one smaller spectrum serves every tile.

It serves ``groups == 1``, dilation 1 and any stride (the strided output is a subsample of the
stride-1 one; the policy only picks it where that is cheap). NaN or Inf in the input would
smear over the whole output through the transform, so the policy sends such inputs elsewhere.
float32 runs in single precision: the error measured against float64 stays well under
1e-5 of the output's peak (see ``bench/bench_conv_layer.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from convserve_server.engine import cancellation, resources
from convserve_server.engine.fft import ducc, plans
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.layers.tiling import plan_tiles, transform_shape
from convserve_server.engine.signal import cost_model


def backend_for(rows: int, fshape: tuple[int, ...], dtype: np.dtype[Any]) -> str:
    """The FFT backend predicted faster for ``rows`` real transforms of shape ``fshape``."""
    return cost_model.fft_backend(rows, [(n, 1) for n in fshape], np.dtype(dtype), False, cost_model.constants())


def _spectra(w: NDArray[Any], fshape: tuple[int, ...], backend: str = "fftw") -> NDArray[Any]:
    """``conj(rfftn(w, fshape)) / prod(fshape)`` as ``(F, C_in, C_out)``, contiguous."""
    nd = len(fshape)
    c_out, c_in = w.shape[0], w.shape[1]
    axes = tuple(range(1, 1 + nd))
    with plans.plan("r2c", (c_in * c_out,) + fshape, w.dtype, axes, backend) as p:
        corner = (slice(None),) + tuple(slice(0, k) for k in w.shape[2:])
        p.input[...] = 0
        p.input[corner] = w.swapaxes(0, 1).reshape((c_in * c_out,) + w.shape[2:])  # rows (C_in, C_out)
        p.fftw.execute()
        spec = p.output.reshape(c_in * c_out, -1)
        np.conjugate(spec, out=spec)
        spec *= 1.0 / math.prod(fshape)
        result = np.ascontiguousarray(spec.T).reshape(-1, c_in, c_out)
    return result


def fft_correlate(
    xp: NDArray[Any],
    w: NDArray[Any],
    strides: tuple[int, ...],
    out_spatial: tuple[int, ...],
    prepared: MutableMapping[Any, Any] | None,
    tile: tuple[int, ...] | None = None,
    pads: tuple[tuple[int, int], ...] | None = None,
) -> NDArray[Any]:
    """Cross-correlate a padded input with ``w`` (groups 1, dilation 1) through FFTs.

    Large inputs are cut into overlapping tiles (overlap-save) when :func:`plan_tiles` finds
    that cheaper: the tiles become extra batch items, so each frequency's channel product is a
    ``(N * tiles, C_in) @ (C_in, C_out)`` matrix product and the (smaller) weight spectrum is
    read once for all of them instead of streaming a large one from memory.

    Parameters
    ----------
    xp : ndarray
        ``(N, C_in, *padded_spatial)``, already padded, finite.
    w : ndarray
        ``(C_out, C_in, *kernel)``, same dtype as ``xp``.
    strides : tuple of int
        Per spatial dimension.
    out_spatial : tuple of int
        The output's spatial shape.
    prepared : MutableMapping, optional
        The per-weights store for the weight spectra (key ``("fft", fshape, dtype)``).
    tile : tuple of int, optional
        The transform size per dimension (forces tiling; tests use it). Default: the cheapest
        by :func:`plan_tiles`.
    pads : tuple of (int, int), optional
        Zero padding (before, after) per spatial dimension still to apply to ``xp``: the
        untiled transform then writes ``xp`` into its buffer at the offset (measured on
        N8 C64 15x15 with 12x12 and padding 6: ``np.pad`` was a quarter of the call).

    Returns
    -------
    ndarray
        ``(N, C_out, *out_spatial)``, ``xp``'s dtype.
    """
    n, c_in = xp.shape[0], xp.shape[1]
    c_out = w.shape[0]
    padded = tuple(int(v) + (0 if pads is None else sum(pads[i])) for i, v in enumerate(xp.shape[2:]))
    kernel = tuple(int(k) for k in w.shape[2:])
    nd = len(padded)
    sizes = tile if tile is not None else plan_tiles(padded, kernel, n, c_in, c_out)[0]
    if all(t >= fast_length(p) for t, p in zip(sizes, padded)):
        return _fft_batch(xp, w, strides, out_spatial, prepared, pads)
    if pads is not None:
        xp = np.pad(xp, [(0, 0), (0, 0)] + list(pads))
    full = tuple(p - k + 1 for p, k in zip(padded, kernel))  # the stride-1 output
    step = tuple(t - k + 1 for t, k in zip(sizes, kernel))  # output samples per tile
    counts = tuple(-(-o // st) for o, st in zip(full, step))
    extent = tuple((m - 1) * st + t for m, st, t in zip(counts, step, sizes))
    xe = np.zeros((n, c_in) + extent, dtype=xp.dtype)
    xe[(slice(None), slice(None)) + tuple(slice(0, p) for p in padded)] = xp
    windows = sliding_window_view(xe, sizes, axis=tuple(range(2, 2 + nd)))
    windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in step)]  # (N, C, *m, *L)
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    tiles = np.ascontiguousarray(windows.transpose(perm)).reshape((n * math.prod(counts), c_in) + sizes)
    del xe, windows
    y = _fft_batch(tiles, w, (1,) * nd, step, prepared)  # (N * M, C_out, *step)
    y = y.reshape((n,) + counts + (c_out,) + step)
    order = (0, 1 + nd) + tuple(v for d in range(nd) for v in (1 + d, 2 + nd + d))
    y = y.transpose(order).reshape((n, c_out) + tuple(m * st for m, st in zip(counts, step)))
    crop = (slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_spatial, strides))
    return np.ascontiguousarray(y[crop])


def _fft_batch(
    xp: NDArray[Any],
    w: NDArray[Any],
    strides: tuple[int, ...],
    out_spatial: tuple[int, ...],
    prepared: MutableMapping[Any, Any] | None,
    pads: tuple[tuple[int, int], ...] | None = None,
) -> NDArray[Any]:
    """The untiled transform: the whole padded input at ``fast_length`` per dimension.

    Three stages, each split over the request's share of the cores: the forward transforms
    (:func:`_forward`), the per-frequency channel products (:func:`_products`) and the inverse
    transforms (:func:`_inverse`), with a cancellation check between them.

    Parameters
    ----------
    xp : ndarray
        ``(N, C_in, *padded_spatial)``, already padded, finite.
    w : ndarray
        ``(C_out, C_in, *kernel)``, same dtype as ``xp``.
    strides : tuple of int
        Per spatial dimension.
    out_spatial : tuple of int
        The output's spatial shape.
    prepared : MutableMapping, optional
        The per-weights store for the weight spectra (key ``("fft", fshape, dtype)``).
    pads : tuple of (int, int), optional
        Zero padding still to apply to ``xp`` (see :func:`fft_correlate`).

    Returns
    -------
    ndarray
        ``(N, C_out, *out_spatial)``, ``xp``'s dtype.
    """
    n, c_in = xp.shape[0], xp.shape[1]
    c_out = w.shape[0]
    fshape = transform_shape(tuple(int(s) + (0 if pads is None else sum(pads[i])) for i, s in enumerate(xp.shape[2:])))
    backend = backend_for(n * max(c_in, c_out), fshape, xp.dtype)
    spectra = _weight_spectra(w, fshape, xp.dtype, prepared, backend)
    parts = _parts(n * max(c_in, c_out) * math.prod(fshape))
    xf = _forward(xp, fshape, spectra.dtype, parts, backend, pads)
    cancellation.check()
    yf = _products(xf.reshape(-1, n, c_in), spectra, parts if n * c_in * c_out < _BLAS_THREADED_MIN else 1)
    del xf
    cancellation.check()
    out = _inverse(yf.reshape(-1, n * c_out), fshape, xp.dtype, strides, out_spatial, parts, backend)
    return out.reshape((n, c_out) + out_spatial)


def _weight_spectra(
    w: NDArray[Any], fshape: tuple[int, ...], dtype: np.dtype[Any], prepared: MutableMapping[Any, Any] | None, backend: str = "fftw"
) -> NDArray[Any]:
    """The weight spectra for transform size ``fshape``, memoized in ``prepared`` under ``("fft", fshape, dtype)``."""
    key = ("fft", fshape, dtype.str)
    spectra = prepared.get(key) if prepared is not None else None
    if spectra is None:
        spectra = _spectra(w, fshape, backend)
        if prepared is not None:
            prepared[key] = spectra
    return spectra


def _one_thread_each(parts: int) -> contextlib.AbstractContextManager[None]:
    """One thread per transform while the work is split over ``parts`` threads already."""
    return resources.thread_share(1) if parts > 1 else contextlib.nullcontext()


def _forward(
    xp: NDArray[Any],
    fshape: tuple[int, ...],
    spectrum_dtype: np.dtype[Any],
    parts: int,
    backend: str = "fftw",
    pads: tuple[tuple[int, int], ...] | None = None,
) -> NDArray[Any]:
    """The forward transforms of every ``(N * C_in)`` row of ``xp`` at ``fshape``, as ``(F, N * C_in)``.

    With ``pads`` (zero padding not yet applied), each row is copied into the plan's buffer at its
    offset and only the border is zeroed: no padded copy of the input is made.
    """
    rows = xp.shape[0] * xp.shape[1]
    spatial = tuple(int(s) for s in xp.shape[2:])
    before = tuple(b for b, _ in pads) if pads is not None else (0,) * len(spatial)
    axes = tuple(range(1, 1 + len(spatial)))
    half = fshape[:-1] + (fshape[-1] // 2 + 1,)
    points = math.prod(half)
    xf = np.empty((points, rows), dtype=spectrum_dtype)  # (F, N*C_in)
    rows_in = xp.reshape((rows,) + spatial)

    def forward(lo: int, hi: int) -> None:
        with _one_thread_each(parts), plans.plan("r2c", (hi - lo,) + fshape, xp.dtype, axes, backend) as p:
            p.input[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, spatial))] = rows_in[lo:hi]
            for axis, (b, size) in enumerate(zip(before, spatial), start=1):  # zero the border of each dimension
                inner = tuple(slice(before[i - 1], before[i - 1] + spatial[i - 1]) for i in range(1, axis))
                if b:
                    p.input[(slice(None),) + inner + (slice(0, b),)] = 0
                if b + size < fshape[axis - 1]:
                    p.input[(slice(None),) + inner + (slice(b + size, None),)] = 0
            if isinstance(p.fftw, ducc.DuccTransform):  # ducc0 writes the (F, rows) layout itself
                p.fftw.execute_into(np.reshape(xf[:, lo:hi].T, (hi - lo,) + half, copy=False))
            else:
                p.fftw.execute()
                xf[:, lo:hi] = p.output.reshape(hi - lo, points).T

    resources.run_split(forward, rows, parts)
    return xf


def _products(xf3: NDArray[Any], spectra: NDArray[Any], parts: int) -> NDArray[Any]:
    """Per frequency ``Y[f] (N, C_out) = X[f] (N, C_in) @ spectra[f] (C_in, C_out)``, split by frequencies.

    The caller splits the products only where each is too small for BLAS to thread it itself:
    two threads each calling a multi-threaded OpenBLAS GEMM oversubscribe the cores (measured:
    0.1 s became 2.8 s on N32 C128 28x28 while another process was busy).
    """
    points, n = xf3.shape[0], xf3.shape[1]
    yf = np.empty((points, n, spectra.shape[2]), dtype=spectra.dtype)

    def products(lo: int, hi: int) -> None:
        np.matmul(xf3[lo:hi], spectra[lo:hi], out=yf[lo:hi])

    resources.run_split(products, points, parts)
    return yf


def _inverse(
    yf2: NDArray[Any],
    fshape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...],
    out_spatial: tuple[int, ...],
    parts: int,
    backend: str = "fftw",
) -> NDArray[Any]:
    """The inverse transforms of the ``(F, N * C_out)`` spectra, cropped and subsampled to ``(N * C_out, *out_spatial)``."""
    points, rows = yf2.shape
    axes = tuple(range(1, 1 + len(fshape)))
    half = fshape[:-1] + (fshape[-1] // 2 + 1,)
    out = np.empty((rows,) + out_spatial, dtype=dtype)
    crop = (slice(None),) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_spatial, strides))

    def inverse(lo: int, hi: int) -> None:
        with _one_thread_each(parts), plans.plan("c2r", (hi - lo,) + fshape, dtype, axes, backend) as q:
            if isinstance(q.fftw, ducc.DuccTransform):  # ducc0 reads the (F, rows) layout itself (and may overwrite it)
                q.fftw.execute_from(np.reshape(yf2[:, lo:hi].T, (hi - lo,) + half, copy=False))
            else:
                q.input.reshape(hi - lo, points)[...] = yf2[:, lo:hi].T
                q.fftw.execute()
            out[lo:hi] = q.output[crop]

    resources.run_split(inverse, rows, parts)
    return out


# Parallel work below this many points (batch x channels x transform size) is not split.
_PARALLEL_MIN_POINTS = 1 << 17
# OpenBLAS threads a GEMM of about this many multiply-adds and more.
_BLAS_THREADED_MIN = 1 << 16


def _parts(points: int) -> int:
    """How many threads to split the work into: the request's share of the cores, or 1 when small."""
    if points < _PARALLEL_MIN_POINTS:
        return 1
    return max(1, resources.thread_limit(resources.CORES))
