"""Registered weights: a thread-safe, byte-bounded LRU cache of layer weights and their prepared forms.

A client registers a layer's weight (and bias) once with RegisterWeights and then sends only
activations, naming the weights by their id. The id is a content hash, so the same tensors get
the same id on every replica and registering twice is harmless::

    sha256( "convserve-weights-v1\\n"
            "weight:<dtype>:<d0>,<d1>,...\\n" <weight bytes>
            "bias:<dtype>:<c_out>\\n" <bias bytes>      (or "bias:none\\n" without a bias) )

in hex, where ``<dtype>`` is numpy's name (``float32``, ``float64``) and the bytes are the
elements little-endian in C order, exactly as they travel in a ``Tensor`` message.

Each entry also holds ``prepared``, a mapping the engine fills with forms of the weight it would
otherwise recompute on every call (packed matrices, spectra, flipped kernels). Its arrays count
against the cache's byte limit too; an entry is evicted (least recently used first) when the
total would pass ``weights_cache_bytes``, or when the number of entries would pass
``weights_cache_entries``. A call that names an evicted id gets NOT_FOUND and the client
registers the weights again.

Bytes count what an entry really holds, not only its tensors: each entry is charged
:data:`ENTRY_OVERHEAD_BYTES` for its bookkeeping (measured: 1,097 bytes of server RSS per entry
when registering 30,000 one-element float32 weights, 915 bytes by tracemalloc; the id string,
the entry, its prepared store, the array headers and the LRU slot), and each prepared value
:data:`PREPARED_OVERHEAD_BYTES` for its key and slot.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.errors import InvalidArgumentError, LimitExceeded, NotFound

ID_PREFIX = b"convserve-weights-v1\n"
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# What a prepared object the store cannot measure counts at least (a session, a plan).
OPAQUE_MIN_BYTES = 64 * 1024
# Bookkeeping bytes charged per registered entry (measured ~1.1 KB, see the module docstring).
ENTRY_OVERHEAD_BYTES = 1200
# Bookkeeping bytes charged per prepared value (a dict key, a slot in two dicts).
PREPARED_OVERHEAD_BYTES = 256
DEFAULT_MAX_ENTRIES = 4096


def weights_id(weight: npt.NDArray[Any], bias: npt.NDArray[Any] | None) -> str:
    """The content id of a weight and optional bias (see the module docstring for the format).

    Parameters
    ----------
    weight : numpy.ndarray
        The layer's filters.
    bias : numpy.ndarray or None
        The layer's bias, if any.

    Returns
    -------
    str
        64 hex digits.
    """
    digest = hashlib.sha256(ID_PREFIX)
    for name, array in (("weight", weight), ("bias", bias)):
        if array is None:
            digest.update(f"{name}:none\n".encode())
            continue
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        shape = ",".join(str(int(d)) for d in array.shape)
        digest.update(f"{name}:{array.dtype.name}:{shape}\n".encode())
        digest.update(little.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def nbytes_of(value: Any, opaque: int = 0) -> int:
    """Bytes held by a prepared value: arrays, containers of arrays, objects with an int ``nbytes``.

    Any other object (an ONNX Runtime session, an FFTW plan) counts ``opaque`` bytes; scalars,
    strings and None count nothing.
    """
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(v, opaque) for v in value)
    if isinstance(value, Mapping):
        return sum(nbytes_of(v, opaque) for v in value.values())
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return len(value) if isinstance(value, (str, bytes)) else 0
    size = getattr(value, "nbytes", None)
    return int(size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else opaque


class PreparedStore(MutableMapping[Any, Any]):
    """The ``prepared`` mapping of one entry: a dict whose values' bytes count against the cache.

    Arrays count their ``nbytes``; an object the store cannot measure (an ONNX Runtime session,
    which holds a copy of the weights) counts as much as the weight and bias, and at least
    :data:`OPAQUE_MIN_BYTES`. A value that cannot fit the cache even after every other entry is
    evicted is not kept (the engine computes it again next time), so engine code should use the
    value it computed rather than read it back: ``value = store.get(key)``; if None, compute it
    and ``store[key] = value``.
    """

    def __init__(self, registry: WeightsRegistry, entry: Entry) -> None:
        self._registry = registry
        self._entry = entry
        self._values: dict[Any, Any] = {}
        self._sizes: dict[Any, int] = {}

    def __getitem__(self, key: Any) -> Any:
        with self._registry.lock:
            return self._values[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        own = int(self._entry.weight.nbytes) + (0 if self._entry.bias is None else int(self._entry.bias.nbytes))
        size = nbytes_of(value, opaque=max(OPAQUE_MIN_BYTES, own)) + PREPARED_OVERHEAD_BYTES
        with self._registry.lock:
            old = self._sizes.get(key, 0)
            if not self._registry.make_room(self._entry, size - old):
                return  # would never fit: not kept
            self._values[key] = value
            self._sizes[key] = size
            self._entry.nbytes += size - old
            self._registry.adjust(self._entry, size - old)

    def __delitem__(self, key: Any) -> None:
        with self._registry.lock:
            del self._values[key]
            size = self._sizes.pop(key)
            self._entry.nbytes -= size
            self._registry.adjust(self._entry, -size)

    def __iter__(self) -> Iterator[Any]:
        with self._registry.lock:
            return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)


@dataclass(eq=False)
class Entry:
    """One registered weight: the tensors, their id, the engine's prepared forms and the bytes held."""

    id: str
    weight: npt.NDArray[Any]
    bias: npt.NDArray[Any] | None
    nbytes: int
    prepared: MutableMapping[Any, Any] = field(default_factory=dict)


