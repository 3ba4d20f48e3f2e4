"""Chunked calls: tensors assembled from ordered chunks, and results sent back as chunks.

A chunked call is validated from its header before any data is accepted; while its data arrives
it holds a share of the waiting budget, not a compute slot, and it is admitted to compute once
the data is complete (:func:`serve`).

The header of a chunked request declares every tensor's dtype and shape; the assembler checks
them, then preallocates one array per streamed tensor and copies each chunk straight into it
(no list of pieces joined at the end). A chunk for an unknown tensor, out of order, past the
declared size, or a stream that ends early is refused with INVALID_ARGUMENT, unless it ended
because the caller cancelled or its deadline passed (then it is recorded as that).

Every message of a chunked or streaming call moves under the idle timeout (:func:`receive`,
:func:`send`): a caller that sends, or reads, nothing for ``idle_timeout_seconds`` ends its
call with DEADLINE_EXCEEDED, and what the call holds is freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from convserve import _wire, codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission.limits import check_elements
from convserve_server.admission.requests import as_engine_error
from convserve_server.admission.weights import WeightsRegistry
from convserve_server.admission.workers import WaitingBudget, WorkerPool
from convserve_server.errors import CallerGone, IdleTimeout, InvalidArgumentError
from convserve_server.settings import Settings
from convserve_server.transport import encode
from convserve_server.transport.calls import CallRecord
from convserve_server.transport.rpcs import RpcSpec
from convserve_server.transport.unary import registered

CHUNK_BYTES = 1024 * 1024
# How long a request stream that ended short waits for the cancellation that may have ended it.
CANCEL_ARRIVAL_SECONDS = 0.05
Message = TypeVar("Message")


async def receive(messages: AsyncIterator[Message], seconds: float, what: str) -> Message | None:
    """The next request message (None at the end); IdleTimeout when none came within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):  # not wait_for: in 3.11 it can swallow the call's cancellation
            return await anext(messages, None)
    except TimeoutError:
        raise IdleTimeout(
            f"{what} sent nothing for {seconds:g} s (idle_timeout_seconds), so the server ended it "
            "and freed what it held; send the next message sooner, or start a new call"
        ) from None


