"""Reservations cover real memory: a call that fails frees what it holds when it ends.

Two reference cycles kept every failed call's data (a chunked upload's assembled arrays, a unary
request message) alive until Python's cyclic garbage collector happened to run, long after the
call's reservation and waiting-budget ticket were released:

- gRPC keeps ``context.abort``'s exception in the call's state; the exception's traceback holds
  the handler's frames, and they hold the call's context, which holds that state;
- the worker pool's future holds the work's exception, whose traceback holds the frame that
  holds the future.

Measured in the soak set-up (12 threads of 6 MiB chunked calls, 256 + 64 MiB budgets), the
server's peak RSS grew by 350-450 MiB while the reservations peaked at 230 MiB.

Each test sends a fixed number of calls that fail only after their data has arrived (an unknown
``mode`` is refused on the worker, after the upload is complete; some are refused for room once
their data is complete), a few at a time, and checks the server's peak RSS (VmHWM, reset after a
warm-up) against the budgets plus a stated slack. The count of calls, not the time they take,
sizes the work, so the test does not depend on the machine's speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

import convserve
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, status_kib, stop_server

MIB = 2**20
BUDGET = 64 * MIB
WAITING = 32 * MIB
# Outside any budget: gRPC's transport buffers (a 1 MiB window per stream), messages being
# deserialized, and the allocator's retention of freed blocks (32 MiB by default).
SLACK = 48 * MIB
CALLS = 72  # 6 MiB each: 432 MiB in all
PARALLEL = 4
UPLOAD = 6 * MIB
UNARY = 3 * MIB  # under gRPC's 4 MiB message limit of the client
UNARY_CALLS = 96  # 288 MiB in all
UNKNOWN_MODE = 99
STREAM_CALLS = 24


def _reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux: ``clear_refs`` 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


@pytest.fixture()
def small_server() -> Iterator[RunningServer]:
    """A server with small budgets, warmed up by one good call of each kind used below."""
    server = start_server(
        "--workers",
        "2",
        "--max-concurrent-requests",
        str(PARALLEL),
        "--memory-budget-bytes",
        str(BUDGET),
        "--waiting-budget-bytes",
        str(WAITING),
        "--max-waiting-streams",
        str(2 * PARALLEL),
        "--fftw-threads",
        "1",
    )
    with convserve.Client(server.target) as client:
        client.convolve(np.ones(UPLOAD // 8), np.ones(3), method="direct")  # chunked
        client.convolve(np.ones(UNARY // 8), np.ones(3), method="direct")  # unary
    yield server
    assert stop_server(server) == 0


def _chunked_parts(signal: np.ndarray) -> Iterator[pb.SignalRequestPart]:
    header = pb.SignalRequest(
        in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[signal.size]),
        in2=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=np.ones(3).tobytes()),
        mode=UNKNOWN_MODE,
        method=pb.METHOD_DIRECT,
    )
    yield pb.SignalRequestPart(header=header)
    data = signal.tobytes()
    for start in range(0, len(data), MIB):
        yield pb.SignalRequestPart(chunk=pb.TensorChunk(field="in1", offset=start, data=data[start : start + MIB]))


def _failing_chunked(stub: pb_grpc.ConvolutionServiceStub, signal: np.ndarray) -> grpc.StatusCode:
    try:
        for _ in stub.ConvolveChunked(_chunked_parts(signal), timeout=60):
            pass
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _failing_unary(stub: pb_grpc.ConvolutionServiceStub, signal: np.ndarray) -> grpc.StatusCode:
    request = pb.SignalRequest(
        in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[signal.size], data=signal.tobytes()),
        in2=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=np.ones(3).tobytes()),
        mode=UNKNOWN_MODE,
        method=pb.METHOD_DIRECT,
    )
    try:
        stub.Convolve(request, timeout=60)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _run(
    server: RunningServer, call: Callable[[pb_grpc.ConvolutionServiceStub, np.ndarray], grpc.StatusCode], size: int, calls: int
) -> tuple[int, set[grpc.StatusCode]]:
    """Make ``calls`` failing calls, PARALLEL at a time; return the peak RSS growth and the codes."""
    signal = np.random.default_rng(0).standard_normal(size // 8)
    pid = server.process.pid
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    baseline = status_kib(pid, "VmRSS")
    _reset_peak(pid)

    def worker() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            for _ in range(calls // PARALLEL):
                code = call(stub, signal)
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=worker) for _ in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    growth = (status_kib(pid, "VmHWM") - baseline) * 1024
    return growth, set(codes)


def test_failed_chunked_calls_free_their_uploads(small_server: RunningServer) -> None:
    growth, codes = _run(small_server, _failing_chunked, UPLOAD, CALLS)
    print(f"{CALLS} failed chunked calls of {UPLOAD // MIB} MiB: peak RSS growth {growth / MIB:.0f} MiB")
    # Refused for room after the upload (RESOURCE_EXHAUSTED) or failed on the worker: both after the data came.
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    assert codes <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert growth <= BUDGET + WAITING + SLACK, f"{growth / MIB:.0f} MiB"


def test_failed_unary_calls_free_their_requests(small_server: RunningServer) -> None:
    growth, codes = _run(small_server, _failing_unary, UNARY, UNARY_CALLS)
    print(f"{UNARY_CALLS} failed unary calls of {UNARY // MIB} MiB: peak RSS growth {growth / MIB:.0f} MiB")
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    assert codes <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert growth <= BUDGET + SLACK, f"{growth / MIB:.0f} MiB"


def test_failed_streams_free_their_blocks(small_server: RunningServer) -> None:
    """Refused stream blocks were kept alive by the stream's own running frame (reachable from
    gRPC's stored abort) until the cyclic collector ran: 7 refused 128 MiB blocks took RSS from
    118 to 1245 MiB. Each refused block must be gone once its call has ended."""
    block = np.zeros((2048, 2048, 1))  # 32 MiB, three-dimensional: refused as INVALID_ARGUMENT
    pid = small_server.process.pid
    with convserve.Client(small_server.target) as client:
        list(client.convolve_stream([np.ones(8)], np.ones(3)))  # warm
        baseline = status_kib(pid, "VmRSS")
        _reset_peak(pid)
        for _ in range(STREAM_CALLS):  # 768 MiB of refused blocks in all, one call at a time
            with pytest.raises(convserve.InvalidArgumentError):
                list(client.convolve_stream([block], np.ones(3)))
    growth = (status_kib(pid, "VmHWM") - baseline) * 1024
    print(f"{STREAM_CALLS} refused 32 MiB stream blocks: peak RSS growth {growth / MIB:.0f} MiB")
    # A block in flight is held about twice (gRPC's received bytes and the parsed message), and the
    # allocator keeps freed blocks of up to 32 MiB for reuse: a few blocks' worth, never the count's.
    assert growth <= 7 * block.nbytes + SLACK, f"{growth / MIB:.0f} MiB"
