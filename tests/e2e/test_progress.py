"""Progress of a one-shot call: bytes handed to gRPC, chunk by chunk on the chunked path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

import convserve

from tests.conftest import RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def roomy_server() -> Iterator[RunningServer]:
    server = start_server()
    yield server
    stop_server(server)


def test_a_chunked_call_reports_its_bytes_as_it_sends_them(roomy_server: RunningServer) -> None:
    x = np.random.default_rng(0).random(6 * 2**20 // 8)  # 6 MiB: above the default 4 MiB chunk threshold
    kernel = np.ones(3)
    seen: list[tuple[int, int]] = []
    with convserve.Client(roomy_server.target) as client:
        result = client.convolve(x, kernel, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(result, np.convolve(x, kernel), rtol=1e-12)
    total = x.nbytes + kernel.nbytes
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(done) >= 2 + x.nbytes // 2**20  # the header, then one call per 1 MiB chunk


@pytest.mark.parametrize("size", [1000, 2**18])
def test_a_unary_call_reports_start_and_end(roomy_server: RunningServer, size: int) -> None:
    x = np.ones(size)
    seen: list[tuple[int, int]] = []
    with convserve.Client(roomy_server.target) as client:
        client.convolve(x, [1.0, 2.0], progress=lambda done, total: seen.append((done, total)))
    total = x.nbytes + 16
    assert seen == [(0, total), (total, total)]


def test_the_async_client_reports_chunks_too(roomy_server: RunningServer) -> None:
    x = np.ones(5 * 2**20 // 8)
    seen: list[tuple[int, int]] = []

    async def call() -> None:
        async with convserve.AsyncClient(roomy_server.target) as client:
            await client.convolve(x, [1.0], progress=lambda done, total: seen.append((done, total)))

    asyncio.run(call())
    assert seen[-1] == (x.nbytes + 8, x.nbytes + 8) and len(seen) >= 7
