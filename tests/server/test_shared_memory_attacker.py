"""A neighbour under another uid names a victim's shared-memory regions: the server must refuse.

The victim is the default ``convserve.Client(target, shared_memory=True)``; its regions are 0600,
so the attacker (``setpriv`` to nobody) can list their names in /dev/shm but cannot open them.
The attacker is a standalone script that only uses grpcio and the generated stubs (the installed
interpreter may not be reachable for another uid: they are copied to a world-readable directory).
It names the victim's regions in ConvolveShared requests, as inputs (to read the victim's data
into its own region) and as the result buffer (to write into the victim's region), without the
capability or with a guessed one. Every attempt must be refused; the victim's bytes must be
unchanged and nothing of them may reach the attacker.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convserve
from convserve import codec
from convserve._shared_memory import HEADER_SIZE, header
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.attacker_env import as_nobody, nobody_python, why_not
from tests.conftest import RunningServer, start_server, stop_server

ATTACKER = r"""
import json, os, secrets, struct, sys
import grpc
from convserve.v1 import convserve_pb2 as pb, convserve_pb2_grpc as pb_grpc

target, prefix = sys.argv[1], sys.argv[2]
report = {"uid": os.getuid(), "names": sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix)),
          "open": {}, "attempts": {}}
for name in report["names"]:
    try:
        os.close(os.open("/dev/shm/" + name, os.O_RDONLY))
        report["open"][name] = "opened"
    except PermissionError:
        report["open"][name] = "EACCES"
