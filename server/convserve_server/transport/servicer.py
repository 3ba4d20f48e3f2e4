"""The ConvolutionService servicer: a routing table, one entry of a few lines per RPC.

Each RPC hands its request to the module of its transport (:mod:`.unary`, :mod:`.chunked`,
:mod:`.shared_memory`, :mod:`.streaming`) with its entry of the RPC table (:mod:`.rpcs`), which
says what to check, estimate and compute; the computations themselves are in :mod:`.compute`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Callable, TypeAlias

import grpc
from convserve import _wire, codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from convserve_server import __version__
from convserve_server.admission.weights import WeightsRegistry
from convserve_server.admission.workers import WaitingBudget, WorkerPool
from convserve_server.engine.signal import fft_product
from convserve_server.ops import metrics
from convserve_server.settings import Settings
from convserve_server.transport import chunked, rpcs, shared_memory, streaming, unary

Context: TypeAlias = grpc.aio.ServicerContext


class _Handlers:
    """Stands in for the server while the generated code registers the servicer, to keep its handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the generic handler is rebuilt from the registered handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Keep the handlers."""
        self.handlers = dict(handlers)


def register(servicer: pb_grpc.ConvolutionServiceServicer, server: grpc.aio.Server) -> None:
    """Add the service to ``server`` as the generated code would, with the chunked RPCs' chunks handled by :mod:`convserve._wire`."""
    kept = _Handlers()
    pb_grpc.add_ConvolutionServiceServicer_to_server(servicer, kept)
    handlers = kept.handlers
    for name, part in _wire.CHUNKED_PARTS.items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(handlers[name].stream_stream, _wire.deserializer(part), _wire.serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_wire.SERVICE, handlers),))
    server.add_registered_method_handlers(_wire.SERVICE, handlers)


class ConvolutionServicer(pb_grpc.ConvolutionServiceServicer):
    """Serves the RPCs of convserve.v1.ConvolutionService."""

    def __init__(self, settings: Settings, pool: WorkerPool, wisdom_state: Callable[[], str] = lambda: "none") -> None:
        self.settings = settings
        self.pool = pool
        self.wisdom_state = wisdom_state
        self.weights = WeightsRegistry(settings.weights_cache_bytes, max_entries=settings.weights_cache_entries)
        self.waiting = WaitingBudget(settings.max_waiting_streams, settings.waiting_budget_bytes, settings.busy_pushback_ms)
        self.waiting.on_change = metrics.waiting_changed

    async def Convolve(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:  # noqa: N802
        """Unary convolution (scipy.signal.convolve)."""
        return await unary.serve(rpcs.CONVOLVE, request, context, self.settings, self.pool, self.weights)

    async def Correlate(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:  # noqa: N802
        """Unary correlation (scipy.signal.correlate)."""
        return await unary.serve(rpcs.CORRELATE, request, context, self.settings, self.pool, self.weights)

    async def ConvLayer(self, request: pb.ConvLayerRequest, context: Context) -> pb.ConvLayerResponse:  # noqa: N802
        """Unary CNN layer (torch.nn.ConvNd, optional ReLU and pooling)."""
        return await unary.serve(rpcs.CONV_LAYER, request, context, self.settings, self.pool, self.weights)

    async def ConvTranspose(self, request: pb.ConvTransposeRequest, context: Context) -> pb.ConvLayerResponse:  # noqa: N802
        """Unary transposed convolution (torch.nn.functional.conv_transposeNd)."""
        return await unary.serve(rpcs.CONV_TRANSPOSE, request, context, self.settings, self.pool, self.weights)

    async def RegisterWeights(self, request: pb.RegisterWeightsRequest, context: Context) -> pb.RegisterWeightsResponse:  # noqa: N802
        """Store a layer's weights and bias for later calls by id."""
        return await unary.register_weights(rpcs.REGISTER_WEIGHTS, request, context, self.settings, self.pool, self.weights)

    async def ConvolveChunked(self, parts: AsyncIterator[pb.SignalRequestPart], context: Context) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        """Convolution with inputs and result in chunks."""
        await chunked.serve(rpcs.CONVOLVE_CHUNKED, parts, context, self.settings, self.pool, self.waiting, self.weights)
        return
        yield  # an async generator that yields nothing: the parts are written under the idle timeout

    async def CorrelateChunked(self, parts: AsyncIterator[pb.SignalRequestPart], context: Context) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        """Correlation with inputs and result in chunks."""
        await chunked.serve(rpcs.CORRELATE_CHUNKED, parts, context, self.settings, self.pool, self.waiting, self.weights)
        return
        yield  # see ConvolveChunked

    async def ConvLayerChunked(self, parts: AsyncIterator[pb.ConvLayerRequestPart], context: Context) -> AsyncIterator[pb.ResponsePart]:  # noqa: N802
        """CNN layer with inputs and output in chunks."""
        await chunked.serve(rpcs.CONV_LAYER_CHUNKED, parts, context, self.settings, self.pool, self.waiting, self.weights)
        return
        yield  # see ConvolveChunked

    async def ConvolveStream(self, requests: AsyncIterator[pb.StreamRequest], context: Context) -> AsyncIterator[pb.StreamResponse]:  # noqa: N802
        """Convolve an unbounded signal block by block."""
        await streaming.serve(rpcs.CONVOLVE_STREAM, requests, context, self.settings, self.pool, self.waiting)
        return
        yield  # see ConvolveChunked

    async def ConvolveShared(self, request: pb.SharedSignalRequest, context: Context) -> pb.SharedResponse:  # noqa: N802
        """Convolution with inputs and result in the client's shared memory."""
        return await shared_memory.serve(rpcs.CONVOLVE_SHARED, request, context, self.settings, self.pool, correlate=False)

    async def CorrelateShared(self, request: pb.SharedSignalRequest, context: Context) -> pb.SharedResponse:  # noqa: N802
        """Correlation with inputs and result in the client's shared memory."""
        return await shared_memory.serve(rpcs.CORRELATE_SHARED, request, context, self.settings, self.pool, correlate=True)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: Context) -> pb.ServerInfo:  # noqa: N802
        """Version, limits, dtypes, methods and the FFTW state."""
        s = self.settings
        return pb.ServerInfo(
            version=__version__,
            limits=pb.Limits(
                max_elements=s.max_elements,
                max_request_bytes=s.max_request_bytes,
                max_output_bytes=s.max_output_bytes,
                max_concurrent_requests=s.max_concurrent_requests,
            ),
            dtypes=list(codec.NUMPY_BY_DTYPE),
            methods=[pb.METHOD_AUTO, pb.METHOD_DIRECT, pb.METHOD_FFT, pb.METHOD_OVERLAP_ADD],
            fftw_threads=fft_product.threads(),
            wisdom=self.wisdom_state(),
            workers=self.pool.workers,
        )
