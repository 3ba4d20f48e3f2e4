"""Same-host shared memory refused: invalid regions, and hostile clients (regions shrunk,
replaced, linked or named without their capability), with the server serving throughout.

The happy paths and the release of regions are in test_shared_memory.py; the fixtures are in
tests/server/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import scipy.signal as ss
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convserve._shared_memory import HEADER_SIZE, header
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server
from tests.server.shared_memory_helpers import RNG, _request, _server_has_open


def _call(server: RunningServer, request: pb.SharedSignalRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.ConvolutionServiceStub(channel).ConvolveShared(request, timeout=10)
    return raised.value


def test_invalid_regions_are_refused(shm_server: RunningServer, region: shared_memory.SharedMemory) -> None:
    cases = {
        "unknown name": (_request("convserve_no_such_region"), "in1.region"),
        "path trick": (_request("convserve/../../etc/passwd"), "in1.region"),
        "another program's region": (_request("psm_12345"), "in1.region"),
        "reading past the region": (_request(region.name, in1_offset=4090), "in1.offset"),
        "negative offset": (_request(region.name, in1_offset=-8), "in1.offset"),
        "offset into the header": (_request(region.name, in1_offset=8), "in1.offset"),
        "trailing newline": (_request(region.name + "\n"), "in1.region"),
        "result too small": (_request(region.name, result_size=16), "result.size"),
        "result past the region": (_request(region.name, result_size=4000), "result.offset"),
    }
    for name, (request, field) in cases.items():
        error = _call(shm_server, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert error.details().startswith(field), (name, error.details())
    # More elements than max_elements can never fit: RESOURCE_EXHAUSTED with pushback -1.
    error = _call(shm_server, _request(region.name, in1_shape=(2**40,)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert error.details().startswith("in1"), error.details()
    assert ("grpc-retry-pushback-ms", "-1") in tuple(error.trailing_metadata() or ())


# Hostile clients: regions shrunk, replaced, linked or named without their capability. The test
# process never maps these regions (only os.pread/os.pwrite), so a shrink cannot SIGBUS it.


class RawRegion:
    """A region made with plain os calls: header with a capability, data written and read through the fd."""

    def __init__(self, name: str, size: int, capability: bytes | None = None) -> None:
        self.name, self.path = name, f"/dev/shm/{name}"
        self.capability = secrets.token_bytes(16) if capability is None else capability
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, size)
        os.pwrite(self.fd, header(self.capability), 0)

    def put(self, offset: int, array: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(array).tobytes(), offset)

    def get(self, offset: int, dtype: type, count: int) -> np.ndarray:
        return np.frombuffer(os.pread(self.fd, count * np.dtype(dtype).itemsize, offset), dtype)

    def content(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)

    def tensor(self, offset: int, shape: tuple[int, ...], capability: bytes | None = None) -> pb.SharedTensor:
        return pb.SharedTensor(
            region=self.name, offset=offset, dtype=pb.DTYPE_FLOAT64, shape=shape, capability=self.capability if capability is None else capability
        )

    def buffer(self, offset: int, size: int, capability: bytes | None = None) -> pb.SharedBuffer:
        return pb.SharedBuffer(region=self.name, offset=offset, size=size, capability=self.capability if capability is None else capability)

    def close(self) -> None:
        os.close(self.fd)
        if os.path.lexists(self.path):
            os.unlink(self.path)


@pytest.fixture()
def raw() -> Iterator[Callable[..., RawRegion]]:
    made: list[RawRegion] = []

    def make(suffix: str, size: int = 1 << 16, capability: bytes | None = None) -> RawRegion:
        made.append(RawRegion(f"convserve_{os.getpid()}_{suffix}", size, capability))
        return made[-1]

    yield make
    for region in made:
        region.close()


def _shared(
    stub: pb_grpc.ConvolutionServiceStub, in1: pb.SharedTensor, in2: pb.SharedTensor, result: pb.SharedBuffer, method: int = pb.METHOD_AUTO, timeout: float = 30
) -> pb.SharedResponse:
    request = pb.SharedSignalRequest(options=pb.SignalRequest(method=method), in1=in1, in2=in2, result=result)
    return stub.ConvolveShared(request, timeout=timeout)


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="convserve.v1.ConvolutionService"), timeout=10)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_a_region_is_used_only_with_its_capability(shm_server: RunningServer, raw: Callable[..., RawRegion]) -> None:
    mine, other = raw("cap"), raw("cap_other")
    x = RNG.standard_normal(100)
    mine.put(HEADER_SIZE, x)
    mine.put(4096, np.ones(3))
    before = mine.content()
    no_header = raw("cap_noheader")
    os.pwrite(no_header.fd, bytes(HEADER_SIZE), 0)  # a region whose header is all zeros: zero capability refused
    wrong = {
        "none": b"",
        "guessed": secrets.token_bytes(16),
        "another region's": other.capability,
        "too short": mine.capability[:15],
        "too long": mine.capability + b"\0",
        "zeros": bytes(16),
    }
    with grpc.insecure_channel(shm_server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        for label, capability in wrong.items():
            attempts = {
                "read as in1": (mine.tensor(HEADER_SIZE, (100,), capability), other.tensor(4096, (3,)), other.buffer(8192, 8192)),
                "read as in2": (other.tensor(4096, (3,)), mine.tensor(HEADER_SIZE, (100,), capability), other.buffer(8192, 8192)),
                "write as result": (other.tensor(4096, (3,)), other.tensor(4096, (3,)), mine.buffer(HEADER_SIZE, 8192, capability)),
            }
            for attempt, (in1, in2, result) in attempts.items():
                with pytest.raises(grpc.RpcError) as refused:
                    _shared(stub, in1, in2, result)
                assert refused.value.code() == DENIED, (label, attempt, refused.value.details())
                assert "capability" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            _shared(stub, no_header.tensor(HEADER_SIZE, (3,), bytes(16)), other.tensor(4096, (3,)), other.buffer(8192, 8192))
        assert refused.value.code() == DENIED
        assert mine.content() == before  # nothing written
        assert not other.get(8192, np.float64, 1024).any()  # nothing of mine copied into the other region
        reply = _shared(stub, mine.tensor(HEADER_SIZE, (100,)), mine.tensor(4096, (3,)), mine.buffer(8192, 8192))
    np.testing.assert_allclose(mine.get(8192, np.float64, reply.result.shape[0]), np.convolve(x, np.ones(3)), rtol=1e-12)


def test_names_links_and_odd_files_are_refused(shm_server: RunningServer, raw: Callable[..., RawRegion]) -> None:
    good = raw("odd_good")
    good.put(HEADER_SIZE, np.arange(8.0))
    newline = raw("odd_nl\n", capability=good.capability)  # such a file can exist: the name check must see all of it
    newline.put(HEADER_SIZE, np.arange(8.0))
    link, fifo = f"/dev/shm/convserve_{os.getpid()}_odd_link", f"/dev/shm/convserve_{os.getpid()}_odd_fifo"
    os.symlink(good.path, link)
    os.mkfifo(fifo, 0o600)
    try:
        with grpc.insecure_channel(shm_server.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            cases = {
                "trailing newline": (newline.name, "not a convserve region name"),
                "symbolic link": (os.path.basename(link), "symbolic link"),
                "fifo": (os.path.basename(fifo), "is not a shared-memory region"),
            }
            for label, (name, reason) in cases.items():
                tensor = pb.SharedTensor(region=name, offset=HEADER_SIZE, dtype=pb.DTYPE_FLOAT64, shape=[8], capability=good.capability)
                with pytest.raises(grpc.RpcError) as refused:
                    _shared(stub, tensor, good.tensor(HEADER_SIZE, (8,)), good.buffer(4096, 4096))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, refused.value.details())
                assert reason in refused.value.details(), (label, refused.value.details())
            assert not good.get(4096, np.float64, 16).any()
    finally:
        os.unlink(link)
        os.unlink(fifo)


@pytest.fixture()
def own_server() -> Iterator[RunningServer]:
    """A server of its own: on the code before this change, these tests killed it (SIGBUS)."""
    running = start_server("--allow-shared-memory")
    yield running
    assert stop_server(running) == 0


def test_a_region_shrunk_between_calls_is_refused(own_server: RunningServer, raw: Callable[..., RawRegion]) -> None:
    region = raw("shrink", size=1 << 20)
    x = RNG.standard_normal(60_000)
    region.put(HEADER_SIZE, x)
    region.put(HEADER_SIZE + x.nbytes, np.ones(5))
    in1, in2 = region.tensor(HEADER_SIZE, x.shape), region.tensor(HEADER_SIZE + x.nbytes, (5,))
    out = region.buffer(500_000, 480_064)
    with grpc.insecure_channel(own_server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        _shared(stub, in1, in2, out)
        os.ftruncate(region.fd, 8192)
        with pytest.raises(grpc.RpcError) as refused:
            _shared(stub, in1, in2, out)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert "outside the region of 8192 bytes" in refused.value.details(), refused.value.details()
        assert _serving(own_server.target)
        os.ftruncate(region.fd, 1 << 20)
        region.put(HEADER_SIZE, x)
        region.put(HEADER_SIZE + x.nbytes, np.ones(5))
        reply = _shared(stub, in1, in2, out)
    np.testing.assert_allclose(region.get(500_000, np.float64, reply.result.shape[0]), np.convolve(x, np.ones(5)), rtol=1e-9, atol=1e-9)


def test_a_region_replaced_under_its_name_is_read_anew(own_server: RunningServer, raw: Callable[..., RawRegion]) -> None:
    first = raw("replace")
    a, b = np.arange(1.0, 9.0), np.arange(100.0, 108.0)
    first.put(HEADER_SIZE, a)
    first.put(1024, np.ones(3))
    with grpc.insecure_channel(own_server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        _shared(stub, first.tensor(HEADER_SIZE, (8,)), first.tensor(1024, (3,)), first.buffer(2048, 1024))
        np.testing.assert_array_equal(first.get(2048, np.float64, 10), np.convolve(a, np.ones(3)))
        os.unlink(first.path)
        second = RawRegion(first.name, 1 << 16)  # same name, new file, new content and capability
        try:
            second.put(HEADER_SIZE, b)
            second.put(1024, np.ones(3))
            _shared(stub, second.tensor(HEADER_SIZE, (8,)), second.tensor(1024, (3,)), second.buffer(2048, 1024))
            np.testing.assert_array_equal(second.get(2048, np.float64, 10), np.convolve(b, np.ones(3)))
            with pytest.raises(grpc.RpcError) as refused:  # the old file's capability does not open the new one
                _shared(stub, first.tensor(HEADER_SIZE, (8,)), first.tensor(1024, (3,)), first.buffer(2048, 1024))
            assert refused.value.code() == DENIED
        finally:
            second.close()


def test_the_server_survives_a_shrink_during_a_call(own_server: RunningServer, raw: Callable[..., RawRegion]) -> None:
    kernel = RNG.standard_normal(2001)
    with grpc.insecure_channel(own_server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        probe = raw("race_probe", size=HEADER_SIZE + 16 * 60_000)
        probe.put(HEADER_SIZE, RNG.standard_normal(40_000))
        probe.put(HEADER_SIZE + 320_000, kernel)
        reply = _shared(
            stub,
            probe.tensor(HEADER_SIZE, (40_000,)),
            probe.tensor(HEADER_SIZE + 320_000, (2001,)),
            probe.buffer(HEADER_SIZE + 400_000, 8 * 42_000),
            method=pb.METHOD_DIRECT,
        )
        n = int(40_000 * 1.0 / max(reply.info.compute_seconds, 1e-4))  # about 1 s of direct work on this machine
        size = HEADER_SIZE + 8 * (n + 4096)
        pid = own_server.process.pid
        # Shrink the inputs as soon as the server has them open (it is reading or computing), then,
        # on a second call, the result region only (it is computing and has not written yet).
        for shrink in ("inputs", "result"):
            inputs, result = raw(f"race_in_{shrink}", size=size), raw(f"race_out_{shrink}", size=size)
            signal_ = RNG.standard_normal(n)
            inputs.put(HEADER_SIZE, signal_)
            inputs.put(HEADER_SIZE + 8 * n, kernel)
            call = stub.ConvolveShared.future(
                pb.SharedSignalRequest(
                    options=pb.SignalRequest(method=pb.METHOD_DIRECT),
                    in1=inputs.tensor(HEADER_SIZE, (n,)),
                    in2=inputs.tensor(HEADER_SIZE + 8 * n, (2001,)),
                    result=result.buffer(HEADER_SIZE, 8 * (n + 2000)),
                ),
                timeout=120,
            )
            victim = inputs if shrink == "inputs" else result
            while not call.done() and not _server_has_open(pid, victim.path):  # the call has the region open: it runs
                time.sleep(0.001)
            assert not call.done(), "the call ended before it could be seen running"
            os.ftruncate(victim.fd, 4096)
            if shrink == "inputs" and call.exception() is None:  # the server had read them all before the shrink
                expected = ss.fftconvolve(signal_, kernel)
                np.testing.assert_allclose(result.get(HEADER_SIZE, np.float64, expected.size), expected, atol=1e-9)
            else:
                with pytest.raises(grpc.RpcError) as refused:
                    call.result()
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (shrink, refused.value.details())
                assert "shrank" in refused.value.details() or "outside the region" in refused.value.details(), shrink
            assert own_server.process.poll() is None and _serving(own_server.target)
        probe.put(HEADER_SIZE, np.arange(8.0))
        reply = _shared(stub, probe.tensor(HEADER_SIZE, (8,)), probe.tensor(HEADER_SIZE + 320_000, (3,)), probe.buffer(HEADER_SIZE + 400_000, 4096))
        np.testing.assert_allclose(probe.get(HEADER_SIZE + 400_000, np.float64, 10), np.convolve(np.arange(8.0), kernel[:3]))
