"""The client never takes its caller down, and retries streams itself.

gRPC's transparent retries (the service config's ``retryPolicy``) on client-streaming methods
aborted the caller's process (SIGABRT, ``promise_based_filter.cc ILLEGAL STATE: FORWARDED_BATCH``)
when a busy server refused chunked calls. Now only the unary methods carry a retryPolicy; chunked
calls are retried by the client as fresh streams, and a ``convolve_stream`` only while none of the
caller's blocks has gone out.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import convserve
from convserve import _retry, codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import start_server, stop_server

# 12 threads (or tasks), two chunked calls each (inputs of 4.8 MB, over the 4 MiB chunk threshold),
# through the default client, against a server with two slots. Prints the tally as JSON.
CALLERS = r"""
import asyncio, collections, json, sys, threading
import numpy as np
import convserve

target, kind = sys.argv[1], sys.argv[2]
signal = np.random.default_rng(0).standard_normal(600_000)
kernel = np.array([1.0, -2.0, 1.0])
expected = np.convolve(signal, kernel)
tally = collections.Counter()

def outcome(result):
    return "OK" if np.allclose(result, expected) else "WRONG"

def record(error):
    tally["ResourceExhaustedError" if isinstance(error, convserve.ResourceExhaustedError)
          else f"{type(error).__name__}: {error}"] += 1

