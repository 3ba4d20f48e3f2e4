"""Same-host shared memory: happy path, opt-in on both sides, regions always released.

Validation and hostile clients (regions shrunk, replaced, linked or used without their
capability) are in test_shared_memory_refusals.py; the fixtures are in tests/server/conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import scipy.signal as ss

import convserve
from convserve import codec
from convserve._shared_memory import HEADER_SIZE
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server
from tests.server.shared_memory_helpers import RNG, _request, _server_has_open, our_regions


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


def test_server_writes_the_result_and_never_unlinks(region: shared_memory.SharedMemory) -> None:
    server = start_server("--allow-shared-memory")
    try:
        assert region.buf is not None
        values = np.ndarray((8,), np.float64, region.buf, offset=HEADER_SIZE)
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
            while not task.done() and not any(_server_has_open(shm_server.process.pid, f"/dev/shm/{n}") for n in our_regions()):
                await asyncio.sleep(0.001)  # until the server has the regions open: the call runs
            assert len(our_regions()) == 2
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await client.close()

    asyncio.run(cancel_midway())
    assert our_regions() == set()
    # The server keeps no region open between calls, and keeps serving.
    with convserve.Client(shm_server.target, shared_memory=True, shared_memory_threshold=0, timeout=30) as client:
        np.testing.assert_allclose(client.convolve(np.arange(4.0), [1.0]), np.arange(4.0))
    assert our_regions() == set()
