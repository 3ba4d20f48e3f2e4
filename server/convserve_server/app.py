"""Build, start and stop the gRPC server: health, reflection, metrics, TLS/auth, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
import sys
import threading
from dataclasses import dataclass

import grpc
from convserve.v1 import convserve_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from convserve_server import engine
from convserve_server.admission.workers import WorkerPool
from convserve_server.engine import config as engine_config
from convserve_server.engine.fft import plans, wisdom
from convserve_server.engine.signal import cost_model
from convserve_server.ops import allocator, logs, metrics
from convserve_server.settings import Settings
from convserve_server.transport import security, servicer
from convserve_server.transport.call_limits import CallLimitInterceptor
from convserve_server.transport.servicer import ConvolutionServicer

log = logging.getLogger("convserve.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConvolutionService"].full_name
# Room for the protobuf framing around the tensors.
MESSAGE_OVERHEAD = 64 * 1024
MAX_MESSAGE = 2**31 - 1
# After the grace period the running calls are cancelled; the engine stops at its next
# cancellation check (every 10-50 ms of work). This is how long shutdown waits for that
# before it exits anyway (a worker stuck in a library call would otherwise hold the exit).
STOP_SECONDS = 1.0
# gRPC itself cancels the calls this long after the grace period, so that the calls cancelled at
# its end can still send their own CANCELLED status (the caller does not retry it) instead of
# being cut off (UNAVAILABLE, which the client would retry against a server that is going away).
CANCEL_MARGIN_SECONDS = 0.5


class StartupError(RuntimeError):
    """The server could not start (for example, its port is taken)."""


@dataclass
class Server:
    """A created (not yet started) server and the parts that shutdown needs."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    pool: WorkerPool
    limits: CallLimitInterceptor


def check_tls_files(settings: Settings) -> None:
    """Raise StartupError when the TLS files cannot be used (a key that is not the certificate's).

    gRPC reports a bad key pair only as a failed ``add_secure_port``, which looks like a taken port;
    Python's ``ssl`` says what is wrong.
    """
    if not settings.tls_cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise StartupError(
                f"tls_key {settings.tls_key} does not match tls_cert {settings.tls_cert} (the key must be the private key of the certificate's public key)"
            ) from None
        raise StartupError(
            f"cannot use tls_cert {settings.tls_cert} with tls_key {settings.tls_key}: {exc.reason or exc} (both must be PEM, the key unencrypted)"
        ) from None
    except OSError as exc:
        raise StartupError(f"cannot read tls_cert {settings.tls_cert} or tls_key {settings.tls_key}: {exc}") from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(settings.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"cannot use tls_client_ca {settings.tls_client_ca}: {exc} (it must be PEM)") from None


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """``grpc.max_connection_age_ms`` when ``max_connection_age_seconds`` is set (no grace limit: calls in progress finish)."""
    if settings.max_connection_age_seconds <= 0:
        return []
    return [("grpc.max_connection_age_ms", max(1, round(settings.max_connection_age_seconds * 1000)))]


def create_server(settings: Settings) -> Server:
    """Configure the engine, create the server and bind its port (raises StartupError when the port is taken)."""
    engine.configure(engine_config.from_settings(settings))  # once, before wisdom and calibration are loaded
    check_tls_files(settings)
    interceptors = security.interceptors(settings)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            # gRPC takes an int; larger tensors travel chunked anyway.
            ("grpc.max_receive_message_length", min(settings.max_request_bytes + MESSAGE_OVERHEAD, MAX_MESSAGE)),
            ("grpc.max_send_message_length", min(settings.max_output_bytes + MESSAGE_OVERHEAD, MAX_MESSAGE)),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
            *connection_age_options(settings),
            *security.transport_options(settings),  # bounds what a connection can make the server buffer
        ],
    )
    pool = WorkerPool(settings.workers, settings.max_concurrent_requests, settings.memory_budget_bytes, settings.busy_pushback_ms)
    pool.on_change = metrics.pool_changed
    servicer.register(ConvolutionServicer(settings, pool, plans.wisdom_state), server)
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
    limits = next(interceptor for interceptor in interceptors if isinstance(interceptor, CallLimitInterceptor))
    return Server(server, port, health_servicer, pool, limits)