if kind == "sync":
    client = convserve.Client(target)
    lock = threading.Lock()
    def caller():
        for _ in range(2):
            try:
                result = outcome(client.convolve(signal, kernel, method="direct"))
                with lock:
                    tally[result] += 1
            except Exception as error:
                with lock:
                    record(error)
    threads = [threading.Thread(target=caller) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
else:
    async def main():
        async with convserve.AsyncClient(target) as client:
            async def caller():
                for _ in range(2):
                    try:
                        tally[outcome(await client.convolve(signal, kernel, method="direct"))] += 1
                    except Exception as error:
                        record(error)
            await asyncio.gather(*(caller() for _ in range(12)))
    asyncio.run(main())
print(json.dumps(dict(tally)))
"""


def test_only_unary_methods_carry_a_retry_policy() -> None:
    config = json.loads(convserve.RetryPolicy().service_config())
    retried = [name for entry in config["methodConfig"] if "retryPolicy" in entry for name in entry["name"]]
    assert all(name.get("method") in _retry.UNARY_METHODS for name in retried), retried  # never the whole service
    assert {name["method"] for name in retried} == set(_retry.UNARY_METHODS)
    assert not set(_retry.STREAMING_METHODS) & {name.get("method") for name in retried}


@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_chunked_calls_against_a_busy_server_never_abort_the_caller(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        server = start_server("--workers", "1", "--max-concurrent-requests", "2", "--log-level", "INFO", stderr=sink)
    try:
        tally: dict[str, int] = {}
        for _ in range(3):  # until the server has refused some (it does at once, unless this host is very fast)
            run = subprocess.run([sys.executable, "-c", CALLERS, server.target, kind], capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, f"the caller's process died ({run.returncode}): {run.stderr[-2000:]}"
            tally = json.loads(run.stdout.strip().splitlines()[-1])
            assert sum(tally.values()) == 24
            assert set(tally) <= {"OK", "ResourceExhaustedError"}, tally
            if "RESOURCE_EXHAUSTED" in log.read_text():
                break
        refusals = log.read_text().count("RESOURCE_EXHAUSTED")
        assert refusals > 0, "the server never answered busy: the test did not test anything"
        print(f"{kind}: {tally}, server refusals {refusals}")
    finally:
        assert stop_server(server) == 0


class StreamStub(pb_grpc.ConvolutionServiceServicer):
    """A ConvolveStream server that refuses its first ``refusals`` calls as busy (pushback 0),
    after reading ``blocks_before_refusal`` blocks; later calls return each block doubled."""

    def __init__(self, refusals: int, blocks_before_refusal: int) -> None:
        self.refusals = refusals
        self.blocks_before_refusal = blocks_before_refusal
        self.calls = 0
        self.retried = threading.Event()  # set when a call after the refused ones arrives

    def ConvolveStream(self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext) -> Iterator[pb.StreamResponse]:
        self.calls += 1
        if self.calls > self.refusals:
            self.retried.set()
        assert next(request_iterator).WhichOneof("part") == "config"
        if self.calls <= self.refusals:
            for _ in range(self.blocks_before_refusal):
                next(request_iterator)
            context.set_trailing_metadata(((convserve.errors.RETRY_PUSHBACK_KEY, "0"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        for message in request_iterator:
            yield pb.StreamResponse(block=codec.encode(codec.decode(message.block, "block") * 2, "block"))


@pytest.fixture()
def stub_server() -> Iterator[tuple[StreamStub, str]]:
    servers: list[grpc.Server] = []

    def start(refusals: int, blocks_before_refusal: int) -> tuple[StreamStub, str]:
        stub = StreamStub(refusals, blocks_before_refusal)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_ConvolutionServiceServicer_to_server(stub, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return stub, f"127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for server in servers:
        server.stop(0)


def test_a_stream_refused_before_its_first_block_is_retried(stub_server: Any) -> None:
    stub, target = stub_server(1, 0)

    def blocks() -> Iterator[np.ndarray]:
        assert stub.retried.wait(20)  # the first block exists only once the refused attempt is over
        yield np.array([1.0, 2.0, 3.0])
        yield np.array([4.0, 5.0])

    with convserve.Client(target, timeout=30) as client:
        out = list(client.convolve_stream(blocks(), [1.0], timeout=30))
    assert stub.calls == 2
    np.testing.assert_array_equal(np.concatenate(out), [2.0, 4.0, 6.0, 8.0, 10.0])  # each block once, in order


def test_a_stream_refused_after_a_block_went_out_is_not_run_again(stub_server: Any) -> None:
    stub, target = stub_server(1, 1)
    pulled: list[int] = []

    def blocks() -> Iterator[np.ndarray]:
        for n in range(3):
            pulled.append(n)
            yield np.full(4, float(n))

    with convserve.Client(target, timeout=30) as client:
        with pytest.raises(convserve.ResourceExhaustedError):
            list(client.convolve_stream(blocks(), [1.0], timeout=30))
    assert stub.calls == 1
    assert pulled[0] == 0 and pulled == sorted(set(pulled))  # the caller's iterator was never restarted


def test_asyncio_stream_refused_before_its_first_block_is_retried(stub_server: Any) -> None:
    stub, target = stub_server(2, 0)

    async def blocks() -> AsyncIterator[np.ndarray]:
        assert await asyncio.to_thread(stub.retried.wait, 20)
        yield np.array([1.0, 2.0])
        yield np.array([3.0])

    async def run() -> list[np.ndarray]:
        async with convserve.AsyncClient(target, timeout=30) as client:
            return [block async for block in client.convolve_stream(blocks(), [1.0], timeout=30)]

    out = asyncio.run(run())
    assert stub.calls == 3
    np.testing.assert_array_equal(np.concatenate(out), [2.0, 4.0, 6.0])


def test_asyncio_stream_refused_after_a_block_went_out_is_not_run_again(stub_server: Any) -> None:
    stub, target = stub_server(1, 1)

    async def run() -> None:
        async with convserve.AsyncClient(target, timeout=30) as client:
            async for _ in client.convolve_stream([np.ones(4), np.ones(4)], [1.0], timeout=30):
                pass

    with pytest.raises(convserve.ResourceExhaustedError):
        asyncio.run(run())
    assert stub.calls == 1


def test_the_retry_lists_name_every_rpc_of_the_proto_by_its_kind() -> None:
    """A new RPC must land in one of the two lists: gRPC's retries for unary ones, the client's for streams."""
    from convserve import _retry
    from convserve.v1 import convserve_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ConvolutionService"]
    assert service.full_name == _retry.SERVICE
    unary = {m.name for m in service.methods if not m.client_streaming and not m.server_streaming}
    streaming = {m.name for m in service.methods if m.client_streaming or m.server_streaming}
    assert set(_retry.UNARY_METHODS) == unary and set(_retry.STREAMING_METHODS) == streaming
