"""The memory budget bounds real memory: streams reserve for their real channel count, and a
chunked result keeps its reservation until its last chunk is sent (peak RSS measured)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.server import rpc_entries
from tests.conftest import RunningServer, start_server, status_kib, stop_server
from tests.server.test_idle import metric, metrics_url, pushback, wait_for

MIB = 2**20
BUDGET = 160 * MIB
WAITING = 64 * MIB
SLACK = 32 * MIB  # gRPC's transport buffers and the allocator's slack, outside any budget


@pytest.fixture()
def budget_server() -> Iterator[tuple[RunningServer, str, int]]:
    """A 160 MiB compute budget and a 64 MiB waiting budget; yields the server, its metrics URL and
    its RSS (KiB) after a warm-up call."""
    server = start_server(
        "--workers",
        "2",
        "--max-concurrent-requests",
        "4",
        "--memory-budget-bytes",
        str(BUDGET),
        "--waiting-budget-bytes",
        str(WAITING),
        "--fftw-threads",
        "1",
        "--metrics-port",
        "0",
    )
    url = metrics_url(server)
    with convserve.Client(server.target) as client:
        client.convolve(np.ones(1000), np.ones(3))
        np.concatenate(list(client.convolve_stream(iter([np.ones((300, 2), np.float32)]), np.ones(5))))
    yield server, url, status_kib(server.process.pid, "VmRSS")
    assert stop_server(server) == 0


def _growth(server: RunningServer, baseline_kib: int) -> int:
    """Peak RSS of the server (VmHWM) over its warm baseline, in bytes."""
    return (status_kib(server.process.pid, "VmHWM") - baseline_kib) * 1024


def test_a_stream_reserves_for_its_real_channel_count(budget_server: tuple[RunningServer, str, int]) -> None:
    server, url, baseline = budget_server
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal(8192)  # (M,): expanded per channel by the engine
    with convserve.Client(server.target) as client:
        # 1024 channels: the kernel state alone is 268 MB, over what a waiting stream may hold.
        wide = (rng.standard_normal((4096, 1024)).astype(np.float32) for _ in range(3))
        with pytest.raises(convserve.ResourceExhaustedError) as refused:
            list(client.convolve_stream(wide, kernel))
        assert "waiting_budget_bytes" in str(refused.value)
        # 16 channels fit: the stream runs, within the budgets, and gives the right numbers.
        blocks = [rng.standard_normal((4096, 16)).astype(np.float32) for _ in range(6)]
        out = np.concatenate(list(client.convolve_stream(iter(blocks), kernel)))
    signal = np.concatenate(blocks).astype(np.float64)
    expected = np.stack([np.convolve(signal[:, c], kernel) for c in range(16)], 1)
    assert out.shape == expected.shape
    assert np.max(np.abs(out - expected)) <= 1e-4 * np.abs(expected).max()
    growth = _growth(server, baseline)
    print(f"stream: peak RSS growth {growth / MIB:.0f} MiB; budgets {BUDGET // MIB} + {WAITING // MIB} MiB")
    assert growth <= BUDGET + WAITING + SLACK
    assert metric(url, "convserve_requests_total", 'code="RESOURCE_EXHAUSTED"') == 1


READERS = 12
ELEMENTS = 2 * MIB  # float64: 16 MiB in, 16 MiB out per call


def _header() -> pb.SignalRequest:
    return pb.SignalRequest(in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[ELEMENTS]), in2=codec.encode(np.ones(1)), method=pb.METHOD_DIRECT)


def _parts(data: bytes) -> Iterator[pb.SignalRequestPart]:
    yield pb.SignalRequestPart(header=_header())
    for start in range(0, len(data), MIB):
        yield pb.SignalRequestPart(chunk=pb.TensorChunk(field="in1", offset=start, data=data[start : start + MIB]))


@dataclass
class _SlowReaders:
    """Readers of one chunked call each, on channels with a small HTTP/2 window: each holds its
    computed result unread until ``stop`` is set. What they hold, their refusals and their results."""

    target: str
    data: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    holding: set[int] = field(default_factory=set)
    refused: list[int] = field(default_factory=lambda: [0] * READERS)
    results: dict[int, object] = field(default_factory=dict)

    def read(self, i: int) -> None:
        """Reader ``i``: call until admitted (waiting out each pushback), then hold the result until told."""
        # No BDP probing: the reader's HTTP/2 window stays small, so what it does not read stays on the server.
        with grpc.insecure_channel(self.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            while not self.stop.is_set():
                call = stub.ConvolveChunked(_parts(self.data), timeout=120)
                try:
                    first = next(call)  # the result's header: the compute is done
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and pushback(error) >= 0:
                        with self.lock:
                            self.refused[i] += 1
                        time.sleep(pushback(error) / 1000)
                        continue
                    self.results[i] = error
                    return
                with self.lock:
                    self.holding.add(i)
                self.stop.wait(120)  # read nothing until told
                try:
                    rest = list(call)
                except grpc.RpcError as error:
                    self.results[i] = error
                    return
                chunks = b"".join(part.chunk.data for part in rest)
                assert first.header.result.shape == [ELEMENTS]
                self.results[i] = np.frombuffer(chunks, np.float64)
                return


def test_slow_readers_keep_their_reservation_until_the_last_chunk(budget_server: tuple[RunningServer, str, int]) -> None:
    server, url, baseline = budget_server
    x = np.random.default_rng(1).standard_normal(ELEMENTS)
    data = x.tobytes()
    fits = BUDGET // rpc_entries.estimate(_header())  # results the budget can hold at once
    assert fits == 2
    readers = _SlowReaders(server.target, data)
    stop, lock, holding, refused, results = readers.stop, readers.lock, readers.holding, readers.refused, readers.results

    threads = [threading.Thread(target=readers.read, args=(i,), daemon=True) for i in range(READERS)]
    for thread in threads:
        thread.start()
    peak_kib = 0
    try:
        marks: list[int] = []

        def settled() -> bool:  # the budget is full of results, and every other reader was refused since
            nonlocal peak_kib
            peak_kib = max(peak_kib, status_kib(server.process.pid, "VmRSS"))
            with lock:
                if len(holding) > fits:
                    return True
                if len(holding) < fits:
                    return False
                if not marks:
                    marks.extend(refused)
                return all(refused[i] > marks[i] for i in range(READERS) if i not in holding)

        wait_for(settled, "the slow readers to fill the budget", seconds=90)
        with lock:
            assert len(holding) == fits, f"{len(holding)} results held at once; the budget holds {fits}"
        assert metric(url, "convserve_in_flight_requests") == fits
        # A later caller is refused while they hold the budget.
        with pytest.raises(convserve.ResourceExhaustedError) as later:
            with convserve.Client(server.target, retry=convserve.RetryPolicy(max_attempts=1)) as client:
                client.convolve(x, [1.0], method="direct")
        assert "budget" in str(later.value)
        growth = max(_growth(server, baseline), (peak_kib - baseline) * 1024)
        print(
            f"slow readers: {len(holding)} held, refusals {sum(refused)}, peak RSS growth {growth / MIB:.0f} MiB; "
            f"budgets {BUDGET // MIB} + {WAITING // MIB} MiB"
        )
        assert growth <= BUDGET + WAITING + SLACK
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    for value in results.values():
        assert isinstance(value, np.ndarray), value
        np.testing.assert_array_equal(value, x)
    wait_for(lambda: metric(url, "convserve_in_flight_requests") == 0, "the reservations to be released")
    assert metric(url, "convserve_reserved_bytes") == 0