async def send(context: grpc.aio.ServicerContext, message: Any, seconds: float, what: str) -> None:
    """Write one response message; IdleTimeout when the caller has not taken it within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await context.write(message)
    except TimeoutError:
        raise IdleTimeout(
            f"the caller read nothing of {what} for {seconds:g} s (idle_timeout_seconds), so the server ended the call and freed its result"
        ) from None


async def check_caller(context: grpc.aio.ServicerContext) -> None:
    """Raise CallerGone if a request stream that ended early was ended by its caller's deadline or cancel.

    gRPC ends the request iterator first and cancels the handler a moment later, so a short
    stream waits briefly for that cancellation before it is called malformed.
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise CallerGone(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed during the upload")
    await asyncio.sleep(CANCEL_ARRIVAL_SECONDS)  # a cancel arrives here as asyncio.CancelledError
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise CallerGone(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed during the upload")
    if context.cancelled():
        raise CallerGone(grpc.StatusCode.CANCELLED, "the caller cancelled during the upload")


class Assembler:
    """Collects the chunks of a request's streamed tensors into preallocated arrays."""

    def __init__(self, header: Any, fields: tuple[str, ...], max_elements: int) -> None:
        self.arrays: dict[str, npt.NDArray[Any]] = {}
        self._views: dict[str, memoryview] = {}
        self._received: dict[str, int] = {}
        for name in fields:
            if not header.HasField(name):
                continue
            tensor = getattr(header, name)
            try:
                dtype, shape, nbytes = codec.check_declared(tensor.dtype, tensor.shape, name)
            except ValueError as exc:
                raise as_engine_error(exc, name) from None
            check_elements(shape, name, max_elements)
            if len(tensor.data) == nbytes:
                continue  # complete inline (a small kernel); decoded with the header
            if tensor.data:
                raise InvalidArgumentError(
                    f"{name}.data", f"carries {len(tensor.data)} bytes in the header; send all {nbytes} bytes inline or none (then chunks)"
                )
            array = np.empty(shape, dtype=dtype)  # the wire's little-endian dtype
            self.arrays[name] = array
            self._views[name] = array.reshape(-1).view(np.uint8).data
            self._received[name] = 0

    def add(self, chunk: pb.TensorChunk | _wire.Chunk) -> None:
        """Copy one chunk into its tensor, checking its name, order and size."""
        view = self._views.get(chunk.field)
        if view is None:
            raise InvalidArgumentError("chunk.field", f"{chunk.field!r} is not a tensor announced as streamed (expected one of {sorted(self._views)})")
        start = self._received[chunk.field]
        if chunk.offset != start:
            raise InvalidArgumentError("chunk.offset", f"chunk of {chunk.field} at offset {chunk.offset}; expected {start} (chunks come in order)")
        end = start + len(chunk.data)
        if end > len(view):
            raise InvalidArgumentError("chunk.data", f"{chunk.field} would get {end} bytes; its shape declares {len(view)}")
        view[start:end] = chunk.data
        self._received[chunk.field] = end

    @property
    def streamed_bytes(self) -> int:
        """Bytes the header declares for the streamed tensors (what the upload will make the server hold)."""
        return sum(len(view) for view in self._views.values())

    @property
    def complete(self) -> bool:
        """Whether every streamed tensor has all its bytes."""
        return all(self._received[name] == len(view) for name, view in self._views.items())

    def finish(self) -> dict[str, npt.NDArray[Any]]:
        """The assembled arrays, once every streamed tensor is complete."""
        for name, view in self._views.items():
            if self._received[name] != len(view):
                raise InvalidArgumentError(f"{name}.data", f"the stream ended after {self._received[name]} of {len(view)} bytes")
        return self.arrays


def response_parts(array: npt.NDArray[Any], info: pb.ComputeInfo, field: str) -> Iterator[pb.ResponsePart | _wire.Chunk]:
    """The header, then the result's bytes in ``CHUNK_BYTES`` chunks (views of the result, serialized by :mod:`convserve._wire`)."""
    yield pb.ResponsePart(header=pb.ResponseHeader(result=codec.header(array, field), info=info))
    data = codec.wire_bytes(array)
    for start in range(0, len(data), CHUNK_BYTES):
        yield _wire.Chunk(field, start, data[start : start + CHUNK_BYTES])


async def serve(
    spec: RpcSpec,
    parts: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    settings: Settings,
    pool: WorkerPool,
    waiting: WaitingBudget,
    weights: WeightsRegistry,
) -> None:
    """Header, then chunks: validate from the header, wait for the data on the waiting budget
    (no compute slot), then admit, compute and send the result back in chunks.

    The compute reservation is taken only once the data is complete (RESOURCE_EXHAUSTED with a
    pushback if the server is still full a pushback later: the client re-sends) and kept until
    the result's last chunk has been sent.
    """
    assert spec.compute is not None
    record = CallRecord(spec.name, context, 0)
    idle = settings.idle_timeout_seconds
    async with record.guard():
        messages = aiter(parts)
        first = await receive(messages, idle, "the chunked call")
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError("header", "the first message of a chunked call must be the header")
        header = first.header
        assembler = Assembler(header, spec.tensor_fields, settings.max_elements)
        inline = [n for n in spec.tensor_fields if header.HasField(n) and n not in assembler.arrays]
        spec.check_headers(header, settings, only=inline)
        record.add_received(sum(len(getattr(header, n).data) for n in inline))
        entry = registered(header, weights)
        estimate = spec.estimated(header, entry)
        pool.check(estimate)  # never fits, or full right now: refused before any data is accepted
        ticket = waiting.admit(assembler.streamed_bytes, "this chunked upload")
        record.undo_on_failure(ticket.release)
        while (part := await receive(messages, idle, "the chunked upload")) is not None:
            if part.WhichOneof("part") != "chunk":
                raise InvalidArgumentError("chunk", "only chunks may follow the header")
            assembler.add(part.chunk)
            record.add_received(len(part.chunk.data))
        if not assembler.complete:
            await check_caller(context)
        arrays = assembler.finish()
        # The data is complete: now it needs a compute slot. It waits at most one pushback for
        # one (its data stays on the waiting budget meanwhile), then is refused like any call.
        reservation = await pool.reserve_within(estimate, pool.pushback_ms / 1000)
        ticket.release()
        result, info = await pool.run(spec.compute, header, arrays, entry, settings, reservation=reservation, release=False)
        record.undo_on_failure(reservation.release)  # held until the last chunk is sent (or the call ends)
        del arrays, assembler
        for part in response_parts(result, encode.compute_info(info), spec.result_field):
            await send(context, part, idle, "the chunked result")
        reservation.release()
    record.ok(info.method, result.nbytes)
