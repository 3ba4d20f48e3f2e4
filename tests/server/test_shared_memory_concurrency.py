"""One shared-memory client used by many threads or tasks at once: every caller gets its own answer.

Each call in flight owns a pair of regions; before this, all calls of one client shared one
inputs region and one result region, and concurrent calls read each other's results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Iterator

import numpy as np
import pytest

import convserve
from convserve._shared_memory import MAX_FREE_PAIRS

from tests.conftest import RunningServer, start_server, stop_server

CALLS = 48
THREADS = 6


@pytest.fixture(scope="module")
def shm_server() -> Iterator[RunningServer]:
    server = start_server("--allow-shared-memory", "--workers", "2", "--max-concurrent-requests", "8")
    yield server
    assert stop_server(server) == 0


def _inputs(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    size = 2**17 + 4096 * (index % 5)  # about 1 MiB and up, different sizes (regions grow and are replaced)
    return rng.standard_normal(size), rng.standard_normal(3 + index % 4)


def _regions() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"convserve_{os.getpid()}_")}


def test_threads_sharing_one_client_each_get_their_own_result(shm_server: RunningServer) -> None:
    with convserve.Client(shm_server.target, shared_memory=True) as client:

        def call(index: int) -> bool:
            x, h = _inputs(index)
            result, info = client.convolve(x, h, return_info=True)
            return bool(np.allclose(result, np.convolve(x, h), rtol=1e-10, atol=1e-10))

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            right = list(pool.map(call, range(CALLS)))
        assert all(right), f"{right.count(False)} of {CALLS} results were another call's"
        assert len(_regions()) <= 2 * THREADS  # a pair per call in flight at most
    assert not _regions()  # close() unlinked every pair


def test_tasks_sharing_one_async_client_each_get_their_own_result(shm_server: RunningServer) -> None:
    async def run() -> list[bool]:
        async with convserve.AsyncClient(shm_server.target, shared_memory=True) as client:

            async def call(index: int) -> bool:
                x, h = _inputs(index)
                return bool(np.allclose(await client.convolve(x, h), np.convolve(x, h), rtol=1e-10, atol=1e-10))

            right = list(await asyncio.gather(*(call(i) for i in range(16))))
            assert len(_regions()) <= 2 * MAX_FREE_PAIRS  # the burst's pairs beyond the pool's cap are gone
            return right

    right = asyncio.run(run())
    assert all(right), f"{right.count(False)} of 16 results were another call's"
    assert not _regions()


def test_a_failed_call_never_hands_its_regions_to_the_next(shm_server: RunningServer) -> None:
    with convserve.Client(shm_server.target, shared_memory=True) as client:
        x, h = _inputs(1)
        client.convolve(x, h)
        before = _regions()
        with pytest.raises(convserve.InvalidArgumentError):
            client.convolve(x, h, mode="nonsense")  # refused on the client: no regions taken
        with pytest.raises(convserve.InvalidArgumentError):
            client.convolve(x.reshape(-1, 8), h, mode="valid", axes=(5,))  # refused by the server
        after = _regions()
        assert before and after.isdisjoint(before)  # the pair the server refused was unlinked, not reused
        np.testing.assert_allclose(client.convolve(x, h), np.convolve(x, h), rtol=1e-10, atol=1e-10)
