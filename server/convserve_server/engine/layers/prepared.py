"""Prepared-weights stores for ConvLayer calls that bring no ``prepared`` store of their own.

The server hands registered weights' store to
:func:`convserve_server.engine.layers.conv_layer.conv_layer`; a call with
inline weights has none. For those, this module keeps a small LRU of stores keyed by the
weights' content (with their shape and dtype), so a client that sends the same weights with
every call still gets the packed matrices, FFT spectra and ONNX Runtime sessions made once.

A lookup costs one pass over the weights at most. Weights of up to :data:`SMALL_KEY_BYTES` are
keyed by their bytes (exact: the key is the content). Larger weights are keyed by
:data:`SAMPLES` of their values at positions drawn once per process and size (secret to the
process, so colliding weights cannot be made on purpose), and a store found by that key is
used only if its own copy of the weights is bit for bit the caller's (NaN and -0.0 included;
one SIMD comparison, 12 us for 0.59 MB here). Weights that share the sample but not the bytes
(a sparse update of the same weights, say) are keyed by a fingerprint next, one dot product with
a random vector (:func:`fingerprint`), then by their SHA-256 digest, each verified the same way,
so two weights never share a store. Measured here with 16 stores kept, for 16 KB of weights:
14-22 us per lookup with the fingerprint first and a sum over every store's bytes, against
6-9 us now (0.59 MB: the fingerprint and the comparison alone took 41 us, a lookup now 22 us).

The engine configuration's ``layer_cache_weights`` sets how many weights' stores are kept
(default 16; 0 disables the cache, and then nothing is memoized across calls), and
``layer_cache_bytes`` how many bytes of prepared forms they may hold together (default 256 MiB;
an object that is not an array, such as an ONNX Runtime session, counts as much as the weights
it was made from). The bytes a store holds are counted again each time it is looked up, and
when the next lookup of another store follows (the forms a call adds to its store count from
then on). Both bounds are read on every use (:func:`convserve_server.engine.config.current`),
so a new configuration applies from the next call on.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import config

_STORES: OrderedDict[bytes, dict[Any, Any]] = OrderedDict()
_WEIGHT_BYTES: dict[bytes, int] = {}
_WEIGHTS: dict[bytes, NDArray[Any]] = {}  # each sampled, fingerprinted or digested store's copy of its weights
_HELD: dict[bytes, int] = {}  # bytes each store held when last counted
_RANDOM: dict[str, NDArray[Any]] = {}  # per dtype: the fingerprints' random vector (grown on demand)
_POSITIONS: dict[int, NDArray[np.intp]] = {}  # per element count: the sampled key's positions
FINGERPRINT_MAX_ELEMENTS = 1 << 20  # larger weights skip the fingerprint (the random vector stays at most 8 MB)
SMALL_KEY_BYTES = 4096  # weights up to this size are keyed by their bytes
SAMPLES = 64  # values that key larger weights
MAX_POSITION_SETS = 256  # sizes whose sample positions are kept
_LOCK = threading.Lock()
_last = [b""]  # the key the previous lookup returned (its forms are counted at the next lookup)


def capacity() -> int:
    """How many weights' stores are kept (the configuration's ``layer_cache_weights``, default 16)."""
    return max(0, config.current().layer_cache_weights)


def capacity_bytes() -> int:
    """Bytes the stores may hold together (the configuration's ``layer_cache_bytes``, default 256 MiB)."""
    return max(0, config.current().layer_cache_bytes)


def _held(store: dict[Any, Any], weight_bytes: int) -> int:
    """Bytes a store holds: its copy of the weights, arrays by ``nbytes``, anything else as much as the weights."""
    total = weight_bytes
    for value in list(store.values()):
        total += int(value.nbytes) if isinstance(value, np.ndarray) else weight_bytes
    return total


def _count(key: bytes) -> None:
    """Count again the bytes store ``key`` holds, if it is still kept (under the lock)."""
    store = _STORES.get(key)
    if store is not None:
        _HELD[key] = _held(store, _WEIGHT_BYTES[key])


def _evict(keep: bytes) -> None:
    """Drop least recently used stores (never ``keep``) past the count and byte bounds (under the lock)."""
    limit, limit_bytes = capacity(), capacity_bytes()
    while len(_STORES) > 1 and (len(_STORES) > limit or sum(_HELD.values()) > limit_bytes):
        oldest = next(k for k in _STORES if k != keep)
        del _STORES[oldest]
        for table in (_WEIGHT_BYTES, _WEIGHTS, _HELD):
            table.pop(oldest, None)


def digest(array: NDArray[Any] | None) -> bytes:
    """A 16-byte SHA-256 digest of an array's shape, dtype and bytes (``b""`` for None)."""
    if array is None:
        return b""
    h = hashlib.sha256()  # SHA-NI here: 3x BLAKE2b's speed (133 against 389 us for 230 KB)
    h.update(f"{array.shape}{array.dtype.str}".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.digest()[:16]


def fingerprint(array: NDArray[Any]) -> bytes:
    """A fast, process-keyed fingerprint of a float array: shape, dtype and ``array . r`` for a random ``r``.

    Not collision-proof (equal fingerprints are verified by :func:`store_for`), but the random
    vector is secret to the process, so colliding weights cannot be made on purpose.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.kind != "f" or flat.size > FINGERPRINT_MAX_ELEMENTS:  # the random vector stays small
        return b"sha256:" + digest(array)
    with _LOCK:
        r = _RANDOM.get(flat.dtype.str)
        if r is None or r.size < flat.size:
            size = min(FINGERPRINT_MAX_ELEMENTS, max(flat.size, 2 * (0 if r is None else r.size), 1024))
            r = _RANDOM[flat.dtype.str] = np.random.default_rng().standard_normal(size).astype(flat.dtype)
    # einsum's own loop on one thread: a BLAS dot waits for its second thread when the other core is busy.
    with np.errstate(over="ignore", invalid="ignore"):
        dot = np.einsum("i,i->", flat, r[: flat.size])
    return f"{array.shape}{array.dtype.str}".encode() + np.asarray(dot).tobytes()


def sample_key(array: NDArray[Any]) -> bytes:
    """Shape, dtype and :data:`SAMPLES` values of ``array`` at positions drawn once per process and size."""
    flat = np.ascontiguousarray(array).reshape(-1)
    positions = _POSITIONS.get(flat.size)
    if positions is None:
        with _LOCK:
            if len(_POSITIONS) >= MAX_POSITION_SETS:
                _POSITIONS.clear()
            drawn = np.random.default_rng().choice(flat.size, min(SAMPLES, flat.size), replace=False)
            positions = _POSITIONS[flat.size] = np.sort(drawn).astype(np.intp)
    return b"sample:" + f"{array.shape}{array.dtype.str}".encode() + flat[positions].tobytes()


def _same(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Whether two arrays of one shape and dtype hold the same bytes (NaN and -0.0 included)."""
    ua = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    ub = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if ua.size != ub.size:
        return False
    if ua.size < (1 << 31):  # OpenCV's SIMD comparison: 12 against 17 us for numpy's on 0.59 MB
        return bool(cv2.norm(ua, ub, cv2.NORM_INF) == 0)
    return bool(np.array_equal(ua, ub))


def _keys(weight: NDArray[Any]) -> Iterator[bytes]:
    """The keys a weight's store may have, cheapest first; each but the bytes key is verified by content."""
    if weight.nbytes <= SMALL_KEY_BYTES:
        yield b"bytes:" + f"{weight.shape}{weight.dtype.str}".encode() + np.ascontiguousarray(weight).tobytes()
        return
    yield sample_key(weight)
    yield fingerprint(weight)
    yield b"sha256:" + digest(weight)


def store_for(weight: NDArray[Any]) -> MutableMapping[Any, Any]:
    """The store of these weights (by content), created on first use; LRU-bounded.

    Parameters
    ----------
    weight : ndarray
        The layer's weights.

    Returns
    -------
    MutableMapping
        A dict shared by every call with identical weights while it stays in the LRU (a fresh,
        unshared dict when the cache is disabled).
    """
    if capacity() == 0:
        return {}
    for key in _keys(weight):
        if key.startswith(b"bytes:"):
            break
        with _LOCK:
            kept = _WEIGHTS.get(key)
        if kept is None or _same(kept, weight):
            break
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = {}
            _WEIGHT_BYTES[key] = int(weight.nbytes)
            if not key.startswith(b"bytes:"):  # a bytes key is its own copy
                _WEIGHTS[key] = np.array(weight, copy=True)
        else:
            _STORES.move_to_end(key)
        _count(_last[0])  # what the previous call added to its store
        _count(key)
        _last[0] = key
        _evict(key)
        return store


def clear() -> None:
    """Drop every store."""
    with _LOCK:
        for table in (_STORES, _WEIGHT_BYTES, _WEIGHTS, _HELD):
            table.clear()
