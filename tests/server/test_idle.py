"""Idle callers cannot lock anyone out: calls waiting for data hold no compute slot, their waiting
budget is bounded in count and bytes, and an idle timeout ends them and frees what they held."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server

MIB = 2**20
SLOTS = 4  # --max-concurrent-requests: the default slot count on 2 cores


def metrics_url(server: RunningServer) -> str:
    """The metrics URL the server printed after its listening line (started with --metrics-port 0)."""
    assert server.process.stdout is not None
    line = server.process.stdout.readline()
    assert "metrics on" in line, line
    return line.strip().rsplit(" ", 1)[-1]


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the server's metrics (0 when absent); ``labels`` as in the exposition, e.g. ``rpc="X"``."""
    total = 0.0
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.partition("{")[0] == name and labels in sample:
            total += float(value)
    return total


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Poll ``condition`` until it holds (an event on the server, not a duration)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pushback(error: grpc.RpcError) -> int:
    """The ``grpc-retry-pushback-ms`` trailer of a refusal."""
    trailers = dict(error.trailing_metadata() or ())
    return int(trailers["grpc-retry-pushback-ms"])


def chunked_header(elements: int) -> pb.SignalRequestPart:
    """A chunked Convolve header declaring ``elements`` float64 samples to stream (kernel inline)."""
    return pb.SignalRequestPart(
        header=pb.SignalRequest(in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[elements]), in2=codec.encode(np.ones(3)), method=pb.METHOD_DIRECT)
    )


def stream_config() -> pb.StreamRequest:
    """A ConvolveStream config with a short kernel."""
    return pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(np.ones(5))))


class IdleCall:
    """A raw call that sends its first message(s), then nothing until :meth:`finish` (or its end)."""

    def __init__(self, target: str, rpc: str, first: list[object], timeout: float = 60) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(target)
        stub = pb_grpc.ConvolutionServiceStub(self.channel)
        self.code: grpc.StatusCode | None = None
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.started = time.monotonic()
        self.elapsed = 0.0

        def messages() -> Iterator[object]:
            yield from first
            self.release.wait(timeout)

        self.call = getattr(stub, rpc)(messages(), timeout=timeout)
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        try:
            for _ in self.call:
                pass
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.error, self.code = error, error.code()
        self.elapsed = time.monotonic() - self.started
        self.ended.set()

    def finish(self) -> None:
        """Cancel the call if it is still open, and close its channel."""
        self.release.set()
        self.call.cancel()
        self.thread.join(30)
        self.channel.close()


DEFAULT_CLIENT_CALLS = """
import sys, numpy as np, convserve
with convserve.Client(sys.argv[1]) as client:
    x = np.random.default_rng(0).standard_normal(1 << 20)  # 8 MiB: a chunked call
    np.testing.assert_allclose(client.convolve(x[:1000], [1.0, 2.0]), np.convolve(x[:1000], [1.0, 2.0]))
    np.testing.assert_allclose(client.convolve(x, [1.0, 2.0], method="direct"), np.convolve(x, [1.0, 2.0]))
    out = np.concatenate(list(client.convolve_stream(iter([x[:3000], x[3000:5000]]), np.ones(3))))
    np.testing.assert_allclose(out, np.convolve(x[:5000], np.ones(3)))
print("ok")
"""


@pytest.fixture()
def default_slots_server() -> Iterator[tuple[RunningServer, str]]:
    """Two workers and the default slot count on 2 cores; the default idle timeout (30 s)."""
    server = start_server("--workers", "2", "--max-concurrent-requests", str(SLOTS), "--metrics-port", "0")
    url = metrics_url(server)
    yield server, url
    assert stop_server(server) == 0


def test_idle_callers_beyond_the_slots_lock_nobody_out(default_slots_server: tuple[RunningServer, str]) -> None:
    server, url = default_slots_server
    idle = [IdleCall(server.target, "ConvolveChunked", [chunked_header(1 << 20)]) for _ in range(SLOTS + 1)]
    idle += [IdleCall(server.target, "ConvolveStream", [stream_config()]) for _ in range(SLOTS + 1)]
    try:

        def settled() -> bool:  # each idle call is held on the server (waiting or admitted) or has ended
            held = metric(url, "convserve_waiting_streams") + metric(url, "convserve_in_flight_requests")
            return held + sum(call.ended.is_set() for call in idle) >= len(idle)

        wait_for(settled, "the idle calls to reach the server")
        assert not [call.error for call in idle if call.ended.is_set()]  # none was refused
        assert metric(url, "convserve_waiting_streams") == len(idle)
        assert metric(url, "convserve_in_flight_requests") == 0  # they hold no compute slot
        other = subprocess.run([sys.executable, "-c", DEFAULT_CLIENT_CALLS, server.target], capture_output=True, text=True, timeout=120)
        assert other.returncode == 0 and other.stdout.strip() == "ok", other.stderr[-3000:]
        assert all(not call.ended.is_set() for call in idle)  # the idle callers are still there
    finally:
        for call in idle:
            call.finish()


