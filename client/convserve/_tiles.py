"""One large Convolve/Correlate split into overlap-save tiles and stitched back (planning only, no I/O).

The one-shot call computes, on each convolved axis, a window of the *valid* convolution of in1
extended by M-1 samples on both sides (``numpy.pad`` with the boundary; zeros when nothing is
extended; a left wrap of M-1 for ``circular``). A tile is a slice of that window: its input is the
matching slice of the extended in1, built here from the WHOLE in1 (so ``wrap`` takes the far end of
the array, not the tile's), and it is sent as ``mode="valid"``, ``boundary="fill"``. Every output
element is computed by exactly one tile, so integer results, and their OUT_OF_RANGE, are those of
the one-shot call. Calls the tiles cannot reproduce (an invalid argument, ``valid`` with in2
larger than in1, a fill value in1's dtype cannot hold, a worst-case integer bound beyond int64)
get no plan: the client then makes the one-shot call, whose answer is the server's own.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import grpc
import numpy as np
import numpy.typing as npt

from convserve._types import ComputeInfo
from convserve.errors import ConvserveError, InvalidArgumentError

# tiles="auto" splits a job only when in1 has at least this many elements, into one tile per replica.
AUTO_MIN_ELEMENTS = 1 << 20
# Tiles one channel has in flight at once (one channel per replica: at most the server's two workers busy).
IN_FLIGHT_PER_CHANNEL = 2
# Status codes that mean "this replica is gone" (the tile is sent again to another one).
REPLICA_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)
# Boundary names and aliases, as the server reads them.
_BOUNDARIES = {"fill": "fill", "constant": "fill", "wrap": "wrap", "circular": "wrap", "symmetric": "symmetric", "symm": "symmetric"}
_BOUNDARIES.update({"reflect": "reflect", "mirror": "reflect", "edge": "edge", "nearest": "edge"})
_INT64_MAX = float(np.iinfo(np.int64).max)
_UINT64_MAX = float(np.iinfo(np.uint64).max)


@dataclass(frozen=True)
class TiledComputeInfo(ComputeInfo):
    """The :class:`ComputeInfo` of a tiled call: ``method`` joins the tiles' methods, ``compute_seconds``
    sums their compute times, and ``tiles`` holds each tile's own info in tile order."""

    tiles: tuple[ComputeInfo, ...] = field(default=())


@dataclass(frozen=True)
class Tile:
    """One tile: where its output goes in the result, and its window of the extended in1 per convolved axis."""

    out: tuple[slice, ...]
    window: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TilePlan:
    """A tiled call: the convolved axes, the aligned kernel, the boundary used to build tile inputs, the tiles."""

    axes: tuple[int, ...]
    h: npt.NDArray[Any]
    sizes_x: tuple[int, ...]
    sizes_h: tuple[int, ...]
    boundary: str  # how a tile input is built: fill (with ``fill``), wrap, symmetric, reflect or edge
    fill: Any
    out_shape: tuple[int, ...]
    tiles: tuple[Tile, ...]
    dtype: np.dtype[Any]  # of a tile's input
    output_dtype: Any  # sent with each tile
    result_dtype: np.dtype[Any] | None  # of the stitched result (None: the tiles')


def tile_count(tiles: int | str | None, size: int, replicas: int) -> int:
    """The number of tiles asked for (``None`` and 1: no tiling; ``"auto"``: one per replica for a large in1)."""
    if tiles is None:
        return 1
    if tiles == "auto":
        return replicas if size >= AUTO_MIN_ELEMENTS and replicas > 1 else 1
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
        message = f"expected None, 'auto' or an int >= 1; got {tiles!r}"
        raise InvalidArgumentError(f"tiles: {message}", field_violations=(("tiles", message),))
    return int(tiles)


