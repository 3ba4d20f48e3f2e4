"""Chunk messages of chunked calls, written and read without protobuf's copies of their bytes.

The part messages of a chunked call (``SignalRequestPart``, ``ConvLayerRequestPart`` and
``ResponsePart``) carry one ``TensorChunk`` in their field 2: ``field`` (1, a string), ``offset``
(2, an int64) and ``data`` (3, bytes). Built through protobuf, a chunk's bytes are copied into the
message and again into its serialization; parsed, they are copied out of the received bytes.
Here a chunk is written as one join of a short prefix and the array's bytes, and read as a
memoryview into the received message, so that each side copies a chunk's bytes once.

Only the exact layout protobuf itself writes (fields in order, defaults left out) is read here;
anything else (another writer's field order, repeated fields, unknown fields, a malformed
message) is parsed by protobuf, so every message means what protobuf says it means and is refused
where protobuf refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from convserve._retry import SERVICE
from convserve.v1 import convserve_pb2 as pb

# The chunked RPCs and their request part types (their responses are ResponseParts): the client's
# stubs and the server's handlers of these methods use this module's (de)serializers.
CHUNKED_PARTS: dict[str, Any] = {"ConvolveChunked": pb.SignalRequestPart, "CorrelateChunked": pb.SignalRequestPart, "ConvLayerChunked": pb.ConvLayerRequestPart}

__all__ = ["CHUNKED_PARTS", "SERVICE", "Chunk", "deserializer", "encode", "read_chunk", "serialize"]

_PART_CHUNK = 0x12  # field 2, length-delimited: the part's chunk
_FIELD = 0x0A  # TensorChunk.field: field 1, length-delimited
_OFFSET = 0x10  # TensorChunk.offset: field 2, varint
_DATA = 0x1A  # TensorChunk.data: field 3, length-delimited
_INT64 = 1 << 64


@dataclass(frozen=True)
class Chunk:
    """A part message that holds a chunk: reads like one (``WhichOneof``, ``chunk``) where the code
    handles parts, with ``data`` a view of the received message or of the array being sent."""

    field: str
    offset: int
    data: bytes | memoryview

    def WhichOneof(self, group: str) -> str:  # noqa: N802 (protobuf's name)
        """The part's kind, as protobuf's ``WhichOneof("part")`` says it."""
        return "chunk"

    @property
    def chunk(self) -> Chunk:
        """The chunk itself (a part message's ``chunk`` field)."""
        return self


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode(chunk: Chunk) -> bytes:
    """The serialized part message holding ``chunk`` (what protobuf writes for it, byte for byte)."""
    name = chunk.field.encode()
    head = [bytes((_FIELD,)), _varint(len(name)), name] if name else []
    if chunk.offset:
        head += [bytes((_OFFSET,)), _varint(chunk.offset % _INT64)]
    if len(chunk.data):
        head += [bytes((_DATA,)), _varint(len(chunk.data))]
    prefix = b"".join(head)
    return b"".join((bytes((_PART_CHUNK,)), _varint(len(prefix) + len(chunk.data)), prefix, chunk.data))


def serialize(message: Any) -> bytes:
    """A request or response serializer for chunked calls: a :class:`Chunk` by hand, any other message by protobuf."""
    if isinstance(message, Chunk):
        return encode(message)
    return bytes(message.SerializeToString())


def _read_varint(view: memoryview, at: int) -> tuple[int, int] | None:
    """(value, next position) of the varint at ``at``; None when truncated or longer than 10 bytes."""
    value = shift = 0
    for position in range(at, min(at + 10, len(view))):
        byte = view[position]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position + 1
        shift += 7
    return None


def read_chunk(data: bytes) -> Chunk | None:
    """The chunk of a serialized part message in protobuf's own layout; None for anything else."""
    view = memoryview(data)
    if len(view) < 2 or view[0] != _PART_CHUNK:
        return None
    length = _read_varint(view, 1)
    if length is None or length[1] + length[0] != len(view):
        return None
    at, end = length[1], len(view)
    field, offset, payload = "", 0, view[end:end]
    if at < end and view[at] == _FIELD:
        size = _read_varint(view, at + 1)
        if size is None or size[1] + size[0] > end:
            return None
        try:
            field = str(view[size[1] : size[1] + size[0]], "utf-8")
        except UnicodeDecodeError:
            return None
        at = size[1] + size[0]
    if at < end and view[at] == _OFFSET:
        number = _read_varint(view, at + 1)
        if number is None or number[0] >= _INT64:
            return None
        offset = number[0] - _INT64 if number[0] >= _INT64 // 2 else number[0]
        at = number[1]
    if at < end and view[at] == _DATA:
        size = _read_varint(view, at + 1)
        if size is None or size[1] + size[0] != end:
            return None
        payload, at = view[size[1] : end], end
    return Chunk(field, offset, payload) if at == end and (field or offset or len(payload)) else None


def deserializer(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer of ``message_type`` parts: a :class:`Chunk` when the bytes hold one in protobuf's layout, else the parsed message."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        chunk = read_chunk(data)
        return chunk if chunk is not None else parse(data)

    return deserialize
