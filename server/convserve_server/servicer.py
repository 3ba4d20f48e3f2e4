"""The ConvolutionService servicer: decode, admit, compute on the pool, encode.

Each handler runs its whole computation (decoding, validation, planning, compute, encoding) on
the worker pool, so the event loop only moves messages. Errors are mapped in one place
(:mod:`convserve_server.status`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any, Awaitable, Callable

import grpc
import numpy as np
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from . import __version__, wire
from .engine import conv_layer
from .engine import fft as fft_engine
from .engine.info import CallInfo
from .engine.planner import plan_signal_call
from .engine.signal import execute
from .pool import WorkerPool
from .settings import Settings
from .status import LimitExceeded, failure_for

log = logging.getLogger("convserve.server")
REQUEST_ID_KEY = "x-request-id"


class ConvolutionServicer(pb_grpc.ConvolutionServiceServicer):
    """Serves Convolve, Correlate, ConvLayer and GetServerInfo."""

    def __init__(self, settings: Settings, pool: WorkerPool) -> None:
        self.settings = settings
        self.pool = pool

    async def Convolve(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._serve("Convolve", context, self._signal, request, False)

    async def Correlate(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._serve("Correlate", context, self._signal, request, True)

    async def ConvLayer(self, request: pb.ConvLayerRequest, context: grpc.aio.ServicerContext) -> pb.ConvLayerResponse:  # noqa: N802
        return await self._serve("ConvLayer", context, self._conv_layer, request)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:  # noqa: N802
        s = self.settings
        return pb.ServerInfo(
            version=__version__,
            limits=pb.Limits(max_elements=s.max_elements, max_request_bytes=s.max_request_bytes,
                             max_output_bytes=s.max_output_bytes, max_concurrent_requests=s.max_concurrent_requests),
            dtypes=sorted(wire.codec.NUMPY_BY_DTYPE),
            methods=[pb.METHOD_AUTO, pb.METHOD_DIRECT, pb.METHOD_FFT, pb.METHOD_OVERLAP_ADD],
            fftw_threads=fft_engine.threads(),
            wisdom="none",
            workers=self.pool.workers,
        )

    async def _serve(self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[..., Any], *args: Any) -> Any:
        """Run ``work(*args)`` on the pool; turn any failure into a status with a request id."""
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        try:
            response = await self.pool.run(work, *args)
        except Exception as error:  # every failure becomes a status; the server keeps serving
            failure = failure_for(error, request_id)
            log.info("%s %s -> %s (%.1f ms): %s", request_id, rpc, failure.code.name,
                     1e3 * (time.perf_counter() - started), failure.message)
            await context.abort(failure.code, failure.message, trailing_metadata=((REQUEST_ID_KEY, request_id), *failure.trailers))
            raise  # unreachable: abort raises
        log.info("%s %s -> OK (%.1f ms, %s)", request_id, rpc, 1e3 * (time.perf_counter() - started), response.info.method)
        return response

    def _check_output(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        """Refuse a result larger than the configured limits before computing it."""
        count = math.prod(shape)
        size = count * dtype.itemsize
        if count > self.settings.max_elements or size > self.settings.max_output_bytes:
            raise LimitExceeded(
                f"the result {list(shape)} of {dtype.name} ({size} bytes, {count} elements) exceeds the limit of "
                f"{self.settings.max_output_bytes} bytes / {self.settings.max_elements} elements"
            )

    def _signal(self, request: pb.SignalRequest, correlate: bool) -> pb.SignalResponse:
        """Compute Convolve or Correlate (on a worker thread)."""
        arguments = wire.signal_arguments(request, self.settings)
        plan = plan_signal_call(**arguments, correlate=correlate)
        self._check_output(plan.output_shape, plan.out_dtype)
        started = time.perf_counter()
        result = execute(plan)
        info = CallInfo(plan.method, time.perf_counter() - started, tuple(plan.warnings))
        return pb.SignalResponse(result=wire.result_tensor(result), info=wire.compute_info(info))

    def _conv_layer(self, request: pb.ConvLayerRequest) -> pb.ConvLayerResponse:
        """Compute ConvLayer (on a worker thread)."""
        arguments = wire.conv_layer_arguments(request, self.settings)
        output, info = conv_layer(**arguments, return_info=True)
        self._check_output(output.shape, output.dtype)
        return pb.ConvLayerResponse(output=wire.result_tensor(output), info=wire.compute_info(info))

