"""The ConvolutionService servicer: check, admit, compute on the pool, encode.

On the event loop a handler only checks the tensors' headers (cheap), estimates the request's
working memory and asks the pool for admission; decoding, planning, compute and encoding run on
a worker. Errors are mapped in one place (:mod:`convserve_server.status`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any, Callable

import grpc
import numpy as np
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from . import __version__, cost, metrics, wire
from .engine import conv_layer
from .engine import fft as fft_engine
from .engine.info import CallInfo
from .engine.planner import plan_signal_call
from .engine.signal import execute
from .pool import LimitExceeded, Overloaded, WorkerPool
from .settings import Settings
from .status import failure_for

log = logging.getLogger("convserve.server")
REQUEST_ID_KEY = "x-request-id"


class ConvolutionServicer(pb_grpc.ConvolutionServiceServicer):
    """Serves Convolve, Correlate, ConvLayer and GetServerInfo."""

    def __init__(self, settings: Settings, pool: WorkerPool, wisdom_state: Callable[[], str] = lambda: "none") -> None:
        self.settings = settings
        self.pool = pool
        self.wisdom_state = wisdom_state

    async def Convolve(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._serve("Convolve", context, request, self._signal, request, False)

    async def Correlate(self, request: pb.SignalRequest, context: grpc.aio.ServicerContext) -> pb.SignalResponse:  # noqa: N802
        return await self._serve("Correlate", context, request, self._signal, request, True)

    async def ConvLayer(self, request: pb.ConvLayerRequest, context: grpc.aio.ServicerContext) -> pb.ConvLayerResponse:  # noqa: N802
        return await self._serve("ConvLayer", context, request, self._conv_layer, request)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:  # noqa: N802
        s = self.settings
        return pb.ServerInfo(
            version=__version__,
            limits=pb.Limits(max_elements=s.max_elements, max_request_bytes=s.max_request_bytes,
                             max_output_bytes=s.max_output_bytes, max_concurrent_requests=s.max_concurrent_requests),
            dtypes=list(wire.codec.NUMPY_BY_DTYPE),
            methods=[pb.METHOD_AUTO, pb.METHOD_DIRECT, pb.METHOD_FFT, pb.METHOD_OVERLAP_ADD],
            fftw_threads=fft_engine.threads(),
            wisdom=self.wisdom_state(),
            workers=self.pool.workers,
        )

    async def _serve(self, rpc: str, context: grpc.aio.ServicerContext, request: Any,
                     work: Callable[..., Any], *args: Any) -> Any:
        """Admit and run ``work(*args)`` on the pool; turn any failure into a status with a request id."""
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        received = sum(len(getattr(request, name).data) for name in wire.tensor_fields(request))
        metrics.BYTES_IN.labels(rpc).inc(received)
        code = grpc.StatusCode.OK
        try:
            wire.check_headers(request, self.settings)
            estimate = cost.estimate(request)
            response = await self.pool.run(work, *args, cost=estimate)
        except Exception as error:  # every failure becomes a status; the server keeps serving
            failure = failure_for(error, request_id)
            code = failure.code
            if isinstance(error, (Overloaded, LimitExceeded)):
                metrics.REJECTIONS.labels("busy" if isinstance(error, Overloaded) else "never_fits").inc()
            log.info("call failed", extra={"request_id": request_id, "rpc": rpc, "code": code.name,
                                           "ms": round(1e3 * (time.perf_counter() - started), 2), "detail": failure.message})
            await context.abort(code, failure.message, trailing_metadata=((REQUEST_ID_KEY, request_id), *failure.trailers))
            raise  # unreachable: abort raises
        except BaseException:  # asyncio.CancelledError: the caller cancelled or the deadline passed
            code = grpc.StatusCode.CANCELLED
            log.info("call cancelled", extra={"request_id": request_id, "rpc": rpc,
                                              "ms": round(1e3 * (time.perf_counter() - started), 2)})
            raise
        finally:
            metrics.REQUESTS.labels(rpc, code.name).inc()
            metrics.LATENCY.labels(rpc).observe(time.perf_counter() - started)
        sent = len(response.result.data) if isinstance(response, pb.SignalResponse) else len(response.output.data)
        metrics.BYTES_OUT.labels(rpc).inc(sent)
        metrics.METHODS.labels(rpc, response.info.method).inc()
        log.info("call ok", extra={"request_id": request_id, "rpc": rpc, "method": response.info.method,
                                   "ms": round(1e3 * (time.perf_counter() - started), 2), "bytes_in": received, "bytes_out": sent})
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