def _small_waiting_server(idle_seconds: float) -> Iterator[tuple[RunningServer, str]]:
    """Two waiting calls at most, a 64 MiB waiting budget and the given idle timeout."""
    server = start_server(
        "--workers",
        "2",
        "--max-concurrent-requests",
        str(SLOTS),
        "--idle-timeout-seconds",
        str(idle_seconds),
        "--max-waiting-streams",
        "2",
        "--waiting-budget-bytes",
        str(64 * MIB),
        "--metrics-port",
        "0",
    )
    url = metrics_url(server)
    yield server, url
    assert stop_server(server) == 0


@pytest.fixture()
def short_idle_server() -> Iterator[tuple[RunningServer, str]]:
    """A 1 s idle timeout."""
    yield from _small_waiting_server(1)


@pytest.fixture()
def small_waiting_server() -> Iterator[tuple[RunningServer, str]]:
    """The default idle timeout (idle calls stay until the test ends them)."""
    yield from _small_waiting_server(30)


def test_the_idle_timeout_ends_idle_calls_and_frees_their_share(short_idle_server: tuple[RunningServer, str]) -> None:
    server, url = short_idle_server
    block = pb.StreamRequest(block=codec.encode(np.ones(300)))
    rounds = [
        [("ConvolveStream", [stream_config()]), ("ConvolveChunked", [chunked_header(1 << 20)])],
        [("ConvolveStream", [stream_config(), block]), ("ConvolveChunked", [chunked_header(1000)])],
    ]
    ended = 0
    for opened in rounds:  # each round takes both waiting places: they must have been freed by the last
        calls = [IdleCall(server.target, rpc, first) for rpc, first in opened]
        try:
            for call in calls:
                assert call.ended.wait(30), "the idle timeout did not end an idle call"
                assert call.code == grpc.StatusCode.DEADLINE_EXCEEDED, call.error
                assert call.error is not None and "idle_timeout_seconds" in call.error.details()
                assert call.elapsed >= 0.9  # not before the timeout
                ended += 1
        finally:
            for call in calls:
                call.finish()
    wait_for(lambda: metric(url, "convserve_waiting_streams") == 0, "the waiting budget to be freed")
    assert metric(url, "convserve_waiting_bytes") == 0
    assert metric(url, "convserve_requests_total", 'code="DEADLINE_EXCEEDED"') == ended
    # Both waiting places are free again: two later streams run to the end.
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        for _ in range(2):
            replies = list(stub.ConvolveStream(iter([stream_config(), pb.StreamRequest(block=codec.encode(np.ones(10)))]), timeout=30))
            out = np.concatenate([codec.decode(r.block, "block") for r in replies])
            np.testing.assert_allclose(out, np.convolve(np.ones(10), np.ones(5)))


