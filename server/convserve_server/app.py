"""Build, start and stop the gRPC server: health, reflection, metrics, TLS/auth, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass

import grpc
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import allocator, logs, metrics, security, shared
from .engine import costs, fftw_plans
from .pool import WorkerPool
from .servicer import ConvolutionServicer
from .settings import Settings

log = logging.getLogger("convserve.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConvolutionService"].full_name
# Room for the protobuf framing around the tensors.
MESSAGE_OVERHEAD = 64 * 1024
MAX_MESSAGE = 2**31 - 1


class StartupError(RuntimeError):
    """The server could not start (for example, its port is taken)."""


@dataclass
class Server:
    """A created (not yet started) server and the parts that shutdown needs."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    pool: WorkerPool


def create_server(settings: Settings) -> Server:
    """Create the server and bind its port (raises StartupError when the port is taken)."""
    os.environ["CONVSERVE_FFTW_THREADS"] = str(settings.fftw_threads)
    if settings.fftw_wisdom:
        os.environ["CONVSERVE_FFTW_WISDOM"] = settings.fftw_wisdom
    os.environ["CONVSERVE_FFTW_BACKGROUND_PLANNING_SECONDS"] = str(settings.fftw_background_planning_seconds)
    if settings.calibration:
        os.environ["CONVSERVE_CALIBRATION"] = settings.calibration
    interceptors = security.interceptors(settings)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            # gRPC takes an int; larger tensors travel chunked anyway.
            ("grpc.max_receive_message_length", min(settings.max_request_bytes + MESSAGE_OVERHEAD, MAX_MESSAGE)),
            ("grpc.max_send_message_length", min(settings.max_output_bytes + MESSAGE_OVERHEAD, MAX_MESSAGE)),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ],
    )
    pool = WorkerPool(settings.workers, settings.max_concurrent_requests, settings.memory_budget_bytes,
                      settings.busy_pushback_ms)
    pool.on_change = metrics.pool_changed
    pb_grpc.add_ConvolutionServiceServicer_to_server(ConvolutionServicer(settings, pool, fftw_plans.wisdom_state), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
    credentials = security.server_credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {address}: port {settings.port} is in use or the address is not local")
    return Server(server, port, health_servicer, pool)


async def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or SIGINT, then stop gracefully."""
    if not settings.is_loopback and not settings.tls_cert and not settings.auth_token:
        print(f"convserve: WARNING: listening on {settings.host} without TLS or a token: anyone who can reach "
              "this address can use the server (set --tls-cert/--tls-key and/or --auth-token)", file=sys.stderr, flush=True)
    server = create_server(settings)
    log.info("engine set-up", extra={"wisdom": fftw_plans.load_wisdom(), "calibration": costs.load(),
                                     "malloc": allocator.configure(settings.malloc_retain_bytes)})
    metrics_port = -1
    if settings.metrics_port >= 0:
        try:
            metrics_port = metrics.serve_metrics(settings.host, settings.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.grpc_server.start()
    for name in ("", SERVICE_NAME):
        await server.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"convserve listening on {settings.host}:{server.port}", flush=True)
    if metrics_port >= 0:
        print(f"convserve metrics on http://{settings.host}:{metrics_port}/metrics", flush=True)
    await stop.wait()
    log.info("shutting down: new calls get UNAVAILABLE, in-flight calls finish", extra={"grace_seconds": settings.grace_seconds})
    await server.health.enter_graceful_shutdown()
    await server.grpc_server.stop(settings.grace_seconds)
    server.pool.shutdown()
    shared.ATTACHED.clear()
    if settings.fftw_wisdom:
        log.info("wisdom saved", extra={"wisdom": fftw_plans.save_wisdom()})
    print("convserve stopped", flush=True)


def run(settings: Settings) -> int:
    """Configure logging and run the server; return the process exit code."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"convserve: {exc}", file=sys.stderr)
        return 1
    return 0
