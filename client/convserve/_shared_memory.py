"""Client side of same-host shared memory: regions (inputs, result) owned by the client, a pair per call in flight.

The regions are created once (mode 0600, as ``SharedMemory`` creates them), reused by later
calls (so their pages are not first-touched every time) and grown when a call needs more; the
client unlinks them on ``close()``, at interpreter exit, or, if the process dies, through
Python's resource tracker. The server only opens them, and only with the region's capability.

Layout of a region: a header of :data:`HEADER_SIZE` bytes, then the data. The header is
:data:`MAGIC`, then a random 128-bit capability (``secrets.token_bytes(16)``) written when the
region is created, then zeros. Every call sends the capability with the region's name; the
server compares it (constant time) with the header before it reads or writes anything else, so
a neighbour who can list ``/dev/shm`` but cannot read the region cannot have the server use it.
Offsets in requests are from the start of the region and never point into the header.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve import codec
from convserve.v1 import convserve_pb2 as pb

ALIGN = 64
# Free region pairs a client keeps for its next calls; pairs beyond this are unlinked when their
# call ends, so a burst of concurrent calls does not keep its peak of /dev/shm until close().
MAX_FREE_PAIRS = 4
MAGIC = b"CONVSHM1"
CAPABILITY_SIZE = 16
HEADER_SIZE = 64  # MAGIC, capability, zeros; data starts here (a multiple of ALIGN)


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def header(capability: bytes) -> bytes:
    """The header of a region that carries ``capability``."""
    return (MAGIC + capability).ljust(HEADER_SIZE, b"\0")


class _Region:
    """One growable region with its capability."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.memory: shared_memory.SharedMemory | None = None
        self.capability = b""

    def ensure(self, size: int) -> shared_memory.SharedMemory:
        """The region, created or grown so that ``size`` data bytes fit after the header."""
        if self.memory is None or self.memory.size < HEADER_SIZE + size:
            self.release()
            name = f"convserve_{os.getpid()}_{self.purpose}_{secrets.token_hex(6)}"
            memory = shared_memory.SharedMemory(name=name, create=True, size=HEADER_SIZE + max(size, ALIGN))
            assert memory.buf is not None
            capability = secrets.token_bytes(CAPABILITY_SIZE)
            memory.buf[:HEADER_SIZE] = header(capability)
            self.memory, self.capability = memory, capability
        return self.memory

    def release(self) -> None:
        if self.memory is not None:
            memory, self.memory = self.memory, None
            memory.close()
            memory.unlink()


class RegionPair:
    """The inputs region and the result region of one call at a time."""

    def __init__(self) -> None:
        self.inputs = _Region("in")
        self.result = _Region("out")

    def release(self) -> None:
        """Unlink both regions."""
        self.inputs.release()
        self.result.release()


class SharedRegions:
    """The shared-memory regions of one client: a pool of region pairs, one pair per call in flight.

    Concurrent calls (threads, or tasks of an AsyncClient) each take a pair of their own, so no
    call ever reads another's result. A pair goes back to the pool only after a call that ended
    normally; after any failure (a deadline, say, while the server may still write its result)
    the pair is unlinked instead, so a late write can never land in a later call's result.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[RegionPair] = []
        self._pairs: set[RegionPair] = set()
        self._finalizer = weakref.finalize(self, SharedRegions._release_all, self._pairs, self._lock)

    @staticmethod
    def _release_all(pairs: set[RegionPair], lock: threading.Lock) -> None:
        with lock:
            taken = list(pairs)
            pairs.clear()
        for pair in taken:
            pair.release()

    def close(self) -> None:
        """Unlink every region."""
        self._finalizer()

    def take(self) -> RegionPair:
        """A free region pair (a new one when every pair is in use)."""
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("the client is closed")
            pair = self._free.pop() if self._free else RegionPair()
            self._pairs.add(pair)
            return pair

    def give_back(self, pair: RegionPair, reusable: bool) -> None:
        """End a call's use of ``pair``: keep it for the next call, or unlink it (``reusable=False``)."""
        with self._lock:
            if reusable and self._finalizer.alive and pair in self._pairs and len(self._free) < MAX_FREE_PAIRS:
                self._free.append(pair)
                return
            self._pairs.discard(pair)
        pair.release()

    def request(self, arrays: dict[str, npt.NDArray[Any]], options: pb.SignalRequest) -> tuple[pb.SharedSignalRequest, RegionPair]:
        """Copy the inputs into a pair's inputs region and describe them and the result buffer.

        The caller owns the returned pair until it calls :meth:`give_back`.
        """
        pair = self.take()
        try:
            return self._describe(pair, arrays, options), pair
        except BaseException:
            self.give_back(pair, reusable=False)
            raise

    @staticmethod
    def _describe(pair: RegionPair, arrays: dict[str, npt.NDArray[Any]], options: pb.SignalRequest) -> pb.SharedSignalRequest:
        layout, offset = {}, HEADER_SIZE
        for name, array in arrays.items():
            layout[name] = offset
            offset = _aligned(offset + array.nbytes)
        memory = pair.inputs.ensure(offset - HEADER_SIZE)
        buffer = memory.buf
        assert buffer is not None
        message = pb.SharedSignalRequest(options=options)
        for name, array in arrays.items():
            data = codec.wire_bytes(array)
            buffer[layout[name] : layout[name] + len(data)] = data
            getattr(message, name).CopyFrom(
                pb.SharedTensor(
                    region=memory.name, offset=layout[name], dtype=codec.dtype_code(array.dtype, name), shape=array.shape, capability=pair.inputs.capability
                )
            )
        axes = list(options.axes.values) if options.HasField("axes") else None
        bound = result_bound(arrays["in1"].shape, arrays["in2"].shape, axes)
        out = pair.result.ensure(bound)
        message.result.CopyFrom(pb.SharedBuffer(region=out.name, offset=HEADER_SIZE, size=bound, capability=pair.result.capability))
        return message

    @staticmethod
    def read_result(response: pb.SharedResponse, pair: RegionPair) -> npt.NDArray[Any]:
        """Copy the result out of the pair's result region into an array the caller owns."""
        dtype, shape, _ = codec.check_declared(response.result.dtype, response.result.shape, "result")
        assert pair.result.memory is not None
        view = np.ndarray(shape, dtype=dtype, buffer=pair.result.memory.buf, offset=HEADER_SIZE)
        copy = np.array(view, dtype=dtype.newbyteorder("="))
        del view
        return copy


def result_bound(shape1: tuple[int, ...], shape2: tuple[int, ...], axes: list[int] | None) -> int:
    """Bytes that hold any result of these inputs: full size on the convolved axes, complex128 elements."""
    ndim = len(shape1)
    conv = set(range(ndim)) if axes is None else {a % ndim for a in axes if -ndim <= a < ndim} if ndim else set()
    second = list(shape2)
    if len(second) != ndim and axes is not None and len(second) == len(conv):
        second = [1] * ndim
        for axis, size in zip(sorted(conv), shape2):
            second[axis] = size
    second = ([1] * (ndim - len(second)) + second)[-ndim:] if ndim else []
    sizes = [n + m - 1 if i in conv else max(n, m) for i, (n, m) in enumerate(zip(shape1, second))]
    return max(ALIGN, 16 * math.prod(sizes))