def test_the_waiting_budget_is_bounded_in_count_and_bytes(small_waiting_server: tuple[RunningServer, str]) -> None:
    server, url = small_waiting_server
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        # An upload that could never be held while waiting (128 MiB declared, a 64 MiB waiting budget): pushback -1.
        with pytest.raises(grpc.RpcError) as never:
            list(stub.ConvolveChunked(iter([chunked_header(16 * MIB)]), timeout=30))
        assert never.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and pushback(never.value) == -1
        assert "waiting_budget_bytes" in never.value.details()
    held = [
        IdleCall(server.target, "ConvolveStream", [stream_config()], timeout=60),
        IdleCall(server.target, "ConvolveChunked", [chunked_header(5 * MIB)], timeout=60),
    ]  # 40 MiB of 64
    try:
        wait_for(lambda: metric(url, "convserve_waiting_streams") == 2, "two calls waiting")
        # A third waiting call is over the count: refused at once, with a pushback >= 0 (it may fit later).
        for rpc, first in (("ConvolveStream", stream_config()), ("ConvolveChunked", chunked_header(1000))):
            with grpc.insecure_channel(server.target) as channel:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as busy:
                    list(getattr(pb_grpc.ConvolutionServiceStub(channel), rpc)(iter([first]), timeout=30))
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, busy.value.details()
            assert pushback(busy.value) >= 0 and "max_waiting_streams" in busy.value.details()
            assert time.monotonic() - started < 10  # refused at once, not ended by the idle timeout
    finally:
        for call in held:
            call.finish()
    wait_for(lambda: metric(url, "convserve_waiting_streams") == 0, "the cancelled calls to free their share")
    held = [IdleCall(server.target, "ConvolveChunked", [chunked_header(5 * MIB)], timeout=60)]
    try:
        wait_for(lambda: metric(url, "convserve_waiting_bytes") >= 40 * MIB, "a 40 MiB upload waiting")
        # 40 of 64 MiB are held: a 32 MiB upload does not fit now (pushback >= 0: it fits later).
        with grpc.insecure_channel(server.target) as channel:
            with pytest.raises(grpc.RpcError) as full:
                list(pb_grpc.ConvolutionServiceStub(channel).ConvolveChunked(iter([chunked_header(4 * MIB)]), timeout=30))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and pushback(full.value) >= 0
        assert "waiting budget" in full.value.details()
    finally:
        for call in held:
            call.finish()


def test_a_caller_that_reads_nothing_is_ended_and_frees_its_reservation(short_idle_server: tuple[RunningServer, str]) -> None:
    server, url = short_idle_server
    x = np.arange(2 * MIB, dtype=np.float64)  # a 16 MiB result, far beyond what the transport buffers

    def parts() -> Iterator[pb.SignalRequestPart]:
        yield chunked_header(len(x))
        data = x.tobytes()
        for start in range(0, len(data), MIB):
            yield pb.SignalRequestPart(chunk=pb.TensorChunk(field="in1", offset=start, data=data[start : start + MIB]))

    # No BDP probing: the reader's HTTP/2 window stays small, so what it does not read stays on the server.
    with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = pb_grpc.ConvolutionServiceStub(channel).ConvolveChunked(parts(), timeout=60)
        first = next(call)
        assert first.WhichOneof("part") == "header"
        assert metric(url, "convserve_in_flight_requests") == 1  # the result holds its reservation while unsent
        wait_for(lambda: metric(url, "convserve_in_flight_requests") == 0, "the idle timeout to free the reservation")
        assert metric(url, "convserve_reserved_bytes") == 0
        with pytest.raises(grpc.RpcError) as raised:
            list(call)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle_timeout_seconds" in raised.value.details()


def test_a_stream_block_waits_for_a_busy_slot_instead_of_failing() -> None:
    server = start_server("--workers", "1", "--max-concurrent-requests", "1", "--metrics-port", "0")
    url = metrics_url(server)
    x = np.arange(2 * MIB, dtype=np.float64)

    def parts() -> Iterator[pb.SignalRequestPart]:
        yield chunked_header(len(x))
        data = x.tobytes()
        for start in range(0, len(data), MIB):
            yield pb.SignalRequestPart(chunk=pb.TensorChunk(field="in1", offset=start, data=data[start : start + MIB]))

    try:
        # The only slot is held by a result nobody reads yet (small HTTP/2 window: it stays on the server).
        with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as holder:
            held = pb_grpc.ConvolutionServiceStub(holder).ConvolveChunked(parts(), timeout=60)
            assert next(held).WhichOneof("part") == "header"
            assert metric(url, "convserve_in_flight_requests") == 1
            block = np.ones(1000)
            stream = IdleCall(server.target, "ConvolveStream", [stream_config(), pb.StreamRequest(block=codec.encode(block))])
            wait_for(
                lambda: metric(url, "convserve_received_bytes_total", 'rpc="ConvolveStream"') >= block.nbytes,
                "the stream's block to arrive while the slot is taken",
            )
            assert not stream.ended.is_set()
            rest = list(held)  # the holder reads its result: the slot frees, the block is computed
        assert len(b"".join(p.chunk.data for p in rest)) == (len(x) + 2) * 8  # full mode, a 3-tap kernel
        stream.release.set()  # the stream's caller closes its side: the tail follows
        assert stream.ended.wait(30) and stream.code == grpc.StatusCode.OK, stream.error
        stream.finish()
    finally:
        assert stop_server(server) == 0