own = "convserve_attacker_%d" % os.getpid()
capability = secrets.token_bytes(16)
fd = os.open("/dev/shm/" + own, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
try:
    os.ftruncate(fd, 1 << 20)
    os.pwrite(fd, (b"CONVSHM1" + capability).ljust(64, b"\0"), 0)
    os.pwrite(fd, struct.pack("<8d", *range(8)), 64)
    os.pwrite(fd, struct.pack("<3d", 1, 1, 1), 4096)
    stub = pb_grpc.ConvolutionServiceStub(grpc.insecure_channel(target))

    def tensor(region, offset, count, cap):
        return pb.SharedTensor(region=region, offset=offset, dtype=pb.DTYPE_FLOAT64, shape=[count], capability=cap)

    def attempt(label, in1, in2, result):
        request = pb.SharedSignalRequest(options=pb.SignalRequest(), in1=in1, in2=in2, result=result)
        try:
            reply = stub.ConvolveShared(request, timeout=30)
            report["attempts"][label] = {"code": "OK", "shape": list(reply.result.shape)}
        except grpc.RpcError as error:
            report["attempts"][label] = {"code": error.code().name, "details": error.details()}

    mine_in, kernel = tensor(own, 64, 8, capability), tensor(own, 4096, 3, capability)
    attempt("control", mine_in, kernel, pb.SharedBuffer(region=own, offset=8192, size=4096, capability=capability))
    loot = pb.SharedBuffer(region=own, offset=65536, size=1 << 19, capability=capability)
    guesses = {"no capability": b"", "guessed": secrets.token_bytes(16), "attacker's own": capability,
               "zeros": bytes(16)}
    for name in report["names"]:
        for how, cap in guesses.items():
            attempt(f"{name} as in1, {how}", tensor(name, 64, 1000, cap), kernel, loot)
            attempt(f"{name} as in2, {how}", mine_in, tensor(name, 64, 1000, cap), loot)
            attempt(f"{name} header as in1, {how}", tensor(name, 0, 8, cap), kernel, loot)
            attempt(f"{name} as result, {how}", mine_in, kernel,
                    pb.SharedBuffer(region=name, offset=64, size=4096, capability=cap))
    report["loot_bytes"] = sum(1 for b in os.pread(fd, 1 << 19, 65536) if b)
finally:
    os.close(fd)
    os.unlink("/dev/shm/" + own)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def attacker() -> Iterator[tuple[str, str]]:
    """(interpreter, directory) the other uid can run: grpcio, protobuf and the stubs copied for it."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    with nobody_python({"attacker.py": ATTACKER}) as found:
        if found is None:
            pytest.skip("no python the user nobody can run")
        yield found


@pytest.fixture(scope="module")
def shm_server() -> Iterator[RunningServer]:
    server = start_server("--allow-shared-memory")
    yield server
    assert stop_server(server) == 0


def _contents(names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
        try:
            out[name] = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    return out


def test_a_neighbour_cannot_read_or_write_a_victims_regions(shm_server: RunningServer, attacker: tuple[str, str]) -> None:
    interpreter, directory = attacker
    denied = "PERMISSION_DENIED"
    secret = np.random.default_rng(7).standard_normal(200_000)  # 1.6 MB: over the default 1 MiB threshold
    with convserve.Client(shm_server.target, shared_memory=True, timeout=60) as victim:
        expected = victim.convolve(secret, np.ones(3))
        prefix = f"convserve_{os.getpid()}_"
        names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
        assert len(names) == 2
        assert all(os.stat(f"/dev/shm/{n}").st_mode & 0o777 == 0o600 for n in names)
        before = _contents(names)
        run = subprocess.run(
            as_nobody(interpreter, os.path.join(directory, "attacker.py"), shm_server.target, prefix),
            capture_output=True,
            text=True,
            env={"PYTHONPATH": directory},
            cwd="/",
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["uid"] != os.getuid() and report["names"] == names
        assert set(report["open"].values()) == {"EACCES"}  # the premise: it cannot open them itself
        attempts = report["attempts"]
        assert attempts.pop("control")["code"] == "OK"  # it can use the server with a region of its own
        assert len(attempts) == 2 * 4 * 4
        for label, outcome in attempts.items():
            assert outcome["code"] == denied, (label, outcome)
            assert "capability" in outcome["details"], (label, outcome)
        assert report["loot_bytes"] == 0  # nothing of the victim's data reached the attacker's region
        assert _contents(names) == before  # nothing written into the victim's regions
        np.testing.assert_allclose(victim.convolve(secret, np.ones(3)), expected, rtol=1e-12)


REGION_SIZE = 1 << 16
_FUZZ_CAPABILITY = b"\x5a" * 8 + b"\xa5" * 8
_WRONG = [b"", b"\x00" * 16, b"\x5a" * 8 + b"\xa5" * 7 + b"\xa4", _FUZZ_CAPABILITY[:15], _FUZZ_CAPABILITY + b"\0"]
CAPABILITIES = st.one_of(st.just(_FUZZ_CAPABILITY), st.just(_FUZZ_CAPABILITY), st.sampled_from(_WRONG))


def _valid_or(valid: st.SearchStrategy[Any], fuzzed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field of a request that is otherwise valid (about 3 times in 4), or a fuzzed value."""
    return st.one_of(valid, valid, valid, fuzzed)


OFFSETS = st.one_of(st.integers(-8, REGION_SIZE + 8), st.sampled_from([0, 63, 2**63 - 1]))
SHAPES = st.lists(st.integers(0, 3000), max_size=3)
DTYPES = st.one_of(st.sampled_from(sorted(codec.NUMPY_BY_DTYPE)), st.integers(0, 16))
IN1 = st.tuples(
    _valid_or(st.sampled_from([64, 128]), OFFSETS),
    _valid_or(st.just(pb.DTYPE_FLOAT64), DTYPES),
    _valid_or(st.lists(st.integers(1, 1000), min_size=1, max_size=1), SHAPES),
    CAPABILITIES,
)
IN2 = st.tuples(
    _valid_or(st.just(16384), OFFSETS),
    _valid_or(st.just(pb.DTYPE_FLOAT64), DTYPES),
    _valid_or(st.lists(st.integers(1, 50), min_size=1, max_size=1), SHAPES),
    CAPABILITIES,
)
RESULT = st.tuples(_valid_or(st.just(32768), OFFSETS), _valid_or(st.just(32768), st.integers(-2, REGION_SIZE + 8)), CAPABILITIES)


@pytest.fixture(scope="module")
def fuzz_region() -> Iterator[tuple[str, int]]:
    name = f"convserve_{os.getpid()}_fuzz"
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, REGION_SIZE)
        os.pwrite(fd, header(_FUZZ_CAPABILITY) + os.urandom(REGION_SIZE - HEADER_SIZE), 0)
        yield name, fd
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm/{name}")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(in1=IN1, in2=IN2, result=RESULT)
def test_fuzzed_shared_requests_never_leak_or_fail_internally(
    shm_server: RunningServer, fuzz_region: tuple[str, int], in1: tuple[Any, ...], in2: tuple[Any, ...], result: tuple[Any, ...]
) -> None:
    name, fd = fuzz_region
    request = pb.SharedSignalRequest(
        options=pb.SignalRequest(),
        in1=pb.SharedTensor(region=name, offset=in1[0], dtype=in1[1], shape=in1[2], capability=in1[3]),
        in2=pb.SharedTensor(region=name, offset=in2[0], dtype=in2[1], shape=in2[2], capability=in2[3]),
        result=pb.SharedBuffer(region=name, offset=result[0], size=result[1], capability=result[2]),
    )
    capabilities = (in1[3], in2[3], result[2])
    before = os.pread(fd, REGION_SIZE, 0)
    with grpc.insecure_channel(shm_server.target) as channel:
        try:
            pb_grpc.ConvolutionServiceStub(channel).ConvolveShared(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
    allowed = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
    assert code in allowed, code
    if any(c != _FUZZ_CAPABILITY for c in capabilities):
        assert code != grpc.StatusCode.OK
        assert os.pread(fd, REGION_SIZE, 0) == before  # a request without the capability writes nothing
    assert os.pread(fd, HEADER_SIZE, 0) == header(_FUZZ_CAPABILITY)  # the header is never written
