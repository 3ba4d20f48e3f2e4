"""Same-host shared memory: happy path, validation, opt-in on both sides, regions always released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import scipy.signal as ss

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from .conftest import RunningServer, start_server, stop_server

RNG = np.random.default_rng(21)


def our_regions() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"convserve_{os.getpid()}_")}


@pytest.fixture(scope="module")
def shm_server() -> Iterator[RunningServer]:
    server = start_server("--allow-shared-memory")
    yield server
    assert stop_server(server) == 0


def test_round_trips_and_region_reuse(shm_server: RunningServer) -> None:
    with convserve.Client(shm_server.target, shared_memory=True, shared_memory_threshold=0, timeout=60) as client:
        x = RNG.standard_normal(300_000).astype(np.float32)
        h = RNG.standard_normal(9).astype(np.float32)
        result, info = client.convolve(x, h, return_info=True)
        assert result.dtype == np.float32 and info.method
        np.testing.assert_allclose(result, ss.convolve(x, h), rtol=1e-5, atol=1e-5)
        regions = our_regions()
        assert len(regions) == 2
        image = RNG.integers(0, 256, (200, 150, 3)).astype(np.uint8)
        box = np.ones((3, 3), np.uint8)
        blurred = client.convolve(image, box, "same", axes=(0, 1), output_dtype="uint16")
        np.testing.assert_array_equal(blurred, ss.convolve(image.astype(np.int64), box[..., None].astype(np.int64), "same"))
        np.testing.assert_allclose(client.correlate(x[:1000], h, "valid"), ss.correlate(x[:1000], h, "valid"), rtol=1e-5, atol=1e-5)
        assert our_regions() == regions  # reused, not recreated
        with pytest.raises(convserve.InvalidArgumentError):  # an error leaves the regions usable
            client.convolve(np.ones((3, 5)), np.ones((5, 3)), "valid")
        np.testing.assert_allclose(client.convolve(x[:10], [1.0]), x[:10], rtol=1e-6)
    assert our_regions() == set()  # released by close()


def test_server_must_opt_in(server: RunningServer) -> None:
    with convserve.Client(server.target, shared_memory=True, shared_memory_threshold=0, timeout=30) as client:
        with pytest.raises(convserve.FailedPreconditionError):
            client.convolve(np.ones(10), np.ones(3))
    assert our_regions() == set()


@pytest.fixture()
def region() -> Iterator[shared_memory.SharedMemory]:
    memory = shared_memory.SharedMemory(name=f"convserve_{os.getpid()}_test", create=True, size=4096)
    yield memory
    memory.close()
    memory.unlink()


def _call(server: RunningServer, request: pb.SharedSignalRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.ConvolutionServiceStub(channel).ConvolveShared(request, timeout=10)
    return raised.value


def _request(name: str, in1_offset: int = 0, in1_shape: tuple[int, ...] = (8,), result_size: int = 1024,
             result_name: str | None = None) -> pb.SharedSignalRequest:
    return pb.SharedSignalRequest(
        options=pb.SignalRequest(),
        in1=pb.SharedTensor(region=name, offset=in1_offset, dtype=pb.DTYPE_FLOAT64, shape=in1_shape),
        in2=pb.SharedTensor(region=name, offset=1024, dtype=pb.DTYPE_FLOAT64, shape=[3]),
        result=pb.SharedBuffer(region=result_name or name, offset=2048, size=result_size),
    )


def test_invalid_regions_are_refused(shm_server: RunningServer, region: shared_memory.SharedMemory) -> None:
    cases = {
        "unknown name": (_request("convserve_no_such_region"), "in1.region"),
        "path trick": (_request("convserve/../../etc/passwd"), "in1.region"),
        "another program's region": (_request("psm_12345"), "in1.region"),
        "reading past the region": (_request(region.name, in1_offset=4090), "in1.offset"),
        "negative offset": (_request(region.name, in1_offset=-8), "in1.offset"),
        "huge shape": (_request(region.name, in1_shape=(2**40,)), "in1.shape"),
        "result too small": (_request(region.name, result_size=16), "result.size"),
        "result past the region": (_request(region.name, result_size=4000), "result.offset"),
    }
    for name, (request, field) in cases.items():
        error = _call(shm_server, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert error.details().startswith(field), (name, error.details())


def test_server_writes_the_result_and_never_unlinks(region: shared_memory.SharedMemory) -> None:
    server = start_server("--allow-shared-memory")
    try:
        assert region.buf is not None
        values = np.ndarray((8,), np.float64, region.buf)
        values[:] = np.arange(8)
        kernel = np.ndarray((3,), np.float64, region.buf, offset=1024)
        kernel[:] = [1, 1, 1]
        with grpc.insecure_channel(server.target) as channel:
            reply = pb_grpc.ConvolutionServiceStub(channel).ConvolveShared(_request(region.name), timeout=10)
        shape = tuple(reply.result.shape)
        out = np.ndarray(shape, np.float64, region.buf, offset=2048)
        np.testing.assert_array_equal(out, np.convolve(np.arange(8), [1, 1, 1]))
        del values, kernel, out
    finally:
        assert stop_server(server) == 0
    time.sleep(0.5)  # the server's resource tracker would unlink at exit if it had registered the region
    assert os.path.exists(f"/dev/shm/{region.name}")


def test_regions_of_a_crashed_client_are_released(shm_server: RunningServer) -> None:
    code = (
        "import os, sys, time, numpy as np, convserve\n"
        f"c = convserve.Client({shm_server.target!r}, shared_memory=True, shared_memory_threshold=0)\n"
        "c.convolve(np.ones(1000), np.ones(3))\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid = child.stdout.readline().strip()
    names = [n for n in os.listdir("/dev/shm") if n.startswith(f"convserve_{pid}_")]
    assert len(names) == 2
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/dev/shm/{n}") for n in names):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)


def test_plain_message_path_is_unaffected(shm_server: RunningServer) -> None:
    with convserve.Client(shm_server.target, shared_memory=True, timeout=30) as client:  # below the 1 MiB threshold
        np.testing.assert_allclose(client.convolve([1.0, 2.0], [1.0, 1.0]), [1.0, 3.0, 2.0])
    request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
    assert request.ByteSize() > 0


def test_regions_are_released_after_a_cancelled_call(shm_server: RunningServer) -> None:
    import asyncio

    async def cancel_midway() -> None:
        client = convserve.AsyncClient(shm_server.target, shared_memory=True, shared_memory_threshold=0)
        try:
            task = asyncio.ensure_future(client.convolve(np.ones(2_000_000), np.ones(2001), method="direct"))
            await asyncio.sleep(0.2)
            assert len(our_regions()) == 2
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await client.close()

    asyncio.run(cancel_midway())
    assert our_regions() == set()
    # The server detaches from unlinked regions at its next call and keeps serving.
    with convserve.Client(shm_server.target, shared_memory=True, shared_memory_threshold=0, timeout=30) as client:
        np.testing.assert_allclose(client.convolve(np.arange(4.0), [1.0]), np.arange(4.0))
    assert our_regions() == set()
