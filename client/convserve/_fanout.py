"""The I/O of a tiled Convolve/Correlate: one channel per resolved address, the tiles sent concurrently
(a thread pool for ``Client``, ``asyncio`` tasks for ``AsyncClient``), a tile whose replica is lost sent
again to another, and the stitched result (planning and stitching: :mod:`convserve._tiles`)."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import numpy.typing as npt

from convserve import _chunked, _options, _tiles
from convserve._base import Progress
from convserve.errors import ConvserveError, UnavailableError
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from convserve._transport import AsyncTransport, SyncTransport


def _methods(stub: Any, correlate: bool, timeout: float | None) -> tuple[Any, Any, Any, float | None, Any]:
    """The arguments of ``_run`` after the request: Convolve's or Correlate's methods on ``stub``, and the timeout."""
    if correlate:
        return stub.Correlate, stub.CorrelateChunked, pb.SignalRequestPart, timeout, stub.CorrelateShared
    return stub.Convolve, stub.ConvolveChunked, pb.SignalRequestPart, timeout, stub.ConvolveShared


class Channels:
    """A client's per-address channels (opened at its first tiled call, closed with the client)."""

    def __init__(self, owner: Any, aio: bool) -> None:
        self.owner = owner
        self.aio = aio
        self.channels: list[Any] = []
        self.stubs: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> list[Any]:
        """One stub per address of the owner's target (the owner's own stub for a single address)."""
        targets = _tiles.addresses(self.owner.target)
        if len(targets) == 1:
            return [self.owner._stub]
        with self._lock:
            if self.stubs:
                return self.stubs
            make = (grpc.aio.secure_channel, grpc.aio.insecure_channel) if self.aio else (grpc.secure_channel, grpc.insecure_channel)
            for target in targets:
                if self.owner.credentials is None:
                    channel = make[1](target, options=self.owner.channel_options)
                else:
                    channel = make[0](target, self.owner.credentials, options=self.owner.channel_options)
                stub = pb_grpc.ConvolutionServiceStub(channel)
                _chunked.chunked_stubs(stub, channel)
                self.channels.append(channel)
                self.stubs.append(stub)
        return self.stubs

    def close(self) -> list[Any]:
        """Forget the channels; return them (``close()`` is a coroutine on aio channels)."""
        channels, self.channels, self.stubs = self.channels, [], []
        return channels


def close_channels(client: Any) -> list[Any]:
    """The per-address channels a client opened for tiles (to close with the client)."""
    channels = client.__dict__.get("_tile_channels")
    return [] if channels is None else channels.close()


def _report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


class Job:
    """One tiled call: its plan, the whole in1, the per-address stubs and how each tile is sent."""

    def __init__(self, client: Any, aio: bool, in1: Any, in2: Any, mode: str, axes: Any, boundary: str, fill: complex, output_dtype: Any, count: Any) -> None:
        channels: Channels = client.__dict__.setdefault("_tile_channels", Channels(client, aio))
        self.stubs = channels.get()
        self.x, h = _options.as_array(in1, "in1"), _options.as_array(in2, "in2")
        self.plan = _tiles.plan(self.x, h, mode, axes, boundary, fill, output_dtype, _tiles.tile_count(count, self.x.size, len(self.stubs)))
        self.total = 0 if self.plan is None else len(self.plan.tiles)
        self.work = _tiles.Work(self.total, len(self.stubs))
        per_channel = _tiles.IN_FLIGHT_PER_CHANNEL if len(self.stubs) > 1 else min(self.total, 2 * _tiles.IN_FLIGHT_PER_CHANNEL)
        self.workers = [c for c in range(len(self.stubs)) for _ in range(max(1, per_channel))]

    def request(self, client: Any, k: int, method: str) -> Any:
        """Tile ``k``'s prepared request (valid mode, zero fill, on the tile's slice of the extended in1)."""
        assert self.plan is not None
        block = _tiles.tile_input(self.plan, self.x, self.plan.tiles[k])
        return client._signal_request(block, self.plan.h, "valid", method, self.plan.axes, "fill", 0, self.plan.output_dtype)


def _all_lost(total: int, done: int) -> ConvserveError:
    return UnavailableError(f"every replica was lost; {done} of {total} tiles done")


def run_sync(
    client: SyncTransport, in1: Any, in2: Any, mode: str, method: str, axes: Any, boundary: str, fill: complex, output_dtype: Any,
    count: int | str | None, correlate: bool, timeout: Any, progress: Progress,
) -> tuple[npt.NDArray[Any], Any] | None:  # fmt: skip
    """Run a tiled call on a blocking client; None when the call is not tiled (the caller makes it one-shot)."""
    job = Job(client, False, in1, in2, mode, axes, boundary, fill, output_dtype, count)
    if job.plan is None:
        return None
    ends = client._deadline(timeout)
    results: queue.Queue[tuple[int, Any, Any] | BaseException | None] = queue.Queue()

    def worker(channel: int) -> None:
        try:
            while (k := job.work.take(channel)) is not None:
                to: int | None = channel
                while to is not None:
                    try:
                        block, info = client._run(job.request(client, k, method), *_methods(job.stubs[to], correlate, client._left(ends)))
                        break
                    except ConvserveError as error:
                        if (to := job.work.lost(to, k, error)) is None:
                            raise
                results.put((k, block, info))
        except BaseException as error:  # handed to the caller's thread
            results.put(error)
        finally:
            results.put(None)  # this worker is done

    stitcher = _tiles.Stitcher(job.plan)
    _report(progress, 0, job.total)
    with ThreadPoolExecutor(max_workers=len(job.workers), thread_name_prefix="convserve-tile") as pool:
        for channel in job.workers:
            pool.submit(worker, channel)
        running = len(job.workers)
        try:
            while running:
                item = results.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    stitcher.place(*item)
                    _report(progress, stitcher.done, job.total)
        finally:
            job.work.stop()
    if stitcher.done < job.total or stitcher.result is None:
        raise _all_lost(job.total, stitcher.done)
    return stitcher.result, stitcher.info()


async def run_async(
    client: AsyncTransport, in1: Any, in2: Any, mode: str, method: str, axes: Any, boundary: str, fill: complex, output_dtype: Any,
    count: int | str | None, correlate: bool, timeout: Any, progress: Progress,
) -> tuple[npt.NDArray[Any], Any] | None:  # fmt: skip
    """Run a tiled call on an asyncio client; None when the call is not tiled (the caller makes it one-shot)."""
    job = Job(client, True, in1, in2, mode, axes, boundary, fill, output_dtype, count)
    if job.plan is None:
        return None
    ends = client._deadline(timeout)
    stitcher = _tiles.Stitcher(job.plan)

    async def worker(channel: int) -> None:
        while (k := job.work.take(channel)) is not None:
            to: int | None = channel
            while to is not None:
                try:
                    block, info = await client._run(job.request(client, k, method), *_methods(job.stubs[to], correlate, client._left(ends)))
                    break
                except ConvserveError as error:
                    if (to := job.work.lost(to, k, error)) is None:
                        raise
            stitcher.place(k, block, info)
            _report(progress, stitcher.done, job.total)

    _report(progress, 0, job.total)
    tasks = [asyncio.ensure_future(worker(channel)) for channel in job.workers]
    try:
        await asyncio.gather(*tasks)
    finally:
        job.work.stop()
        for task in tasks:
            task.cancel()
    if stitcher.done < job.total or stitcher.result is None:
        raise _all_lost(job.total, stitcher.done)
    return stitcher.result, stitcher.info()
