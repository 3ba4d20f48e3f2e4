"""Client side of chunked transfer: a request as header + ordered chunks, a response reassembled.

Tensors up to one chunk travel inline in the header; larger ones are sent as ``CHUNK_BYTES``
pieces of the array's buffer, each copied once, into its serialized message (:mod:`._wire`). The
response's chunks arrive as views of their messages and are copied once, into one preallocated
array.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve import _wire, codec
from convserve.errors import ConvserveError
from convserve.v1 import convserve_pb2 as pb

CHUNK_BYTES = 1024 * 1024


def request_parts(header: Any, arrays: dict[str, npt.NDArray[Any]], part_type: Any, progress: Callable[[int, int], None] | None = None) -> Iterator[Any]:
    """Yield the header (small tensors inline) and then every large tensor's chunks, in order.

    The chunks are :class:`._wire.Chunk` views of the arrays; the chunked stubs serialize them
    with :func:`._wire.serialize` (see :func:`chunked_stubs`). ``progress(sent, total)`` is called
    with the bytes handed to gRPC so far, once the header and then each chunk has been taken.
    """
    streamed = {}
    sent = 0
    views = {name: codec.wire_bytes(array) for name, array in arrays.items()}
    total = sum(len(data) for data in views.values())
    for name, data in views.items():
        tensor = getattr(header, name)
        tensor.CopyFrom(codec.header(arrays[name], name))
        if len(data) <= CHUNK_BYTES:
            tensor.data = data.tobytes()
            sent += len(data)
        else:
            streamed[name] = data
    yield part_type(header=header)
    if progress is not None:
        progress(sent, total)
    for name, data in streamed.items():
        for start in range(0, len(data), CHUNK_BYTES):
            yield _wire.Chunk(name, start, data[start : start + CHUNK_BYTES])
            sent += min(CHUNK_BYTES, len(data) - start)
            if progress is not None:
                progress(sent, total)


def chunked_stubs(stub: Any, channel: Any) -> None:
    """Replace the stub's chunked methods by ones that write and read chunks with :mod:`._wire` (sync or aio channel)."""
    for name in _wire.CHUNKED_PARTS:
        method = channel.stream_stream(
            f"/{_wire.SERVICE}/{name}", request_serializer=_wire.serialize, response_deserializer=_wire.deserializer(pb.ResponsePart), _registered_method=True
        )
        setattr(stub, name, method)


class ResponseAssembler:
    """Rebuilds a chunked result into one preallocated array."""

    def __init__(self) -> None:
        self.array: npt.NDArray[Any] | None = None
        self.info = pb.ComputeInfo()
        self._view: memoryview | None = None
        self._received = 0

    def add(self, part: pb.ResponsePart) -> None:
        """Take one response message."""
        if part.WhichOneof("part") == "header":
            dtype, shape, _ = codec.check_declared(part.header.result.dtype, part.header.result.shape, "result")
            self.array = np.empty(shape, dtype=dtype)
            self._view = self.array.reshape(-1).view(np.uint8).data
            self.info = part.header.info
            return
        if self._view is None or part.chunk.offset != self._received or self._received + len(part.chunk.data) > len(self._view):
            raise ConvserveError("the server sent a malformed chunked response")
        self._view[self._received : self._received + len(part.chunk.data)] = part.chunk.data
        self._received += len(part.chunk.data)

    def result(self) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """The complete array (native byte order) and the compute information."""
        if self.array is None or self._view is None or self._received != len(self._view):
            raise ConvserveError("the server's chunked response ended early")
        native = self.array.dtype.newbyteorder("=")
        return (self.array if native == self.array.dtype else self.array.astype(native)), self.info


def assemble(parts: Iterable[pb.ResponsePart]) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
    """Reassemble a response stream."""
    assembler = ResponseAssembler()
    for part in parts:
        assembler.add(part)
    return assembler.result()


async def assemble_async(parts: AsyncIterator[pb.ResponsePart]) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
    """Reassemble an asyncio response stream."""
    assembler = ResponseAssembler()
    async for part in parts:
        assembler.add(part)
    return assembler.result()