def start_metrics(settings: Settings) -> int:
    """Serve /metrics on ``metrics_port`` (-1: off, returns -1); return the port it listens on.

    A taken port does not stop the server (two servers on one host with the default port would
    otherwise kill the second, and crash-loop it under compose): a WARNING names the setting and
    the metrics go to a free port instead, printed like the configured one.
    """
    if settings.metrics_port < 0:
        return -1
    try:
        return metrics.serve_metrics(settings.host, settings.metrics_port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or settings.metrics_port == 0:
            raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc.strerror}") from None
    port = metrics.serve_metrics(settings.host, 0)
    log.warning(
        "metrics port taken: serving metrics on a free port instead; set metrics_port "
        "(--metrics-port, CONVSERVE_METRICS_PORT) to a free port of its own for each server on this host",
        extra={"metrics_port": settings.metrics_port, "port": port},
    )
    return port


async def serve(settings: Settings) -> bool:
    """Run the server until SIGTERM or SIGINT, then stop; return False if work was left running."""
    if not settings.is_loopback and not settings.tls_cert and not settings.auth_token:
        log.warning(
            f"listening on {settings.host} without TLS or a token: anyone who can reach this address can use "
            "the server (set --tls-cert/--tls-key and/or --auth-token)"
        )
    server = create_server(settings)
    log.info(
        "engine set-up", extra={"wisdom": wisdom.load_wisdom(), "calibration": cost_model.load(), "malloc": allocator.configure(settings.malloc_retain_bytes)}
    )
    metrics_port = start_metrics(settings)
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
    return await shut_down(server, settings)


async def shut_down(server: Server, settings: Settings) -> bool:
    """Stop within ``grace_seconds`` + :data:`STOP_SECONDS`; return whether every worker stopped.

    New calls get UNAVAILABLE at once (the call limits refuse them while the server still runs)
    and health turns NOT_SERVING; calls in flight get the grace period; then their cancellation
    tokens are set (the engine stops at its next check) and gRPC cancels them. The event loop
    keeps running all the while, so that the cancelled calls end and are recorded as such.
    Wisdom is saved last.
    """
    grace = settings.grace_seconds
    log.info("shutting down: new calls get UNAVAILABLE, in-flight calls finish", extra={"grace_seconds": grace})
    server.limits.close("the server is shutting down: retry on another replica")
    await server.health.enter_graceful_shutdown()
    loop = asyncio.get_running_loop()
    started = loop.time()
    timer = loop.call_later(grace, _cancel_running, server.pool, "grace period over")
    try:
        await server.limits.drained(grace)
        await server.grpc_server.stop(max(0.0, grace - (loop.time() - started)) + CANCEL_MARGIN_SECONDS)
    finally:
        timer.cancel()
    server.pool.cancel_running()  # work that the timer missed (grace 0, or a race with its end)
    deadline = loop.time() + STOP_SECONDS
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if others:  # the cancelled calls: let them end and log, before the loop goes away
        await asyncio.wait(others, timeout=max(0.0, deadline - loop.time()))
    stopped = await stop_workers(server.pool, max(0.0, deadline - loop.time()))
    if settings.fftw_wisdom:
        saved = wisdom.save_wisdom(timeout=STOP_SECONDS)
        if saved is None:
            log.warning("wisdom not saved: the FFTW planner stayed busy", extra={"waited_seconds": STOP_SECONDS})
        else:
            log.info("wisdom saved", extra={"wisdom": saved})
    print("convserve stopped", flush=True)
    return stopped


def _cancel_running(pool: WorkerPool, why: str) -> None:
    cancelled = pool.cancel_running()
    if cancelled:
        log.info(f"{why}: cancelling the calls still running", extra={"cancelled": cancelled})


async def stop_workers(pool: WorkerPool, timeout: float) -> bool:
    """Shut the pool down and wait up to ``timeout`` s for its threads (off the event loop)."""
    pool.shutdown(wait=False)  # drops queued work at once
    joiner = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, name="convserve-stop", daemon=True)
    joiner.start()
    deadline = asyncio.get_running_loop().time() + timeout
    while joiner.is_alive() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    if joiner.is_alive():
        log.warning("work still running after its cancellation; exiting without waiting for it", extra={"waited_seconds": timeout})
        return False
    return True


def run(settings: Settings) -> int:
    """Configure logging and run the server; return the process exit code."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        stopped = asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"convserve: {exc}", file=sys.stderr)
        return 1
    if not stopped:
        # Interpreter exit would join the worker threads: leave without them (wisdom is saved).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
