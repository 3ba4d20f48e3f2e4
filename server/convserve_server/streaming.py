"""The ConvolveStream RPC: a configuration message, then blocks in, output blocks out.

The stream holds one admission reservation (its kernel spectra and buffers) for its whole life;
each block is computed on the worker pool, so the event loop only moves messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from . import wire
from .calls import CallRecord
from .engine.errors import InvalidArgumentError
from .engine.stream import StreamConvolver
from .pool import WorkerPool
from .settings import Settings

# Working memory of a stream: kernel spectra (complex, about 4x the kernel as float64) and buffers.
STREAM_OVERHEAD_BYTES = 1 << 20


async def convolve_stream(settings: Settings, pool: WorkerPool, requests: AsyncIterator[pb.StreamRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
    """Serve one streaming convolution (see the module docstring)."""
    record = CallRecord("ConvolveStream", context, 0)
    sent = 0
    async with record.guard():
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "config":
            raise InvalidArgumentError("config", "the first message of a stream must be its config")
        config = first.config
        wire.check_headers(config, settings, only=["kernel"])
        kernel = wire.decode_field(config, "kernel", settings)
        output_dtype = None
        if config.output_dtype != pb.DTYPE_UNSPECIFIED:
            if config.output_dtype not in codec.NUMPY_BY_DTYPE:
                raise InvalidArgumentError("output_dtype", f"unknown value {config.output_dtype}")
            output_dtype = codec.NUMPY_BY_DTYPE[config.output_dtype].newbyteorder("=")
        convolver = StreamConvolver(kernel, output_dtype)
        record.add_received(len(config.kernel.data))
        reservation = pool.reserve(16 * kernel.nbytes + STREAM_OVERHEAD_BYTES)
        record.undo_on_failure(reservation.release)
        async for message in requests:
            if message.WhichOneof("part") != "block":
                raise InvalidArgumentError("block", "only blocks may follow the config")
            codec_block = wire.decode_tensor(message.block, "block", settings)
            record.add_received(len(message.block.data))
            output = await pool.run(convolver.push, codec_block, reservation=reservation, release=False)
            if output.size:
                tensor = codec.encode(output, "block")
                sent += len(tensor.data)
                yield pb.StreamResponse(block=tensor)
        tail = await pool.run(convolver.close, reservation=reservation, release=False)
        if tail.size:
            tensor = codec.encode(tail, "block")
            sent += len(tensor.data)
            yield pb.StreamResponse(block=tensor)
    reservation.release()
    record.ok("upols" if not convolver.exact else "direct", sent)


