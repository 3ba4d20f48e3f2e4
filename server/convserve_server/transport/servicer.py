"""The ConvolutionService servicer: check, admit, compute on the pool, encode.

On the event loop a handler only checks the tensors' headers (cheap), estimates the request's
working memory and asks the pool for admission; decoding, planning, compute and encoding run on
a worker. Chunked calls are checked from the header, before any data is accepted; while their
data arrives they hold a share of the waiting budget, not a compute slot, and they are admitted
to compute once the data is complete.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any, Callable

import grpc
import numpy as np
import numpy.typing as npt
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from convserve_server import __version__
from convserve_server.transport import chunked as chunks, shared_memory as shared, streaming, wire
from convserve_server.admission import estimates as cost
from convserve_server.ops import metrics
from convserve_server.transport.calls import CallRecord
from convserve_server.engine import conv_layer, conv_transpose
from convserve_server.engine.signal import fft_product as fft_engine
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.info import CallInfo
from convserve_server.engine.signal.planner import plan_signal_call
from convserve_server.engine.signal.convolution import execute
from convserve_server.admission.workers import LimitExceeded, WaitingBudget, WorkerPool
from convserve_server.settings import Settings
from convserve_server.transport.status import FailedPrecondition
from convserve_server.admission.weights import Entry, WeightsRegistry

Arrays = dict[str, npt.NDArray[Any]]


class ConvolutionServicer(pb_grpc.ConvolutionServiceServicer):
    """Serves the RPCs of convserve.v1.ConvolutionService."""

    def __init__(self, settings: Settings, pool: WorkerPool, wisdom_state: Callable[[], str] = lambda: "none") -> None:
        self.settings = settings
        self.pool = pool
        self.wisdom_state = wisdom_state
        self.weights = WeightsRegistry(settings.weights_cache_bytes, max_entries=settings.weights_cache_entries)
        self.waiting = WaitingBudget(settings.max_waiting_streams, settings.waiting_budget_bytes, settings.busy_pushback_ms)
        self.waiting.on_change = metrics.waiting_changed

    async def Convolve(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._unary("Convolve", context, request, lambda _: self._signal(request, None, False))

    async def Correlate(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._unary("Correlate", context, request, lambda _: self._signal(request, None, True))

    async def ConvLayer(self, request: pb.ConvLayerRequest, context: grpc.aio.ServicerContext) -> pb.ConvLayerResponse:  # noqa: N802
        return await self._unary("ConvLayer", context, request, lambda entry: self._layer(request, None, entry))

    async def ConvTranspose(self, request: pb.ConvTransposeRequest, context: grpc.aio.ServicerContext) -> pb.ConvLayerResponse:  # noqa: N802
        return await self._unary("ConvTranspose", context, request, lambda entry: self._transpose(request, entry))

    async def RegisterWeights(self, request: pb.RegisterWeightsRequest, context: grpc.aio.ServicerContext) -> pb.RegisterWeightsResponse:  # noqa: N802
        record = CallRecord("RegisterWeights", context, len(request.weight.data) + len(request.bias.data))
        async with record.guard():
            wire.check_headers(request, self.settings)
            size = cost.estimate(request)
            if size > self.weights.limit_bytes:
                raise LimitExceeded(
                    f"the weights take {size} bytes; the weights cache holds at most "
                    f"{self.weights.limit_bytes} bytes (weights_cache_bytes): send them with each call instead"
                )
            entry = await self.pool.run(self._register, request, cost=size)
        record.ok("", 0)
        return pb.RegisterWeightsResponse(weights_id=entry.id)

    async def ConvolveChunked(self, parts: AsyncIterator[pb.SignalRequestPart], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        await self._chunked("ConvolveChunked", context, parts, lambda h, a, _: self._signal(h, a, False))
        return
        yield  # an async generator that yields nothing: the parts are written under the idle timeout

    async def CorrelateChunked(self, parts: AsyncIterator[pb.SignalRequestPart], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        await self._chunked("CorrelateChunked", context, parts, lambda h, a, _: self._signal(h, a, True))
        return
        yield  # see ConvolveChunked

    async def ConvLayerChunked(self, parts: AsyncIterator[pb.ConvLayerRequestPart], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        await self._chunked("ConvLayerChunked", context, parts, self._layer)
        return
        yield  # see ConvolveChunked

    async def ConvolveStream(self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:  # noqa: N802
        await streaming.convolve_stream(self.settings, self.pool, self.waiting, requests, context)
        return
        yield  # see ConvolveChunked

    async def ConvolveShared(self, request: pb.SharedSignalRequest, context: grpc.aio.ServicerContext) -> pb.SharedResponse:  # noqa: N802
        return await self._shared_call("ConvolveShared", context, request, False)

    async def CorrelateShared(self, request: pb.SharedSignalRequest, context: grpc.aio.ServicerContext) -> pb.SharedResponse:  # noqa: N802
        return await self._shared_call("CorrelateShared", context, request, True)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:  # noqa: N802
        s = self.settings
        return pb.ServerInfo(
            version=__version__,
            limits=pb.Limits(
                max_elements=s.max_elements,
                max_request_bytes=s.max_request_bytes,
                max_output_bytes=s.max_output_bytes,
                max_concurrent_requests=s.max_concurrent_requests,
            ),
            dtypes=list(wire.codec.NUMPY_BY_DTYPE),
            methods=[pb.METHOD_AUTO, pb.METHOD_DIRECT, pb.METHOD_FFT, pb.METHOD_OVERLAP_ADD],
            fftw_threads=fft_engine.threads(),
            wisdom=self.wisdom_state(),
            workers=self.pool.workers,
        )

    async def _unary(self, rpc: str, context: grpc.aio.ServicerContext, request: Any, work: Callable[[Entry | None], tuple[npt.NDArray[Any], CallInfo]]) -> Any:
        """Admit and run ``work`` (given the registered weights the request names) on the pool;
        encode its result; map any failure to a status."""
        record = CallRecord(rpc, context, sum(len(getattr(request, n).data) for n in wire.tensor_fields(request)))
        async with record.guard():
            wire.check_headers(request, self.settings)
            entry = self._registered(request)
            result, info = await self.pool.run(work, entry, cost=cost.estimate(request, entry))
        tensor = wire.result_tensor(result)
        record.ok(info.method, len(tensor.data))
        if isinstance(request, pb.SignalRequest):
            return pb.SignalResponse(result=tensor, info=wire.compute_info(info))
        return pb.ConvLayerResponse(output=tensor, info=wire.compute_info(info))

    async def _chunked(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        parts: AsyncIterator[Any],
        work: Callable[[Any, Arrays, Entry | None], tuple[npt.NDArray[Any], CallInfo]],
    ) -> None:
        """Header, then chunks: validate from the header, wait for the data on the waiting budget
        (no compute slot), then admit, compute and send the result back in chunks.

        The compute reservation is taken only once the data is complete (RESOURCE_EXHAUSTED with a
        pushback if the server is still full a pushback later: the client re-sends) and kept until
        the result's last chunk has been sent.
        """
        record = CallRecord(rpc, context, 0)
        idle = self.settings.idle_timeout_seconds
        async with record.guard():
            messages = aiter(parts)
            first = await chunks.receive(messages, idle, "the chunked call")
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidArgumentError("header", "the first message of a chunked call must be the header")
            header = first.header
            fields = wire.tensor_fields(header)
            assembler = chunks.Assembler(header, fields, self.settings.max_elements)
            inline = [n for n in fields if header.HasField(n) and n not in assembler.arrays]
            wire.check_headers(header, self.settings, only=inline)
            record.add_received(sum(len(getattr(header, n).data) for n in inline))
            entry = self._registered(header)
            estimate = cost.estimate(header, entry)
            self.pool.check(estimate)  # never fits, or full right now: refused before any data is accepted
            ticket = self.waiting.admit(assembler.streamed_bytes, "this chunked upload")
            record.undo_on_failure(ticket.release)
            while (part := await chunks.receive(messages, idle, "the chunked upload")) is not None:
                if part.WhichOneof("part") != "chunk":
                    raise InvalidArgumentError("chunk", "only chunks may follow the header")
                assembler.add(part.chunk)
                record.add_received(len(part.chunk.data))
            if not assembler.complete:
                await chunks.check_caller(context)
            arrays = assembler.finish()
            # The data is complete: now it needs a compute slot. It waits at most one pushback for
            # one (its data stays on the waiting budget meanwhile), then is refused like any call.
            reservation = await self.pool.reserve_within(estimate, self.pool.pushback_ms / 1000)
            ticket.release()
            result, info = await self.pool.run(work, header, arrays, entry, reservation=reservation, release=False)
            record.undo_on_failure(reservation.release)  # held until the last chunk is sent (or the call ends)
            del arrays, assembler
            field = "result" if isinstance(header, pb.SignalRequest) else "output"
            for part in chunks.response_parts(result, wire.compute_info(info), field):
                await chunks.send(context, part, idle, "the chunked result")
            reservation.release()
        record.ok(info.method, result.nbytes)

    async def _shared_call(self, rpc: str, context: grpc.aio.ServicerContext, request: pb.SharedSignalRequest, correlate: bool) -> pb.SharedResponse:
        """Compute with inputs and result in the client's shared memory (opt-in)."""
        record = CallRecord(rpc, context, 0)
        async with record.guard():
            if not self.settings.allow_shared_memory:
                raise FailedPrecondition("shared memory is off on this server; start it with --allow-shared-memory (and share /dev/shm with the client)")
            if request.options.HasField("in1") or request.options.HasField("in2"):
                raise InvalidArgumentError("options", "in1 and in2 go in the shared tensors, not in options")
            declared = pb.SignalRequest()
            declared.CopyFrom(request.options)  # every option counts in the estimate (mode, boundary, output_dtype)
            declared.in1.CopyFrom(pb.Tensor(dtype=request.in1.dtype, shape=request.in1.shape))
            declared.in2.CopyFrom(pb.Tensor(dtype=request.in2.dtype, shape=request.in2.shape))
            wire.check_options(declared)
            for name in ("in1", "in2"):
                wire.check_declared(getattr(declared, name), name, self.settings)
            dtype, shape, info = await self.pool.run(shared.compute, request, correlate, self.settings, self._check_output, cost=cost.estimate(declared))
        record.ok(info.method, 0)
        return pb.SharedResponse(result=pb.Tensor(dtype=wire.codec.dtype_code(dtype, "result"), shape=shape), info=wire.compute_info(info))

    def _check_output(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        """Refuse a result larger than the configured limits before computing it."""
        count = math.prod(shape)
        size = count * dtype.itemsize
        if count > self.settings.max_elements or size > self.settings.max_output_bytes:
            raise LimitExceeded(
                f"the result {list(shape)} of {dtype.name} ({size} bytes, {count} elements) exceeds the limit of "
                f"{self.settings.max_output_bytes} bytes / {self.settings.max_elements} elements"
            )

    def _signal(self, request: pb.SignalRequest, arrays: Arrays | None, correlate: bool) -> tuple[npt.NDArray[Any], CallInfo]:
        """Compute Convolve or Correlate (on a worker thread)."""
        plan = plan_signal_call(**wire.signal_arguments(request, self.settings, arrays), correlate=correlate)
        self._check_output(plan.output_shape, plan.out_dtype)
        started = time.perf_counter()
        result = execute(plan)
        return result, CallInfo(plan.method, time.perf_counter() - started, tuple(plan.warnings))

    def _registered(self, request: Any) -> Entry | None:
        """The registered weights a request names (None: inline weights); NotFound when unknown or evicted."""
        weights_id = wire.registered_id(request)
        return self.weights.get(weights_id) if weights_id else None

    def _register(self, request: pb.RegisterWeightsRequest) -> Entry:
        """Decode, hash and store a RegisterWeights request's tensors (on a worker thread)."""
        weight = wire.decode_field(request, "weight", self.settings)
        bias = wire.decode_field(request, "bias", self.settings) if request.HasField("bias") else None
        return self.weights.register(weight, bias)

    def _layer(self, request: pb.ConvLayerRequest, arrays: Arrays | None, entry: Entry | None = None) -> tuple[npt.NDArray[Any], CallInfo]:
        """Compute ConvLayer (on a worker thread)."""
        output, info = conv_layer(**wire.conv_layer_arguments(request, self.settings, arrays, entry), return_info=True)
        self._check_output(output.shape, output.dtype)
        return output, info

    def _transpose(self, request: pb.ConvTransposeRequest, entry: Entry | None) -> tuple[npt.NDArray[Any], CallInfo]:
        """Compute ConvTranspose (on a worker thread); the output size is checked from the shapes before any work."""
        output, info = conv_transpose(**wire.conv_transpose_arguments(request, self.settings, entry), return_info=True)
        self._check_output(output.shape, output.dtype)
        return output, info
