"""Build, start and stop the gRPC server (health, reflection, graceful shutdown)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import grpc
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .pool import WorkerPool
from .servicer import ConvolutionServicer
from .settings import Settings

log = logging.getLogger("convserve.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConvolutionService"].full_name
# Room for the protobuf framing around the tensors.
MESSAGE_OVERHEAD = 64 * 1024


class StartupError(RuntimeError):
    """The server could not start (for example, its port is taken)."""


def create_server(settings: Settings) -> tuple[grpc.aio.Server, int, health.HealthServicer, WorkerPool]:
    """Create (not start) the server; return it, its bound port, its health servicer and its pool."""
    os.environ.setdefault("CONVSERVE_FFTW_THREADS", str(settings.fftw_threads))
    limit = settings.max_request_bytes + MESSAGE_OVERHEAD
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", settings.max_output_bytes + MESSAGE_OVERHEAD),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ])
    pool = WorkerPool(settings.workers, settings.max_concurrent_requests)
    pb_grpc.add_ConvolutionServiceServicer_to_server(ConvolutionServicer(settings, pool), server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address}: the port is in use or the address is not local ({exc})") from None
    if port == 0:
        raise StartupError(f"cannot listen on {address}: the port is in use or the address is not local")
    return server, port, health_servicer, pool


async def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or SIGINT, then stop gracefully."""
    server, port, health_servicer, pool = create_server(settings)
    await server.start()
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    print(f"convserve listening on {settings.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight calls (grace %.1f s)", settings.grace_seconds)
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(settings.grace_seconds)
    pool.shutdown()
    print("convserve stopped", flush=True)


async def _set_health(servicer: health.HealthServicer, name: str, status: int) -> None:
    """Set a health status on the sync or aio health servicer."""
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


def run(settings: Settings) -> int:
    """Configure logging and run the server; return the process exit code."""
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"convserve: {exc}", file=sys.stderr)
        return 1
    return 0
