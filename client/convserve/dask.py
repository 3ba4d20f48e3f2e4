"""``convserve.dask``: convolve dask arrays larger than one machine, every block on the service.

Needs the ``dask`` extra (``pip install "convserve[dask]"``: dask[array], distributed); importing
``convserve`` alone never imports dask.

The boundary is applied to the WHOLE array first (``wrap`` takes the far end of the array, not of
the chunk), lazily, by dask; the extended array is then convolved in ``valid`` mode with
``map_overlap`` (depth M-1 after each chunk on every convolved axis), one service call per block.
Each worker process opens one :class:`convserve.Client` per target and options, at its first block.
Without ``target``, the server is the one of :func:`convserve.compat.configure` (else the
``CONVSERVE_TARGET`` environment variable, else ``127.0.0.1:50051``), read when the graph is built,
so that the workers need no configuration of their own.

Examples
--------
>>> import dask.array as da, numpy as np, convserve.dask    # doctest: +SKIP
>>> image = da.random.random((20_000, 20_000), chunks=4_096)
>>> blurred = convserve.dask.convolve(image, np.ones((9, 9)) / 81, "same", boundary="wrap", target="ipv4:10.0.0.1:50051,10.0.0.2:50051")
>>> blurred.to_zarr("blurred.zarr")
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import numpy.typing as npt

from convserve import _tiles
from convserve.client import Client
from convserve.compat import _config

_CLIENTS: dict[Any, Client] = {}
_LOCK = threading.Lock()


def _client(target: str, options: Mapping[str, Any]) -> Client:
    """This process's client for ``target`` and ``options`` (created at first use, closed at exit)."""
    try:
        key: Any = (target, tuple(sorted(options.items())))
        hash(key)
    except TypeError:
        key = (target, repr(sorted(options.items())))
    with _LOCK:
        if key not in _CLIENTS:
            if not _CLIENTS:
                atexit.register(_close_all)
            _CLIENTS[key] = Client(target, **options)
        return _CLIENTS[key]


