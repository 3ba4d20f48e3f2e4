"""What the proto's comments tell an implementer in another language is what a real server does.

These tests speak the wire protocol through the generated stubs only (as a client written from
the .proto would), against a server process on loopback, and pin each fact the comments state:
chunk fields, interleaving and sizes, the weights-id recipe, the error trailers, the format of
``ServerInfo.wisdom`` and the refusal of empty tensors.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from convserve import _chunked, codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve_server import app
from convserve_server.admission import weights
from convserve_server.transport import chunked
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import RunningServer, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
PROTO = (ROOT / "proto" / "convserve" / "v1" / "convserve.proto").read_text()
REFERENCE = (ROOT / "docs" / "proto.md").read_text()
MIB = 1024 * 1024


def _comment_text() -> str:
    """The proto's comments as one line of prose (``//`` and line breaks removed)."""
    return " ".join(line.split("//", 1)[1].strip() for line in PROTO.splitlines() if "//" in line)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server("--max-elements", str(2**22), "--max-waiting-streams", "1", "--log-level", "ERROR")
    yield running
    assert stop_server(running) == 0


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[Any]:
    options = [("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        yield pb_grpc.ConvolutionServiceStub(channel)


def test_the_chunk_sizes_the_proto_states_are_the_code_s() -> None:
    comments = _comment_text()
    assert "1 MiB (1,048,576 bytes)" in comments and "max_request_bytes plus 64 KiB" in comments
    assert chunked.CHUNK_BYTES == _chunked.CHUNK_BYTES == 1_048_576
    assert app.MESSAGE_OVERHEAD == 64 * 1024


def _signal_parts(in1: np.ndarray, in2: np.ndarray, steps: tuple[int, int]) -> Iterator[pb.SignalRequestPart]:
    """A header, then the chunks of in1 and in2 interleaved (``steps`` bytes each), both streamed."""
    yield pb.SignalRequestPart(header=pb.SignalRequest(in1=codec.header(in1, "in1"), in2=codec.header(in2, "in2")))
    streams = [(name, array.astype(array.dtype.newbyteorder("<")).tobytes(), step) for name, array, step in (("in1", in1, steps[0]), ("in2", in2, steps[1]))]
    pieces = [[(name, start, data[start : start + step]) for start in range(0, len(data), step)] for name, data, step in streams]
    for index in range(max(len(p) for p in pieces)):
        for piece in pieces:
            if index < len(piece):
                name, start, data = piece[index]
                yield pb.SignalRequestPart(chunk=pb.TensorChunk(field=name, offset=start, data=data))


@pytest.mark.parametrize("rpc", ["ConvolveChunked", "CorrelateChunked"])
def test_signal_chunks_may_interleave_and_come_back_as_result_in_1_mib_chunks(stub: Any, rpc: str) -> None:
    rng = np.random.default_rng(1)
    in1, in2 = rng.integers(-9, 9, 300_001).astype(np.int64), rng.integers(-9, 9, 2_001).astype(np.int64)
    # in1 in chunks larger than 1 MiB (accepted up to the message limit), in2 in small ones, interleaved
    parts = list(_signal_parts(in1, in2, (3 * MIB // 2 + 8, 4096)))
    assert [p.chunk.field for p in parts[1:5]] == ["in1", "in2", "in1", "in2"], "the request really interleaves"
    response = list(getattr(stub, rpc)(iter(parts)))
    header, chunks = response[0].header, [p.chunk for p in response[1:]]
    assert response[0].WhichOneof("part") == "header" and all(p.WhichOneof("part") == "chunk" for p in response[1:])
    assert {c.field for c in chunks} == {"result"}
    assert [len(c.data) for c in chunks[:-1]] == [chunked.CHUNK_BYTES] * (len(chunks) - 1) and 0 < len(chunks[-1].data) <= chunked.CHUNK_BYTES
    assert [c.offset for c in chunks] == [i * chunked.CHUNK_BYTES for i in range(len(chunks))]
    result = np.frombuffer(b"".join(c.data for c in chunks), dtype=codec.NUMPY_BY_DTYPE[header.result.dtype]).reshape(tuple(header.result.shape))
    expected = np.convolve(in1, in2) if rpc == "ConvolveChunked" else np.correlate(in1, in2, "full")
    np.testing.assert_array_equal(result, expected)


def test_the_chunked_layer_answers_in_output_chunks(stub: Any) -> None:
    x, w = np.ones((1, 2, 300_000), np.float32), np.ones((1, 2, 3), np.float32)
    payload = x.tobytes()
    header = pb.ConvLayerRequestPart(header=pb.ConvLayerRequest(input=codec.header(x, "input"), weight=codec.encode(w)))
    parts = [header] + [pb.ConvLayerRequestPart(chunk=pb.TensorChunk(field="input", offset=s, data=payload[s : s + MIB])) for s in range(0, len(payload), MIB)]
    response = list(stub.ConvLayerChunked(iter(parts)))
    assert list(response[0].header.result.shape) == [1, 1, 299_998]
    assert {p.chunk.field for p in response[1:]} == {"output"}
    assert np.all(np.frombuffer(b"".join(p.chunk.data for p in response[1:]), np.float32) == 6.0)


def test_the_weights_id_follows_the_recipe_in_the_proto(stub: Any) -> None:
    """The id computed by the recipe of the comment, with and without a bias, is the server's."""
    assert '"convserve-weights-v1\\n"' in PROTO and weights.ID_PREFIX == b"convserve-weights-v1\n"
    w = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    b = np.linspace(-1, 1, 4).astype(np.float64)
    with_bias = b"convserve-weights-v1\n" + b"weight:float64:4,2,3\n" + w.astype("<f8").tobytes() + b"bias:float64:4\n" + b.astype("<f8").tobytes()
    no_bias = b"convserve-weights-v1\n" + b"weight:float64:4,2,3\n" + w.astype("<f8").tobytes() + b"bias:none\n"
    assert stub.RegisterWeights(pb.RegisterWeightsRequest(weight=codec.encode(w), bias=codec.encode(b))).weights_id == hashlib.sha256(with_bias).hexdigest()
    assert stub.RegisterWeights(pb.RegisterWeightsRequest(weight=codec.encode(w))).weights_id == hashlib.sha256(no_bias).hexdigest()


def _failure(call: Any, *args: Any) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    return caught.value


def test_invalid_argument_carries_a_bad_request_and_every_reply_a_request_id(stub: Any) -> None:
    _, ok = stub.Convolve.with_call(pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2))))
    assert "x-request-id" in dict(ok.trailing_metadata())
    error = _failure(stub.Convolve, pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)), mode=99))
    trailers = dict(error.trailing_metadata())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "x-request-id" in trailers
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status.message == error.details() and len(status.details) == 1
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [(v.field, bool(v.description)) for v in bad.field_violations] == [("mode", True)]


