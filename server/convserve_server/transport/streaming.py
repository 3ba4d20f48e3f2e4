"""The ConvolveStream RPC: a configuration message, then blocks in, output blocks out.

Between blocks a stream holds no compute slot: it holds a ticket of the waiting budget for what
it keeps meanwhile (its kernel, the convolver's state for the real channel count, the samples it
carries over and the next block in flight). Each block is computed on the worker pool under a
short compute reservation of its own (the block's work arrays), taken when the block is ready
and released as soon as it is done, so idle streams can never lock computing callers out.
Every message moves under the idle timeout (see :mod:`.chunked`).
"""

from __future__ import annotations

import contextlib

from collections.abc import AsyncIterator
from typing import Any

import grpc
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission.requests import output_dtype
from convserve_server.admission.workers import WaitingBudget, WorkerPool
from convserve_server.engine.signal.streaming import StreamConvolver
from convserve_server.admission.estimates import F64, FIRST_BLOCK_ALLOWANCE, block_work_bytes, carried_bytes, state_bytes
from convserve_server.errors import InvalidArgumentError
from convserve_server.settings import Settings
from convserve_server.transport import chunked, decode
from convserve_server.transport.calls import CallRecord
from convserve_server.transport.rpcs import RpcSpec


def _block_geometry(tensor: pb.Tensor) -> tuple[int, int]:
    """(samples, channels) a block's header declares (clamped; decoding validates it)."""
    shape = [max(0, int(d)) for d in tensor.shape]
    samples = shape[0] if shape else 0
    channels = shape[1] if len(shape) == 2 else 1
    return samples, max(1, channels)


def _exact_for(convolver: StreamConvolver, block: pb.Tensor) -> bool:
    """Whether the stream computes exactly in integers (known from its first block's dtype)."""
    if convolver.dtype is not None:
        return bool(convolver.exact)
    kinds = codec.NUMPY_BY_DTYPE.get(block.dtype)
    return (
        kinds is not None
        and kinds.kind in "biu"
        and convolver.kernel.dtype.kind in "biu"
        and (convolver.output_dtype_request is None or convolver.output_dtype_request.kind in "biu")
    )


async def serve(
    spec: RpcSpec,
    requests: AsyncIterator[pb.StreamRequest],
    context: grpc.aio.ServicerContext,
    settings: Settings,
    pool: WorkerPool,
    waiting: WaitingBudget,
) -> None:
    """Serve one streaming convolution, writing its responses (see the module docstring).

    The work runs in :func:`_serve`, a frame of its own that has finished by the time a failure
    is turned into a status, so the failure's cleared traceback holds none of the stream's
    blocks. gRPC's request iterator keeps the last message it received until it is closed, and
    a failed call leaves it in a reference cycle: it is closed here, so a refused block is freed
    when its call ends, not when the cyclic collector happens to run.
    """
    record = CallRecord(spec.name, context, 0)
    try:
        async with record.guard():
            method, sent = await _serve(spec, settings, pool, waiting, requests, context, record)
    finally:
        await _close(requests)
    record.ok(method, sent)


async def _close(requests: AsyncIterator[Any]) -> None:
    """Close gRPC's request iterator (the async generator its receiver hands out), dropping the message it holds."""
    closer = getattr(aiter(requests), "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


async def _serve(
    spec: RpcSpec,
    settings: Settings,
    pool: WorkerPool,
    waiting: WaitingBudget,
    requests: AsyncIterator[pb.StreamRequest],
    context: grpc.aio.ServicerContext,
    record: CallRecord,
) -> tuple[str, int]:
    """The stream's work; returns the method that ran and the bytes sent."""
    idle = settings.idle_timeout_seconds
    sent = 0
    messages = aiter(requests)
    first = await chunked.receive(messages, idle, "the stream")
    if first is None or first.WhichOneof("part") != "config":
        raise InvalidArgumentError("config", "the first message of a stream must be its config")
    config = first.config
    spec.check_headers(config, settings)
    record.add_received(len(config.kernel.data))
    kernel_bytes = 2 * len(config.kernel.data)  # the message and the decoded kernel
    ticket = waiting.admit(kernel_bytes + FIRST_BLOCK_ALLOWANCE, "this stream")
    record.undo_on_failure(ticket.release)
    kernel = decode.decode_field(config, "kernel", settings)
    convolver = StreamConvolver(kernel, output_dtype(config.output_dtype))
    largest = 0
    warnings: list[str] = []

    async def deliver(output: Any) -> None:
        nonlocal sent
        warnings.extend(w for w in convolver.take_warnings() if w not in warnings)
        if output.size:
            tensor = codec.encode(output, "block")
            sent += len(tensor.data)
            await chunked.send(context, pb.StreamResponse(block=tensor, warnings=warnings), idle, "the stream's output")
            warnings.clear()

    while (message := await chunked.receive(messages, idle, "the stream")) is not None:
        if message.WhichOneof("part") != "block":
            raise InvalidArgumentError("block", "only blocks may follow the config")
        block = decode.decode_tensor(message.block, "block", settings)  # a malformed block: INVALID_ARGUMENT first
        samples, channels = _block_geometry(message.block)
        exact = _exact_for(convolver, message.block)
        first_block = convolver.dtype is None
        if samples > largest or first_block:
            largest = max(largest, samples)
            incoming = largest * channels * F64  # the next block in flight, as large as the largest yet
            ticket.resize(
                kernel_bytes
                + state_bytes(convolver.taps, convolver.block, channels, exact)
                + carried_bytes(largest, convolver.taps, convolver.block, channels, exact)
                + incoming
            )
        record.add_received(len(message.block.data))
        work = block_work_bytes(samples, convolver.taps, convolver.block, channels, exact, first_block)
        reservation = await pool.reserve_within(work, idle)
        await deliver(await pool.run(convolver.push, block, reservation=reservation))
    if convolver.dtype is not None:
        channels = convolver.channels or 1
        work = block_work_bytes(convolver.taps + convolver.block, convolver.taps, convolver.block, channels, bool(convolver.exact), False)
        reservation = await pool.reserve_within(work, idle)
        await deliver(await pool.run(convolver.close, reservation=reservation))
    ticket.release()
    return ("upols" if not convolver.exact else "direct"), sent
