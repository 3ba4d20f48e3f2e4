"""Prepared-weights stores for ConvLayer calls that bring no ``prepared`` store of their own.

The server hands registered weights' store to
:func:`convserve_server.engine.layers.conv_layer.conv_layer`; a call with
inline weights has none. For those, this module keeps a small LRU of stores keyed by a
fingerprint of the weights (with their shape and dtype), so a client that sends the same
weights with every call still gets the packed matrices, FFT spectra and ONNX Runtime sessions
made once. The fingerprint is one dot product (numpy's einsum, one thread) of the weights with a random
vector drawn once per process (16 us for 0.59 MB here, where SHA-256 took 330 us: on small layers with
large weights that was a third of the call); a store found by it is used only if its copy of
the weights is bit for bit the caller's (25 us more), so two weights with one fingerprint never
share a store (the second one is then keyed by its SHA-256 digest instead). Weights of more than
2^20 elements are keyed by their SHA-256 digest, so the random vector stays at most 8 MB.

The engine configuration's ``layer_cache_weights`` sets how many weights' stores are kept
(default 16; 0 disables the cache, and then nothing is memoized across calls), and
``layer_cache_bytes`` how many bytes of prepared forms they may hold together (default 256 MiB;
an object that is not an array, such as an ONNX Runtime session, counts as much as the weights
it was made from). Both are read on every use (:func:`convserve_server.engine.config.current`),
so a new configuration applies from the next call on.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import config

_STORES: OrderedDict[bytes, dict[Any, Any]] = OrderedDict()
_WEIGHT_BYTES: dict[bytes, int] = {}
_WEIGHTS: dict[bytes, NDArray[Any]] = {}  # each store's copy of its weights
_RANDOM: dict[str, NDArray[Any]] = {}  # per dtype: the fingerprints' random vector (grown on demand)
FINGERPRINT_MAX_ELEMENTS = 1 << 20  # larger weights are keyed by their SHA-256 digest
_LOCK = threading.Lock()


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


def _evict(keep: bytes) -> None:
    """Drop least recently used stores (never ``keep``) past the count and byte bounds (under the lock)."""
    limit, limit_bytes = capacity(), capacity_bytes()
    while len(_STORES) > 1 and (len(_STORES) > limit or sum(_held(s, _WEIGHT_BYTES.get(k, 0)) for k, s in _STORES.items()) > limit_bytes):
        oldest = next(k for k in _STORES if k != keep)
        del _STORES[oldest]
        _WEIGHT_BYTES.pop(oldest, None)
        _WEIGHTS.pop(oldest, None)


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


def _same(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Whether two arrays of one shape and dtype hold the same bytes (NaN and -0.0 included)."""
    as_int = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(np.ascontiguousarray(a).view(as_int), np.ascontiguousarray(b).view(as_int)))


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
    limit = capacity()
    if limit == 0:
        return {}
    key = fingerprint(weight)
    with _LOCK:
        kept = _WEIGHTS.get(key)
    if kept is not None and not _same(kept, weight):  # another weight with this fingerprint
        key = b"sha256:" + digest(weight)
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = {}
            _WEIGHT_BYTES[key] = int(weight.nbytes)
            _WEIGHTS[key] = np.array(weight, copy=True)
        else:
            _STORES.move_to_end(key)
        _evict(key)  # also accounts for what earlier calls added to the stores
        return store


def clear() -> None:
    """Drop every store."""
    with _LOCK:
        _STORES.clear()
        _WEIGHT_BYTES.clear()
        _WEIGHTS.clear()
