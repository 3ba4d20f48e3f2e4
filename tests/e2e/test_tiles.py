"""``tiles=``: one large call split over replicas equals the one-shot call, survives a lost replica, reports progress.

Real server processes on loopback; the default client (its default RetryPolicy) over an
``ipv4:a,b,c`` target, so each replica gets its own channel.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import convserve
from convserve import _tiles
from tests.conftest import RunningServer, start_server, stop_server

MODES = [*itertools.product(["full", "same", "valid"], ["fill", "wrap", "symmetric", "reflect", "edge"]), ("circular", "fill")]
RNG = np.random.default_rng(12)


def start_replicas(count: int) -> list[RunningServer]:
    """``count`` servers, started side by side."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: start_server("--log-level", "WARNING"), range(count)))


def round_robin(servers: list[RunningServer]) -> str:
    return "ipv4:" + ",".join(s.target for s in servers)


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[RunningServer]]:
    servers = start_replicas(3)
    try:
        yield servers
    finally:
        for server in servers:
            assert stop_server(server) == 0


@pytest.fixture()
def client(replicas: list[RunningServer]) -> Iterator[convserve.Client]:
    with convserve.Client(round_robin(replicas)) as connected:
        yield connected


@pytest.mark.parametrize("mode,boundary", MODES)
def test_float_tiles_equal_one_shot(client: convserve.Client, mode: str, boundary: str) -> None:
    x = RNG.standard_normal(20_000)
    h = RNG.standard_normal(257)  # longer than nothing, shorter than a tile
    for op in (client.convolve, client.correlate):
        one = op(x, h, mode, boundary=boundary)
        np.testing.assert_allclose(op(x, h, mode, boundary=boundary, tiles=3), one, rtol=1e-9, atol=1e-9)
    image = RNG.standard_normal((61, 47)).astype(np.float32)
    kernel = RNG.standard_normal((9, 40)).astype(np.float32)  # wider than a 2-D tile of the output
    one = client.convolve(image, kernel, mode, boundary=boundary)
    tiled = client.convolve(image, kernel, mode, boundary=boundary, tiles=6)
    assert tiled.dtype == one.dtype
    np.testing.assert_allclose(tiled, one, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode,boundary", MODES)
def test_integer_tiles_equal_one_shot_exactly(client: convserve.Client, mode: str, boundary: str) -> None:
    x = RNG.integers(-1000, 1000, 5_001).astype(np.int32)
    h = RNG.integers(-9, 9, 33).astype(np.int32)
    for op in (client.convolve, client.correlate):
        one = op(x, h, mode, boundary=boundary)
        tiled = op(x, h, mode, boundary=boundary, tiles=4)
        assert tiled.dtype == one.dtype
        np.testing.assert_array_equal(tiled, one)


def test_fill_value_applies_to_the_whole_array(client: convserve.Client) -> None:
    x = RNG.standard_normal(9_000)
    h = RNG.standard_normal(101)
    for mode in ("full", "same"):
        np.testing.assert_allclose(client.convolve(x, h, mode, fill_value=2.5, tiles=3), client.convolve(x, h, mode, fill_value=2.5), atol=1e-9)
    single = x.astype(np.float32)  # the server widens float32 with a fill value to float64; so do the tiles
    one = client.convolve(single, h.astype(np.float32), "same", fill_value=0.1)
    tiled = client.convolve(single, h.astype(np.float32), "same", fill_value=0.1, tiles=3)
    assert tiled.dtype == one.dtype == np.float32
    np.testing.assert_allclose(tiled, one, rtol=1e-6, atol=1e-6)
    complex_x = x + 1j * x[::-1]
    np.testing.assert_allclose(
        client.correlate(complex_x, h, "full", fill_value=1 - 2j, tiles=3), client.correlate(complex_x, h, "full", fill_value=1 - 2j), atol=1e-9
    )
    ints = RNG.integers(0, 50, 3_000)
    np.testing.assert_array_equal(client.convolve(ints, ints[:20], "same", fill_value=7, tiles=3), client.convolve(ints, ints[:20], "same", fill_value=7))


def test_out_of_range_exactly_when_one_shot(client: convserve.Client) -> None:
    """int8 tiles that each fit while the sum overflows in one place only: both calls refuse; a fitting call is exact."""
    x = np.zeros(3_000, np.int8)
    x[2_000:2_004] = 60  # one window of four 60s: 240 > 127, in the last tile only
    h = np.ones(4, np.int8)
    for tiles in (None, 3):
        with pytest.raises(convserve.OutOfRangeError):
            client.convolve(x, h, tiles=tiles)
    x[2_001:2_004] = 0
    np.testing.assert_array_equal(client.convolve(x, h, tiles=3), client.convolve(x, h))
    with pytest.raises(convserve.OutOfRangeError):  # the worst-case bound beyond int64: the server's own answer
        client.convolve(np.full(4_000, 2**62, np.int64), np.array([3, 3]), tiles=3)


def test_info_reports_every_tile_and_progress_counts_tiles(client: convserve.Client) -> None:
    x, h = RNG.standard_normal(30_000), RNG.standard_normal(64)
    calls: list[tuple[int, int]] = []
    result, info = client.convolve(x, h, tiles=5, return_info=True, progress=lambda done, total: calls.append((done, total)))
    assert isinstance(info, convserve.ComputeInfo) and isinstance(info, _tiles.TiledComputeInfo)
    assert len(info.tiles) == 5 and all(t.method in ("direct", "fft", "overlap_add") and t.compute_seconds > 0 for t in info.tiles)
    assert info.compute_seconds == pytest.approx(sum(t.compute_seconds for t in info.tiles))
    assert calls == [(k, 5) for k in range(6)]
    one_calls: list[tuple[int, int]] = []
    client.convolve(x, h, progress=lambda done, total: one_calls.append((done, total)))  # one-shot: bytes
    assert one_calls == [(0, x.nbytes + h.nbytes), (x.nbytes + h.nbytes, x.nbytes + h.nbytes)]
    _, plain = client.convolve(x, h, return_info=True)
    assert type(plain) is convserve.ComputeInfo
    with pytest.raises(convserve.InvalidArgumentError, match="tiles"):
        client.convolve(x, h, tiles=0)
    _, small = client.convolve(x, h, tiles="auto", return_info=True)  # small: one-shot
    assert type(small) is convserve.ComputeInfo
    big = RNG.standard_normal(_tiles.AUTO_MIN_ELEMENTS)
    result, auto = client.convolve(big, h, "same", tiles="auto", return_info=True)  # large: one tile per replica
    assert isinstance(auto, _tiles.TiledComputeInfo) and len(auto.tiles) == 3
    np.testing.assert_allclose(result, client.convolve(big, h, "same"), atol=1e-9)


def test_single_address_and_async_client(replicas: list[RunningServer]) -> None:
    x, h = RNG.standard_normal(12_000), RNG.standard_normal(99)
    with convserve.Client(replicas[0].target) as single:
        np.testing.assert_allclose(single.correlate(x, h, "same", boundary="wrap", tiles=4), single.correlate(x, h, "same", boundary="wrap"), atol=1e-9)

    async def tiled() -> tuple[Any, Any, list[tuple[int, int]]]:
        calls: list[tuple[int, int]] = []
        async with convserve.AsyncClient(round_robin(replicas)) as client:
            one = await client.convolve(x, h, "valid")
            many = await client.convolve(x, h, "valid", tiles=4, progress=lambda done, total: calls.append((done, total)))
            return one, many, calls

    one, many, calls = asyncio.run(tiled())
    np.testing.assert_allclose(many, one, atol=1e-9)
    assert calls == [(k, 4) for k in range(5)]


def test_shared_memory_tiles_equal_one_shot() -> None:
    """With shared_memory=True every tile at or above the threshold travels through its own region pair."""
    server = start_server("--allow-shared-memory", "--log-level", "WARNING")
    x, h = RNG.standard_normal(200_000), RNG.standard_normal(65)
    try:
        with convserve.Client(server.target, shared_memory=True, shared_memory_threshold=64 * 1024) as client:
            np.testing.assert_allclose(client.convolve(x, h, "same", boundary="edge", tiles=4), client.convolve(x, h, "same", boundary="edge"), atol=1e-9)
    finally:
        assert stop_server(server) == 0


def test_a_replica_killed_mid_job_has_its_tiles_sent_to_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of one replica when the first tile is done; workers wait for the kill before taking more tiles,
    so the killed replica certainly had tiles left to lose."""
    servers = start_replicas(3)
    killed = threading.Event()
    taken, lost = [0], [0]
    take, was_lost = _tiles.Work.take, _tiles.Work.lost

    def gated_take(self: _tiles.Work, channel: int) -> int | None:
        taken[0] += 1
        if taken[0] > 6:  # every worker (3 channels x 2) has its first tile: the rest wait for the kill
            killed.wait(timeout=60)
        return take(self, channel)

    def counted_lost(self: _tiles.Work, channel: int, tile: int, error: convserve.ConvserveError) -> int | None:
        again = was_lost(self, channel, tile, error)
        lost[0] += again is not None
        return again

    def progress(done: int, total: int) -> None:
        if done == 1:
            os.kill(servers[1].process.pid, signal.SIGKILL)
            servers[1].process.wait()
            killed.set()

    monkeypatch.setattr(_tiles.Work, "take", gated_take)
    monkeypatch.setattr(_tiles.Work, "lost", counted_lost)
    x, h = RNG.standard_normal(120_000), RNG.standard_normal(31)
    try:
        with convserve.Client(round_robin(servers)) as client:
            expected = client.convolve(x, h, "same", boundary="reflect")  # before the kill
            result, info = client.convolve(x, h, "same", boundary="reflect", tiles=60, return_info=True, progress=progress)
    finally:
        killed.set()
        for server in (servers[0], servers[2]):
            assert stop_server(server) == 0
    assert killed.is_set() and servers[1].process.returncode == -signal.SIGKILL
    assert lost[0] >= 1  # tiles of the killed replica were sent again
    assert len(info.tiles) == 60
    np.testing.assert_allclose(result, expected, atol=1e-9)