def addresses(target: str) -> list[str]:
    """One gRPC target per address of an ``ipv4:``/``ipv6:`` list; any other target as it is."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme) and "," in target:
            return [scheme + part for part in target[len(scheme) :].split(",") if part]
    return [target]


@dataclass(frozen=True)
class Geometry:
    """What a call computes on its convolved axes: the valid convolution of in1 extended by ``boundary``
    (with ``fill``), from ``starts`` for ``lengths`` samples (the kernel ``h`` aligned to in1's dimensions)."""

    axes: tuple[int, ...]
    h: npt.NDArray[Any]
    sizes_x: tuple[int, ...]
    sizes_h: tuple[int, ...]
    boundary: str  # fill (with ``fill``), wrap, symmetric, reflect or edge
    fill: Any
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: np.dtype[Any]  # of the extended in1 (float in1 with a fill value: widened as the server widens it)
    output_dtype: Any  # sent with each piece: the caller's (None when in1 was widened)
    result_dtype: np.dtype[Any] | None  # when in1 was widened: the one-shot result's dtype, the pieces cast to it


def geometry(
    shape: tuple[int, ...], dtype: np.dtype[Any], in2: npt.NDArray[Any], mode: str, axes: Any, boundary: str, fill_value: complex, output_dtype: Any = None
) -> Geometry | None:
    """The geometry of a call on an in1 of ``shape`` and ``dtype``, or None when it cannot be split (see the module)."""
    if not shape or 0 in shape or in2.size == 0 or not isinstance(mode, str) or not isinstance(boundary, str):
        return None
    mode, bound = mode.lower(), _BOUNDARIES.get(boundary.lower())
    conv_axes = _axes(axes, len(shape))
    h = _aligned(shape, in2, conv_axes, axes is not None)
    if bound is None or mode not in ("full", "same", "valid", "circular") or conv_axes is None or h is None:
        return None
    try:
        fill = complex(fill_value)
    except (TypeError, ValueError):
        return None
    sizes_x = tuple(shape[a] for a in conv_axes)
    sizes_h = tuple(h.shape[a] for a in conv_axes)
    extends = mode in ("full", "same") and (bound != "fill" or fill != 0)
    if mode == "circular" and (bound != "fill" or fill != 0):
        return None
    if mode in ("valid", "circular") and any(m > n for n, m in zip(sizes_x, sizes_h)):
        return None
    if extends and bound == "reflect" and any(n == 1 and m > 1 for n, m in zip(sizes_x, sizes_h)):
        return None
    fill_cast, widened = _fill(dtype, h.dtype, fill, output_dtype) if extends and bound == "fill" else (0, dtype)
    if fill_cast is None:
        return None
    send, result = (output_dtype, None) if widened == dtype else (None, np.dtype(output_dtype) if output_dtype is not None else np.result_type(dtype, h.dtype))
    if not extends:
        bound = "wrap" if mode == "circular" else "fill"
    starts, lengths = _window(mode, sizes_x, sizes_h)
    out_shape = [max(a, b) for a, b in zip(shape, h.shape)]
    for axis, length in zip(conv_axes, lengths):
        out_shape[axis] = length
    return Geometry(conv_axes, h, sizes_x, sizes_h, bound, fill_cast, tuple(starts), tuple(lengths), tuple(out_shape), widened, send, result)


def plan(
    in1: npt.NDArray[Any], in2: npt.NDArray[Any], mode: str, axes: Any, boundary: str, fill_value: complex, output_dtype: Any, count: int
) -> TilePlan | None:
    """Plan ``count`` tiles for a call, or None when the call must be made one-shot (see the module)."""
    found = geometry(in1.shape, in1.dtype, in2, mode, axes, boundary, fill_value, output_dtype) if count >= 2 else None
    if found is None:
        return None
    extra = abs(complex(fill_value)) if found.boundary == "fill" and found.fill != 0 else 0.0
    if _beyond_int64(in1, found.h, output_dtype, extra):
        return None
    counts = _split(found.lengths, count)
    if math.prod(counts) < 2:
        return None
    tiles = []
    for pieces in itertools.product(*(_pieces(length, c) for length, c in zip(found.lengths, counts))):
        out = [slice(None)] * in1.ndim
        window = []
        for axis, (lo, hi), start, m in zip(found.axes, pieces, found.starts, found.sizes_h):
            out[axis] = slice(lo, hi)
            window.append((start + lo, start + hi + m - 1))
        tiles.append(Tile(tuple(out), tuple(window)))
    return TilePlan(
        found.axes,
        found.h,
        found.sizes_x,
        found.sizes_h,
        found.boundary,
        found.fill,
        found.out_shape,
        tuple(tiles),
        found.dtype,
        found.output_dtype,
        found.result_dtype,
    )


def _axes(axes: Any, ndim: int) -> tuple[int, ...] | None:
    """The convolved axes, normalized and sorted (None: invalid, left to the server to refuse)."""
    if axes is None:
        return tuple(range(ndim))
    items = [axes] if isinstance(axes, (int, np.integer)) else axes
    try:
        values = [int(a) for a in items]
    except (TypeError, ValueError):
        return None
    if not values or any(isinstance(a, bool) or not -ndim <= a < ndim for a in values):
        return None
    normal = [a % ndim for a in values]
    return tuple(sorted(normal)) if len(set(normal)) == len(normal) and normal == sorted(normal) else None


def _aligned(shape: tuple[int, ...], h: npt.NDArray[Any], axes: tuple[int, ...] | None, axes_given: bool) -> npt.NDArray[Any] | None:
    """in2 with in1's number of dimensions (as the server aligns it), or None if it does not broadcast."""
    if axes is None:
        return None
    if h.ndim != len(shape):
        if not (axes_given and h.ndim == len(axes)):
            return None
        aligned = [1] * len(shape)
        for axis, size in zip(axes, h.shape):
            aligned[axis] = size
        h = h.reshape(aligned)
    for axis in range(len(shape)):
        if axis not in axes and shape[axis] != h.shape[axis] and 1 not in (shape[axis], h.shape[axis]):
            return None
    return h


def _fill(dtype: np.dtype[Any], kernel: np.dtype[Any], fill: complex, output_dtype: Any) -> tuple[Any, np.dtype[Any]]:
    """The fill value and the dtype of the extended in1: a float in1 widened as the server widens it
    (``numpy.result_type`` with the fill's Python type); an integer in1 kept, when it holds the fill exactly."""
    if dtype.kind in "fc":
        natural = np.result_type(dtype, kernel)
        try:
            out = natural if output_dtype is None else np.dtype(output_dtype)
        except TypeError:
            return None, dtype
        complex_work = out.kind == "c" or natural.kind == "c"
        if fill.imag != 0 and not complex_work:
            return None, dtype
        value = fill if complex_work else fill.real
        widened = np.result_type(dtype, np.asarray(value).dtype)
        return widened.type(value), widened
    if fill.imag != 0:
        return None, dtype
    try:
        cast = dtype.type(fill.real)
    except (OverflowError, ValueError, TypeError):
        return None, dtype
    return (cast if complex(cast) == fill else None), dtype


def _beyond_int64(x: npt.NDArray[Any], h: npt.NDArray[Any], output_dtype: Any, fill: float) -> bool:
    """Whether an integer call's worst-case bound (the server's rule) exceeds int64: then only the one-shot call answers."""
    try:
        out = np.result_type(x.dtype, h.dtype) if output_dtype is None else np.dtype(output_dtype)
    except TypeError:
        return True
    if out.kind not in "biu" or x.dtype.kind not in "biu" or h.dtype.kind not in "biu":
        return out.kind in "biu"  # integer output from other inputs: leave it to the one-shot call
    bound = max(float(np.max(np.abs(x.astype(np.float64)))), fill) * float(np.sum(np.abs(h.astype(np.float64)))) * (1 + 1e-9)
    if bound <= _INT64_MAX:
        return False
    return not (out == np.uint64 and x.dtype.kind in "bu" and h.dtype.kind in "bu" and bound <= _UINT64_MAX)


def _window(mode: str, sizes_x: Sequence[int], sizes_h: Sequence[int]) -> tuple[list[int], list[int]]:
    """First index in the valid convolution of the extended in1, and the output length, per convolved axis."""
    if mode == "full":
        return [0] * len(sizes_x), [n + m - 1 for n, m in zip(sizes_x, sizes_h)]
    if mode == "same":
        return [(m - 1) // 2 for m in sizes_h], list(sizes_x)
    if mode == "circular":
        return [0] * len(sizes_x), list(sizes_x)
    return [m - 1 for m in sizes_h], [n - m + 1 for n, m in zip(sizes_x, sizes_h)]


def _split(lengths: Sequence[int], count: int) -> list[int]:
    """Tiles per convolved axis, their product at most ``count``: each prime factor goes to the axis with the longest pieces."""
    counts = [1] * len(lengths)
    factors, rest, p = [], count, 2
    while p * p <= rest:
        while rest % p == 0:
            factors.append(p)
            rest //= p
        p += 1
    if rest > 1:
        factors.append(rest)
    for factor in sorted(factors, reverse=True):
        axis = max(range(len(lengths)), key=lambda a: lengths[a] / counts[a])
        if lengths[axis] // (counts[axis] * factor) >= 1:
            counts[axis] *= factor
    return counts


def _pieces(length: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous, nearly equal ranges covering ``range(length)``."""
    edges = [length * k // count for k in range(count + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def source_indices(j: npt.NDArray[Any], n: int, boundary: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """in1's index for each index ``j`` of in1 (as ``numpy.pad`` extends it), and a mask of the fill positions."""
    if boundary == "wrap":
        return j % n, None
    if boundary == "symmetric":
        k = j % (2 * n)
        return np.where(k < n, k, 2 * n - 1 - k), None
    if boundary == "reflect":
        if n == 1:
            return np.zeros_like(j), None
        k = j % (2 * n - 2)
        return np.where(k < n, k, 2 * n - 2 - k), None
    outside = (j < 0) | (j >= n)
    return np.clip(j, 0, n - 1), (outside if boundary == "fill" and outside.any() else None)


def tile_input(plan: TilePlan, x: npt.NDArray[Any], tile: Tile) -> npt.NDArray[Any]:
    """The tile's slice of the extended in1, built from the whole of in1 (contiguous)."""
    block = x
    masks = []
    for axis, (lo, hi), n, m in zip(plan.axes, tile.window, plan.sizes_x, plan.sizes_h):
        j = np.arange(lo, hi) - (m - 1)
        if j[0] >= 0 and j[-1] < n:
            index = [slice(None)] * x.ndim
            index[axis] = slice(int(j[0]), int(j[-1]) + 1)
            block = block[tuple(index)]
            continue
        source, mask = source_indices(j, n, plan.boundary)
        block = np.take(block, source, axis=axis)
        if mask is not None:
            masks.append((axis, mask))
    block = np.ascontiguousarray(block, dtype=plan.dtype)  # a copy already when a mask applies (np.take copies)
    for axis, mask in masks:
        where: list[Any] = [slice(None)] * x.ndim
        where[axis] = mask
        block[tuple(where)] = plan.fill
    return block


class Stitcher:
    """The result, preallocated at the first tile (its dtype is the server's), filled tile by tile."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self.result: npt.NDArray[Any] | None = None
        self.infos: list[ComputeInfo | None] = [None] * len(plan.tiles)
        self.done = 0

    def place(self, k: int, block: npt.NDArray[Any], info: Any) -> None:
        """Put tile ``k``'s output (and its info, a ComputeInfo message) in place."""
        tile = self.plan.tiles[k]
        if self.result is None:
            self.result = np.empty(self.plan.out_shape, dtype=self.plan.result_dtype or block.dtype)
        view = self.result[tile.out]
        if view.shape != block.shape:
            raise ConvserveError(f"tile {k}: the server returned shape {block.shape}; expected {view.shape}")
        view[...] = block
        self.infos[k] = ComputeInfo(info.method, info.compute_seconds, tuple(info.warnings))
        self.done += 1

    def info(self) -> TiledComputeInfo:
        """The call's info, with every tile's."""
        infos = tuple(i for i in self.infos if i is not None)
        methods = "+".join(sorted({i.method for i in infos}))
        warnings = tuple(dict.fromkeys(w for i in infos for w in i.warnings))
        return TiledComputeInfo(methods, sum(i.compute_seconds for i in infos), warnings, tiles=infos)


class Work:
    """A job's pending tiles and live channels, shared by the workers that send tiles (thread-safe).

    Each channel has its workers; a worker takes the next pending tile. When the tile's replica is
    lost (:data:`REPLICA_LOST`), the channel takes no more tiles and the worker sends that tile to a
    live channel instead (so no tile waits for a worker that already left).
    """

    def __init__(self, tiles: int, channels: int) -> None:
        self._pending = list(range(tiles))
        self._alive = list(range(channels))
        self._stopped = False
        self._lock = threading.Lock()

    def take(self, channel: int) -> int | None:
        """The next tile for a worker of ``channel``, or None: nothing left, the job stopped, or the channel lost."""
        with self._lock:
            if self._stopped or channel not in self._alive or not self._pending:
                return None
            return self._pending.pop(0)

    def lost(self, channel: int, tile: int, error: ConvserveError) -> int | None:
        """Sending ``tile`` on ``channel`` failed: the live channel to send it to now, or None (raise ``error``)."""
        if error.code not in REPLICA_LOST:
            return None
        with self._lock:
            if channel in self._alive:
                self._alive.remove(channel)
            return self._alive[tile % len(self._alive)] if self._alive and not self._stopped else None

    def stop(self) -> None:
        """No more tiles for anyone (the job failed)."""
        with self._lock:
            self._stopped = True