def test_a_request_that_never_fits_gets_pushback_minus_one(stub: Any) -> None:
    error = _failure(stub.Convolve, pb.SignalRequest(in1=codec.encode(np.ones(2**22 + 1, np.float32)), in2=codec.encode(np.ones(1, np.float32))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"


def test_a_busy_server_gets_a_non_negative_pushback(stub: Any) -> None:
    """With one waiting slot taken by an upload that holds back its chunks, the next upload is refused with pushback >= 0."""
    x = np.ones(2 * MIB // 8)
    release = threading.Event()

    def holding() -> Iterator[pb.SignalRequestPart]:
        parts = _signal_parts(x, np.ones(3), (MIB, MIB))
        yield next(parts)  # the header: the upload now waits for its data, holding the slot
        release.wait(30)
        yield from parts

    held: list[Any] = []

    def hold() -> None:
        while not release.is_set():  # refused while a probe had the slot for a moment: take it again
            try:
                held.append(list(stub.ConvolveChunked(holding())))
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise

    drained = threading.Thread(target=hold)
    drained.start()
    try:
        ends = time.monotonic() + 20
        while True:  # until a probe is refused: the holder's header has reached the server and holds the slot
            try:
                list(stub.ConvolveChunked(_signal_parts(x, np.ones(3), (MIB, MIB))))
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    pushback = dict(error.trailing_metadata())["grpc-retry-pushback-ms"]
                    break
                raise
            assert time.monotonic() < ends, "the held upload never took the waiting slot"
    finally:
        release.set()
        drained.join(30)
    assert int(pushback) >= 0
    assert held and held[0][0].WhichOneof("part") == "header", "the held upload completes once its chunks are sent"


@pytest.mark.parametrize(
    ("rpc", "message"),
    [
        ("Convolve", pb.SignalRequest(in1=codec.encode(np.zeros(0)), in2=codec.encode(np.ones(3)))),
        ("Correlate", pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.zeros((2, 0))))),
        ("ConvLayer", pb.ConvLayerRequest(input=codec.encode(np.zeros((1, 0, 4), np.float32)), weight=codec.encode(np.ones((1, 0, 2), np.float32)))),
        ("ConvTranspose", pb.ConvTransposeRequest(input=codec.encode(np.zeros((1, 1, 0), np.float32)), weight=codec.encode(np.ones((1, 1, 2), np.float32)))),
        ("RegisterWeights", pb.RegisterWeightsRequest(weight=codec.encode(np.zeros((0, 1, 3), np.float32)))),
    ],
    ids=["convolve", "correlate", "conv_layer", "conv_transpose", "register_weights"],
)
def test_empty_tensors_are_refused(stub: Any, rpc: str, message: Any) -> None:
    error = _failure(getattr(stub, rpc), message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_a_stream_refuses_an_empty_kernel_but_takes_an_empty_block_and_a_scalar_is_one_element(stub: Any) -> None:
    def stream(kernel: np.ndarray, *blocks: np.ndarray) -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(kernel)))
        yield from (pb.StreamRequest(block=codec.encode(block)) for block in blocks)

    error = _failure(lambda: list(stub.ConvolveStream(stream(np.zeros(0), np.ones(4)))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    out = [codec.decode(r.block) for r in stub.ConvolveStream(stream(np.ones(2), np.zeros(0), np.ones(3)))]
    np.testing.assert_array_equal(np.concatenate(out), [1.0, 2.0, 2.0, 1.0])
    scalar = stub.Convolve(pb.SignalRequest(in1=codec.encode(np.array(2.0)), in2=codec.encode(np.array(3.0))))
    assert codec.decode(scalar.result) == 6.0


def test_server_info_wisdom_has_the_documented_format(stub: Any) -> None:
    """The live string has the keys of the proto's example, in its order, each with a value of the stated kind."""
    example = re.search(r'e\.g\. "(effort=.*? file=-)"', REFERENCE)
    assert example, "docs/proto.md has no example of ServerInfo.wisdom"
    keys = [pair.split("=", 1)[0] for pair in example.group(1).split()]
    wisdom = stub.GetServerInfo(pb.GetServerInfoRequest()).wisdom
    assert [pair.split("=", 1)[0] for pair in wisdom.split()] == keys, wisdom
    values = dict(pair.split("=", 1) for pair in wisdom.split())
    assert re.fullmatch(r"FFTW_(ESTIMATE|MEASURE|PATIENT|EXHAUSTIVE)", values["effort"]) and re.fullmatch(r"\d+,\d+", values["wisdom_bytes(double,single)"])
    assert all(values[k].isdigit() for k in ("plans_created", "plans_reused", "cache_bytes", "background_plans", "background_queued"))
    assert values["file"] == "-"


def test_a_call_refused_for_its_token_carries_no_request_id() -> None:
    """UNAUTHENTICATED is decided from the metadata, before the method: no ``x-request-id``, as the proto says."""
    assert "Calls refused before that carry none: UNAUTHENTICATED" in _comment_text()
    guarded = start_server("--auth-token", "t0ken", "--log-level", "ERROR")
    try:
        with grpc.insecure_channel(guarded.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
            error = _failure(stub.Convolve, request)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "x-request-id" not in dict(error.trailing_metadata())
            _, ok = stub.Convolve.with_call(request, metadata=[("authorization", "Bearer t0ken")])
            assert "x-request-id" in dict(ok.trailing_metadata())
    finally:
        assert stop_server(guarded) == 0
