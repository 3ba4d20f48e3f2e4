"""Chunked transfer: tensors assembled from ordered chunks, and results sent back as chunks.

The header of a chunked request declares every tensor's dtype and shape; the assembler checks
them, then preallocates one array per streamed tensor and copies each chunk straight into it
(no list of pieces joined at the end). A chunk for an unknown tensor, out of order, past the
declared size, or a stream that ends early is refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from .engine.errors import InvalidArgumentError
from .wire import as_engine_error

CHUNK_BYTES = 1024 * 1024


class Assembler:
    """Collects the chunks of a request's streamed tensors into preallocated arrays."""

    def __init__(self, header: Any, fields: tuple[str, ...], max_elements: int) -> None:
        self.arrays: dict[str, npt.NDArray[Any]] = {}
        self._views: dict[str, memoryview] = {}
        self._received: dict[str, int] = {}
        for name in fields:
            if not header.HasField(name):
                continue
            tensor = getattr(header, name)
            try:
                dtype, shape, nbytes = codec.check_declared(tensor.dtype, tensor.shape, name, max_elements)
            except ValueError as exc:
                raise as_engine_error(exc, name) from None
            if len(tensor.data) == nbytes:
                continue  # complete inline (a small kernel); decoded with the header
            if tensor.data:
                raise InvalidArgumentError(f"{name}.data", f"carries {len(tensor.data)} bytes in the header; "
                                           f"send all {nbytes} bytes inline or none (then chunks)")
            array = np.empty(shape, dtype=dtype)  # the wire's little-endian dtype
            self.arrays[name] = array
            self._views[name] = array.reshape(-1).view(np.uint8).data
            self._received[name] = 0

    def add(self, chunk: pb.TensorChunk) -> None:
        """Copy one chunk into its tensor, checking its name, order and size."""
        view = self._views.get(chunk.field)
        if view is None:
            raise InvalidArgumentError("chunk.field", f"{chunk.field!r} is not a tensor announced as streamed "
                                       f"(expected one of {sorted(self._views)})")
        start = self._received[chunk.field]
        if chunk.offset != start:
            raise InvalidArgumentError("chunk.offset", f"chunk of {chunk.field} at offset {chunk.offset}; expected {start} (chunks come in order)")
        end = start + len(chunk.data)
        if end > len(view):
            raise InvalidArgumentError("chunk.data", f"{chunk.field} would get {end} bytes; its shape declares {len(view)}")
        view[start:end] = chunk.data
        self._received[chunk.field] = end

    def finish(self) -> dict[str, npt.NDArray[Any]]:
        """The assembled arrays, once every streamed tensor is complete."""
        for name, view in self._views.items():
            if self._received[name] != len(view):
                raise InvalidArgumentError(f"{name}.data", f"the stream ended after {self._received[name]} of {len(view)} bytes")
        return self.arrays


def response_parts(array: npt.NDArray[Any], info: pb.ComputeInfo, field: str) -> Iterator[pb.ResponsePart]:
    """The header, then the result's bytes in ``CHUNK_BYTES`` chunks."""
    yield pb.ResponsePart(header=pb.ResponseHeader(result=codec.header(array, field), info=info))
    data = codec.wire_bytes(array)
    for start in range(0, len(data), CHUNK_BYTES):
        yield pb.ResponsePart(chunk=pb.TensorChunk(field=field, offset=start, data=data[start:start + CHUNK_BYTES].tobytes()))