def _check(weight: npt.NDArray[Any], bias: npt.NDArray[Any] | None) -> None:
    """Refuse weights no layer could use (INVALID_ARGUMENT naming the field)."""
    if weight.dtype.newbyteorder("=") not in _FLOAT_DTYPES:
        raise InvalidArgumentError("weight", f"dtype must be float32 or float64, got {weight.dtype.name}")
    if weight.ndim not in (3, 4, 5):
        raise InvalidArgumentError("weight", f"expected a 3-D, 4-D or 5-D weight (1 to 3 spatial dimensions), got shape {weight.shape}")
    if 0 in weight.shape:
        raise InvalidArgumentError("weight", f"every dimension must be non-empty, got shape {weight.shape}")
    if bias is not None:
        if bias.dtype != weight.dtype:
            raise InvalidArgumentError("bias", f"bias must have the weight's dtype {weight.dtype.name}, got {bias.dtype.name}")
        if bias.ndim != 1 or bias.shape[0] == 0:
            raise InvalidArgumentError("bias", f"expected a non-empty 1-D bias (C_out,), got shape {bias.shape}")


def _native(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A read-only, C-contiguous, native-byte-order array (no copy when it already is one)."""
    result = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")).view()  # a view: the caller's flags stay
    result.flags.writeable = False
    return result


class WeightsRegistry:
    """Registered weights by id, least recently used evicted first, bounded by bytes and by count.

    Parameters
    ----------
    limit_bytes : int
        Most bytes the weights, biases, prepared forms and bookkeeping of every entry may hold
        together (setting ``weights_cache_bytes``).
    max_entries : int
        Most entries kept (setting ``weights_cache_entries``).
    """

    def __init__(self, limit_bytes: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.limit_bytes = limit_bytes
        self.max_entries = max_entries
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._total = 0
        self.evictions = 0

    @property
    def total_bytes(self) -> int:
        """Bytes held by every entry now."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, weights_id: object) -> bool:
        return weights_id in self._entries

    def register(self, weight: npt.NDArray[Any], bias: npt.NDArray[Any] | None = None) -> Entry:
        """Store a weight and bias (or find them already stored) and return their entry.

        Raises
        ------
        InvalidArgumentError
            Not float32/float64, not 3-D to 5-D, empty, or a bias that does not match.
        LimitExceeded
            The tensors alone are larger than the whole cache (never worth retrying).
        """
        _check(weight, bias)
        key = weights_id(weight, bias)
        with self.lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        size = int(weight.nbytes) + (0 if bias is None else int(bias.nbytes)) + ENTRY_OVERHEAD_BYTES
        if size > self.limit_bytes:
            raise LimitExceeded(
                f"the weights take {size} bytes with the entry's bookkeeping; the weights cache holds at most {self.limit_bytes} bytes "
                f"(weights_cache_bytes): send them with each call instead"
            )
        entry = Entry(key, _native(weight), None if bias is None else _native(bias), 0)
        entry.prepared = PreparedStore(self, entry)
        with self.lock:
            existing = self._entries.get(key)
            if existing is not None:  # registered concurrently
                self._entries.move_to_end(key)
                return existing
            self._evict_for(size, keep=None)
            entry.nbytes = size
            self._entries[key] = entry
            self._total += size
        return entry

    def get(self, weights_id: str) -> Entry:
        """The entry of ``weights_id``, now the most recently used; NotFound when unknown or evicted."""
        with self.lock:
            entry = self._entries.get(weights_id)
            if entry is None:
                raise NotFound(
                    f"weights_id {weights_id!r} is not registered on this server (unknown, or evicted from the "
                    "weights cache): register the weights again with RegisterWeights"
                )
            self._entries.move_to_end(weights_id)
            return entry

    def peek(self, weights_id: str) -> Entry | None:
        """The entry of ``weights_id`` or None, without changing the eviction order."""
        with self.lock:
            return self._entries.get(weights_id)

    def make_room(self, entry: Entry, extra: int) -> bool:
        """Evict other entries until ``extra`` more bytes fit; False when they cannot fit at all."""
        with self.lock:
            if extra <= 0:
                return True
            listed = self._entries.get(entry.id) is entry
            own = entry.nbytes if listed else 0
            if own + extra > self.limit_bytes:
                return False
            if not listed:
                return True  # already evicted: its store no longer counts against the cache
            self._evict_for(extra, keep=entry)
            return True

    def adjust(self, entry: Entry, delta: int) -> None:
        """Count ``delta`` bytes more (or fewer) for ``entry``, if it is still in the cache."""
        with self.lock:
            if self._entries.get(entry.id) is entry:
                self._total += delta

    def _evict_for(self, extra: int, keep: Entry | None) -> None:
        """Evict least recently used entries (never ``keep``) until ``extra`` more bytes fit, and,
        when adding an entry (``keep`` None), until one more entry fits."""
        room = 1 if keep is None else 0
        for key in list(self._entries):
            if self._total + extra <= self.limit_bytes and len(self._entries) + room <= self.max_entries:
                return
            victim = self._entries[key]
            if victim is keep:
                continue
            del self._entries[key]
            self._total -= victim.nbytes
            self.evictions += 1
