"""Chunk messages written and read by hand mean exactly what protobuf says they mean."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from convserve import _wire
from convserve.v1 import convserve_pb2 as pb

PARTS = (pb.SignalRequestPart, pb.ConvLayerRequestPart, pb.ResponsePart)
fields = st.text(max_size=12)
offsets = st.integers(min_value=-(2**63), max_value=2**63 - 1)
payloads = st.binary(max_size=300)


def _as_protobuf(parsed: object, part_type: type) -> object:
    """What a deserializer returned, as the protobuf message it stands for."""
    if isinstance(parsed, _wire.Chunk):
        return part_type(chunk=pb.TensorChunk(field=parsed.field, offset=parsed.offset, data=bytes(parsed.data)))
    return parsed


@settings(max_examples=300, deadline=None)
@given(fields, offsets, payloads, st.sampled_from(PARTS))
def test_a_hand_written_chunk_is_protobufs_own_serialization(field: str, offset: int, data: bytes, part_type: type) -> None:
    expected = part_type(chunk=pb.TensorChunk(field=field, offset=offset, data=data))
    written = _wire.serialize(_wire.Chunk(field, offset, memoryview(data)))
    assert written == expected.SerializeToString()
    assert part_type.FromString(written) == expected
    assert _as_protobuf(_wire.deserializer(part_type)(written), part_type) == expected


def test_headers_and_other_messages_go_through_protobuf() -> None:
    header = pb.SignalRequestPart(header=pb.SignalRequest(mode=pb.MODE_SAME))
    assert _wire.serialize(header) == header.SerializeToString()
    assert _wire.deserializer(pb.SignalRequestPart)(header.SerializeToString()) == header


def test_a_chunk_in_another_layout_is_read_by_protobuf() -> None:
    reordered = b"\x12\x0a" + b"\x1a\x03abc" + b"\x0a\x03in1"  # data before field: valid protobuf, not protobuf's own layout
    parsed = _wire.deserializer(pb.SignalRequestPart)(reordered)
    assert isinstance(parsed, pb.SignalRequestPart) and parsed.chunk.field == "in1" and parsed.chunk.data == b"abc"
    repeated = b"\x12\x0a" + b"\x1a\x03abc" + b"\x1a\x03xyz"  # the last value wins, as protobuf says
    assert _wire.deserializer(pb.SignalRequestPart)(repeated).chunk.data == b"xyz"


@pytest.mark.parametrize(
    "message",
    [
        b"\x12\x05\x1a\x09abc",  # a length past the message's end
        b"\x12\x03\x0a\x02\xff\xfe",  # a field name that is not UTF-8
        b"\x12\x0b\x10" + b"\xff" * 10,  # a truncated varint
    ],
)
def test_malformed_chunks_are_refused_as_protobuf_refuses_them(message: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.SignalRequestPart.FromString(message)
    with pytest.raises(DecodeError):
        _wire.deserializer(pb.SignalRequestPart)(message)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(PARTS))
def test_any_bytes_parse_as_protobuf_parses_them(message: bytes, part_type: type) -> None:
    try:
        expected = part_type.FromString(message)
    except DecodeError:
        with pytest.raises(DecodeError):
            _wire.deserializer(part_type)(message)
        return
    assert _as_protobuf(_wire.deserializer(part_type)(message), part_type) == expected


@settings(max_examples=500, deadline=None)
@given(fields, offsets, payloads, st.binary(max_size=6))
def test_chunks_with_anything_after_them_parse_as_protobuf_parses_them(field: str, offset: int, data: bytes, tail: bytes) -> None:
    message = _wire.encode(_wire.Chunk(field, offset, data)) + tail
    try:
        expected = pb.ResponsePart.FromString(message)
    except DecodeError:
        with pytest.raises(DecodeError):
            _wire.deserializer(pb.ResponsePart)(message)
        return
    assert _as_protobuf(_wire.deserializer(pb.ResponsePart)(message), pb.ResponsePart) == expected
