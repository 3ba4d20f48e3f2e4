"""Client side of same-host shared memory: two regions (inputs, result) owned by the client.

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
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

from . import codec
from .v1 import convserve_pb2 as pb

ALIGN = 64
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


class SharedRegions:
    """The inputs and result regions of one client."""

    def __init__(self) -> None:
        self.inputs = _Region("in")
        self.result = _Region("out")
        self._finalizer = weakref.finalize(self, SharedRegions._release_all, self.inputs, self.result)

    @staticmethod
    def _release_all(*regions: _Region) -> None:
        for region in regions:
            region.release()

    def close(self) -> None:
        """Unlink both regions."""
        self._finalizer()

    def request(self, arrays: dict[str, npt.NDArray[Any]], options: pb.SignalRequest) -> pb.SharedSignalRequest:
        """Copy the inputs into the inputs region and describe them and the result buffer."""
        layout, offset = {}, HEADER_SIZE
        for name, array in arrays.items():
            layout[name] = offset
            offset = _aligned(offset + array.nbytes)
        memory = self.inputs.ensure(offset - HEADER_SIZE)
        buffer = memory.buf
        assert buffer is not None
        message = pb.SharedSignalRequest(options=options)
        for name, array in arrays.items():
            data = codec.wire_bytes(array)
            buffer[layout[name]:layout[name] + len(data)] = data
            getattr(message, name).CopyFrom(pb.SharedTensor(region=memory.name, offset=layout[name],
                                                            dtype=codec.dtype_code(array.dtype, name), shape=array.shape,
                                                            capability=self.inputs.capability))
        axes = list(options.axes.values) if options.HasField("axes") else None
        bound = result_bound(arrays["in1"].shape, arrays["in2"].shape, axes)
        out = self.result.ensure(bound)
        message.result.CopyFrom(pb.SharedBuffer(region=out.name, offset=HEADER_SIZE, size=bound,
                                                capability=self.result.capability))
        return message

    def read_result(self, response: pb.SharedResponse) -> npt.NDArray[Any]:
        """Copy the result out of the result region into an array the caller owns."""
        dtype, shape, _ = codec.check_declared(response.result.dtype, response.result.shape, "result")
        assert self.result.memory is not None
        view = np.ndarray(shape, dtype=dtype, buffer=self.result.memory.buf, offset=HEADER_SIZE)
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