def _service(target: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The target and client options of a call: its own, or the configured ones (``convserve.compat.configure``) under its own options."""
    if target is not None:
        return target, options
    configured, defaults = _config.settings()
    return configured, {**defaults, **options}


def _close_all() -> None:
    with _LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()


def convolve(
    in1: da.Array,
    in2: npt.ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: int | Sequence[int] | None = None,
    boundary: str = "fill",
    fill_value: complex = 0,
    *,
    target: str | None = None,
    output_dtype: npt.DTypeLike | None = None,
    **client_options: Any,
) -> da.Array:
    """Convolve a dask array with a kernel, as :meth:`convserve.Client.convolve`, block by block on the service.

    Parameters
    ----------
    in1 : dask.array.Array
        The signal, in any chunks.
    in2 : array_like
        The kernel (a numpy array, sent with every block).
    mode : {"full", "same", "valid"}
        As scipy. ``circular`` raises ValueError: it is periodic over the whole array; compute it
        with ``Client.convolve(in1.compute(), in2, "circular")``.
    method, axes, boundary, fill_value, output_dtype
        As :meth:`convserve.Client.convolve`; the boundary extends the whole array, not each chunk.
    target : str, optional
        The service, e.g. ``"ipv4:h1:p1,h2:p2"`` (round robin over replicas); default: the one
        configured with :func:`convserve.compat.configure`.
    **client_options
        Keyword arguments of :class:`convserve.Client` (token, TLS files, timeout, retry, ...).

    Returns
    -------
    dask.array.Array
        Lazy; equal to the one-shot result. Errors (OutOfRangeError for an integer block that does
        not fit, say) are raised at compute time.
    """
    return _signal(False, in1, in2, mode, method, axes, boundary, fill_value, target, output_dtype, client_options)


def correlate(
    in1: da.Array,
    in2: npt.ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: int | Sequence[int] | None = None,
    boundary: str = "fill",
    fill_value: complex = 0,
    *,
    target: str | None = None,
    output_dtype: npt.DTypeLike | None = None,
    **client_options: Any,
) -> da.Array:
    """Cross-correlate a dask array with a kernel, as :meth:`convserve.Client.correlate` (arguments as :func:`convolve`)."""
    return _signal(True, in1, in2, mode, method, axes, boundary, fill_value, target, output_dtype, client_options)


def _signal(
    correlate: bool,
    in1: Any,
    in2: Any,
    mode: str,
    method: str,
    axes: Any,
    boundary: str,
    fill_value: complex,
    target: str | None,
    output_dtype: Any,
    options: dict[str, Any],
) -> da.Array:
    """The lazy Convolve/Correlate of a dask array."""
    target, options = _service(target, options)
    x = in1 if isinstance(in1, da.Array) else da.asarray(in1)
    h = np.asarray(in2)
    if isinstance(mode, str) and mode.lower() == "circular":
        raise ValueError("mode 'circular' is periodic over the whole array; compute it one-shot: Client.convolve(in1.compute(), in2, 'circular')")
    geometry = _tiles.geometry(x.shape, x.dtype, h, mode, axes, boundary, fill_value, output_dtype)
    if geometry is None:
        raise ValueError(
            f"convserve.dask cannot run mode={mode!r}, axes={axes!r}, boundary={boundary!r}, fill_value={fill_value!r} with in1 {x.shape} {x.dtype} and "
            f"in2 {h.shape}: expected full/same/valid, valid axes, in2 no larger than in1 for 'valid', a fill value in1's dtype holds"
        )
    extended = x if x.dtype == geometry.dtype else x.astype(geometry.dtype)
    for axis, start, length, n, m in zip(geometry.axes, geometry.starts, geometry.lengths, geometry.sizes_x, geometry.sizes_h):
        extended = _extend(extended, axis, start - (m - 1), start + length, n, geometry.boundary, geometry.fill)
    extended, out_chunks = _rechunk(extended, geometry, x)
    depth = {axis: (0, m - 1) for axis, m in zip(geometry.axes, geometry.sizes_h)}
    out_dtype = geometry.result_dtype or (np.dtype(output_dtype) if output_dtype is not None else np.result_type(x.dtype, h.dtype))
    return da.map_overlap(
        _block,
        extended,
        depth=depth,
        boundary="none",
        trim=False,
        chunks=out_chunks,
        dtype=out_dtype,
        meta=np.empty((0,) * x.ndim, out_dtype),
        h=geometry.h,
        op="correlate" if correlate else "convolve",
        method=method,
        axes=geometry.axes,
        output_dtype=geometry.output_dtype,
        result_dtype=geometry.result_dtype,
        target=target,
        options=options,
    )


def _block(
    block: npt.NDArray[Any], h: Any, op: str, method: str, axes: Any, output_dtype: Any, result_dtype: Any, target: str, options: dict[str, Any]
) -> npt.NDArray[Any]:
    """One block of the extended array, convolved in valid mode on the service (cast as the one-shot result, if in1 was widened)."""
    client = _client(target, options)
    run = client.correlate if op == "correlate" else client.convolve
    result = run(np.ascontiguousarray(block), h, "valid", method, axes, "fill", 0, output_dtype)
    return result if result_dtype is None else result.astype(result_dtype)


def _extend(x: da.Array, axis: int, lo: int, hi: int, n: int, boundary: str, fill: Any) -> da.Array:
    """Indices ``lo..hi`` of in1 along ``axis`` as the boundary extends the whole array (``numpy.pad``'s rule), lazily."""
    pieces = []
    for a, b in ((lo, min(hi, 0)), (max(lo, 0), min(hi, n)), (max(lo, n), hi)):
        if b <= a:
            continue
        if 0 <= a and b <= n:
            index: list[Any] = [slice(None)] * x.ndim
            index[axis] = slice(a, b)
            pieces.append(x[tuple(index)])
        elif boundary == "fill":
            shape = list(x.shape)
            shape[axis] = b - a
            chunks = tuple((b - a,) if i == axis else c for i, c in enumerate(x.chunks))
            pieces.append(da.full(tuple(shape), fill, dtype=x.dtype, chunks=chunks))
        else:
            source, _ = _tiles.source_indices(np.arange(a, b), n, boundary)
            pieces.append(da.take(x, source, axis=axis))
    return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=axis)


def _rechunk(extended: da.Array, geometry: _tiles.Geometry, x: da.Array) -> tuple[da.Array, tuple[tuple[int, ...], ...]]:
    """Chunks of the extended array (each at least M long on a convolved axis) and of the result."""
    chunks: list[Any] = []
    out: list[tuple[int, ...]] = []
    for axis in range(extended.ndim):
        if axis in geometry.axes:
            m = geometry.sizes_h[geometry.axes.index(axis)]
            size = extended.shape[axis]
            step = max(max(x.chunks[axis]), 2 * m)
            sizes = [step] * (size // step) + ([size % step] if size % step else [])
            if len(sizes) > 1 and sizes[-1] < m:
                sizes[-2] += sizes.pop()
            chunks.append(tuple(sizes))
            out.append((*sizes[:-1], sizes[-1] - (m - 1)))
        elif geometry.h.shape[axis] > 1:  # broadcast against in2: the whole axis in each block
            chunks.append((extended.shape[axis],))
            out.append((max(extended.shape[axis], geometry.h.shape[axis]),))
        else:
            chunks.append(extended.chunks[axis])
            out.append(extended.chunks[axis])
    return extended.rechunk(tuple(chunks)), tuple(out)


def conv_layer(
    input: da.Array,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    activation: str | None = None,
    pool: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
    **client_options: Any,
) -> da.Array:
    """A CNN layer (as :meth:`convserve.Client.conv_layer`) over a batch chunked along its first axis.

    Parameters
    ----------
    input : dask.array.Array
        ``(N, C_in, *spatial)``, float32 or float64, in chunks along N (other axes are made whole).
    weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool
        As :meth:`convserve.Client.conv_layer` (numpy weights, sent with every block).
    target : str, optional
        The service (default: the configured one, as :func:`convolve`).
    **client_options
        Keyword arguments of :class:`convserve.Client`.

    Returns
    -------
    dask.array.Array
        ``(N, C_out, *spatial_out)``, chunked as ``input`` along N.
    """
    if input.ndim < 3:
        raise ValueError(f"input: expected (N, C_in, *spatial) chunked along N; got shape {input.shape}")
    target, client_options = _service(target, client_options)
    w = np.asarray(weight)
    b = None if bias is None else np.asarray(bias)
    batch = input.rechunk({axis: -1 for axis in range(1, input.ndim)})
    spatial = _layer_shape(input.shape[2:], w.shape[2:], stride, padding, dilation, pool)
    out_dtype = np.result_type(input.dtype, w.dtype)
    layer = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups, "padding_mode": padding_mode, "activation": activation, "pool": pool}
    chunks = (batch.chunks[0], (w.shape[0],), *((s,) for s in spatial))
    return da.map_blocks(_layer_block, batch, w, b, layer, target, client_options, chunks=chunks, dtype=out_dtype, meta=np.empty((0,) * input.ndim, out_dtype))


def _layer_block(block: npt.NDArray[Any], w: Any, b: Any, layer: dict[str, Any], target: str, options: dict[str, Any]) -> npt.NDArray[Any]:
    """One batch block through the layer on the service."""
    return _client(target, options).conv_layer(np.ascontiguousarray(block), w, b, **layer)


def _per_axis(value: Any, count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def _layer_shape(spatial: Sequence[int], kernel: Sequence[int], stride: Any, padding: Any, dilation: Any, pool: Mapping[str, Any] | None) -> list[int]:
    """The output's spatial shape (torch's formulas for the convolution and the pooling)."""
    d = len(spatial)
    strides, dilations = _per_axis(stride, d), _per_axis(dilation, d)
    if isinstance(padding, str):
        if padding.lower() == "same":
            out = list(spatial)
        else:
            out = [(n - dl * (k - 1) - 1) // s + 1 for n, k, s, dl in zip(spatial, kernel, strides, dilations)]
    else:
        pads = _per_axis(padding, d)
        out = [(n + 2 * p - dl * (k - 1) - 1) // s + 1 for n, k, s, p, dl in zip(spatial, kernel, strides, pads, dilations)]
    if pool is not None:
        sizes = _per_axis(pool["kernel_size"], d)
        steps = _per_axis(pool["stride"], d) if pool.get("stride") is not None else sizes
        pads = _per_axis(pool["padding"], d) if pool.get("padding") is not None else [0] * d
        out = [(o + 2 * p - k) // s + 1 for o, k, s, p in zip(out, sizes, steps, pads)]
    return out
