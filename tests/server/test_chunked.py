"""Chunked transfer: round trips across the threshold and the message limit; malformed streams refused."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.signal as ss

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server
from tests.engine.layers.test_conv_layer import ref_conv
from tests.server.test_idle import metric, metrics_url, wait_for

RNG = np.random.default_rng(11)
MIB = 2**20


@pytest.fixture(scope="module")
def small_message_server() -> Iterator[RunningServer]:
    """A server whose single-message limit is 1 MiB: anything larger must be chunked."""
    server = start_server("--max-request-bytes", str(MIB), "--max-output-bytes", str(64 * MIB))
    yield server
    assert stop_server(server) == 0


@pytest.mark.parametrize("size", [MIB // 8 - 3, MIB // 8, 3 * MIB // 8 + 5])  # float64: below, at and beyond one chunk
def test_round_trip_across_the_threshold(small_message_server: RunningServer, size: int) -> None:
    x = RNG.standard_normal(size)
    h = RNG.standard_normal(7)
    with convserve.Client(small_message_server.target, chunk_threshold=MIB // 2, timeout=60) as client:
        for mode in ("full", "same", "valid"):
            np.testing.assert_allclose(client.convolve(x, h, mode), ss.convolve(x, h, mode), atol=1e-10)
        np.testing.assert_allclose(client.correlate(x, h), ss.correlate(x, h), atol=1e-10)


def test_beyond_the_single_message_limit(small_message_server: RunningServer) -> None:
    image = RNG.integers(0, 256, (1200, 900)).astype(np.uint8)  # ~1 MiB in, 4 MiB out as float32
    kernel = np.full((3, 3), 1 / 9, np.float32)
    with convserve.Client(small_message_server.target, chunk_threshold=10 * MIB, timeout=60) as unary:
        with pytest.raises(convserve.ResourceExhaustedError):
            unary.convolve(np.ones(2 * MIB // 8), [1.0])  # 2 MiB in one message: over the server's limit
    with convserve.Client(small_message_server.target, chunk_threshold=MIB // 2, timeout=60) as client:
        result = client.convolve(image, kernel, "same")
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, ss.convolve(image, kernel, "same"), rtol=1e-5, atol=1e-3)
        big = RNG.standard_normal(3 * MIB // 8)
        np.testing.assert_array_equal(client.convolve(big, [1.0]), big)


def test_conv_layer_chunked(small_message_server: RunningServer) -> None:
    x = RNG.standard_normal((2, 3, 160, 120)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    with convserve.Client(small_message_server.target, chunk_threshold=MIB // 2, timeout=60) as client:
        result = client.conv_layer(x, w, b, padding=1)
    expected = ref_conv(x[:1, :, :12, :10], w, b, (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros")
    assert result.shape == (2, 4, 160, 120)
    assert np.max(np.abs(result[:1, :, :11, :9] - expected[:, :, :11, :9])) <= 1e-5 * np.abs(expected).max()


def test_async_client_chunked(small_message_server: RunningServer) -> None:
    x = RNG.standard_normal(300_000)

    async def run() -> np.ndarray:
        async with convserve.AsyncClient(small_message_server.target, chunk_threshold=MIB // 2, timeout=60) as client:
            return await client.convolve(x, [1.0, 1.0])  # type: ignore[no-any-return]

    np.testing.assert_allclose(asyncio.run(run()), np.convolve(x, [1.0, 1.0]))


def _header(in1: pb.Tensor, in2: pb.Tensor | None = None) -> pb.SignalRequestPart:
    return pb.SignalRequestPart(header=pb.SignalRequest(in1=in1, in2=in2 or codec.encode(np.ones(3))))


def _chunk(field: str, offset: int, data: bytes) -> pb.SignalRequestPart:
    return pb.SignalRequestPart(chunk=pb.TensorChunk(field=field, offset=offset, data=data))


DECLARED = pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[4])
MALFORMED = {
    "no header": ([_chunk("in1", 0, b"\0" * 32)], "header"),
    "empty stream": ([], "header"),
    "unknown field": ([_header(DECLARED), _chunk("in3", 0, b"\0" * 32)], "chunk.field"),
    "out of order": ([_header(DECLARED), _chunk("in1", 8, b"\0" * 24)], "chunk.offset"),
    "too long": ([_header(DECLARED), _chunk("in1", 0, b"\0" * 40)], "chunk.data"),
    "short": ([_header(DECLARED), _chunk("in1", 0, b"\0" * 16)], "in1.data"),
    "second header": ([_header(DECLARED), _header(DECLARED)], "chunk"),
    "negative dimension": ([_header(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[-4]))], "in1.shape"),
    "unknown dtype": ([_header(pb.Tensor(dtype=99, shape=[4]))], "in1.dtype"),
    "partial inline data": ([_header(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[4], data=b"\0" * 8))], "in1.data"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_streams_are_invalid_argument(server: RunningServer, case: str) -> None:
    parts, field = MALFORMED[case]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ConvolveChunked(iter(parts), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert raised.value.details().startswith(field), raised.value.details()


def test_a_chunked_tensor_over_the_element_limit_can_never_fit(server: RunningServer) -> None:
    parts = [_header(pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2**40]))]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ConvolveChunked(iter(parts), timeout=10))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
    assert raised.value.details().startswith("in1"), raised.value.details()
    assert dict(raised.value.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"


def test_a_stream_too_large_for_the_budget_is_refused_before_its_data(server: RunningServer) -> None:
    declared = pb.Tensor(dtype=pb.DTYPE_COMPLEX128, shape=[4096, 4096])  # allowed sizes, too much FFT work memory
    release = threading.Event()

    def parts() -> Iterator[pb.SignalRequestPart]:
        yield _header(declared, declared)
        release.wait(20)  # no data is ever sent: the server must answer from the header alone

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ConvolveChunked(parts(), timeout=30))
        release.set()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
    assert "budget" in raised.value.details() and time.perf_counter() - started < 10


def test_a_deadline_or_cancel_during_an_upload_is_recorded_as_such(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = start_server("--metrics-port", "0", stderr=log)
    url = metrics_url(server)
    release = threading.Event()
    declared = pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[MIB])

    def slow_parts() -> Iterator[pb.SignalRequestPart]:
        yield _header(declared)
        yield _chunk("in1", 0, b"\0" * 65536)
        release.wait(30)  # the rest never comes in time

    def count(code: str) -> float:
        return metric(url, "convserve_requests_total", f'code="{code}"')

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                list(stub.ConvolveChunked(slow_parts(), timeout=1))
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for(lambda: count("DEADLINE_EXCEEDED") + count("INVALID_ARGUMENT") >= 1, "the server to record the call")
            call = stub.ConvolveChunked(slow_parts(), timeout=30)
            wait_for(lambda: metric(url, "convserve_received_bytes_total", 'rpc="ConvolveChunked"') >= 2 * 65536, "the second upload's first chunk to arrive")
            call.cancel()
            wait_for(lambda: count("CANCELLED") + count("INVALID_ARGUMENT") >= 1, "the server to record the cancel")
        assert (count("DEADLINE_EXCEEDED"), count("CANCELLED"), count("INVALID_ARGUMENT")) == (1, 1, 0), log_path.read_text()
        assert metric(url, "convserve_waiting_streams") == 0  # both freed their waiting share
    finally:
        release.set()
        assert stop_server(server) == 0
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    codes = sorted(r.get("code", "") for r in records if r.get("rpc") == "ConvolveChunked")
    assert codes == ["CANCELLED", "DEADLINE_EXCEEDED"], records
