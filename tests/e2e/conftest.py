"""Fixtures of the fuzz tests (tests/e2e/test_fuzz_*.py). They are package-scoped, so that every
fuzz file uses the same two server processes and test_server_still_serves_after_fuzzing (in
test_fuzz_unary.py, the last fuzz file pytest runs) checks them after all the fuzzing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer, start_server, stop_server
from tests.e2e.fuzz_strategies import SHARED_MAX_ELEMENTS, _Region


@pytest.fixture(scope="package")
def stub(server: RunningServer) -> Iterator[pb_grpc.ConvolutionServiceStub]:
    """A stub on the session's server (tests/conftest.py)."""
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.ConvolutionServiceStub(channel)


@pytest.fixture(scope="package")
def shared_server() -> Iterator[RunningServer]:
    """A server that allows shared memory, with a smaller max_elements (SHARED_MAX_ELEMENTS)."""
    running = start_server("--allow-shared-memory", "--max-elements", str(SHARED_MAX_ELEMENTS), "--log-level", "WARNING")
    try:
        yield running
    finally:
        assert stop_server(running) == 0


@pytest.fixture(scope="package")
def shared_stub(shared_server: RunningServer) -> Iterator[pb_grpc.ConvolutionServiceStub]:
    """A stub on the shared-memory server."""
    with grpc.insecure_channel(shared_server.target) as channel:
        yield pb_grpc.ConvolutionServiceStub(channel)


@pytest.fixture(scope="package")
def regions() -> Iterator[tuple[_Region, _Region]]:
    """Two client-made regions, for the inputs and for the result."""
    made = (_Region("in"), _Region("out"))
    try:
        yield made
    finally:
        for region in made:
            region.close()
