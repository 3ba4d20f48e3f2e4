"""Prometheus metrics of the server (served on ``metrics_port``)."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
REQUESTS = Counter("convserve_requests", "Completed calls by RPC and status code", ["rpc", "code"], registry=REGISTRY)
LATENCY = Histogram(
    "convserve_request_seconds",
    "Call latency on the server, by RPC",
    ["rpc"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BYTES_IN = Counter("convserve_received_bytes", "Tensor bytes received, by RPC", ["rpc"], registry=REGISTRY)
BYTES_OUT = Counter("convserve_sent_bytes", "Tensor bytes sent, by RPC", ["rpc"], registry=REGISTRY)
IN_FLIGHT = Gauge("convserve_in_flight_requests", "Admitted requests not yet finished", registry=REGISTRY)
RESERVED = Gauge("convserve_reserved_bytes", "Estimated working memory reserved by admitted requests", registry=REGISTRY)
WAITING_STREAMS = Gauge("convserve_waiting_streams", "Chunked uploads and streams waiting for data (they hold no compute slot)", registry=REGISTRY)
WAITING_BYTES = Gauge("convserve_waiting_bytes", "Bytes held by the calls waiting for data (the waiting budget in use)", registry=REGISTRY)
REJECTIONS = Counter("convserve_admission_rejections", "Requests refused by admission, by reason", ["reason"], registry=REGISTRY)
METHODS = Counter("convserve_method_chosen", "Engine method that ran, by RPC", ["rpc", "method"], registry=REGISTRY)


# The labelled series each call updates, looked up once per label set rather than per call (the
# labels are RPC names, status codes and method names: a small, fixed set).
@functools.lru_cache(maxsize=1024)
def requests(rpc: str, code: str) -> Any:
    """The completed-calls counter of one RPC and status code."""
    return REQUESTS.labels(rpc, code)


@functools.lru_cache(maxsize=256)
def latency(rpc: str) -> Any:
    """The latency histogram of one RPC."""
    return LATENCY.labels(rpc)


@functools.lru_cache(maxsize=256)
def bytes_in(rpc: str) -> Any:
    """The received-bytes counter of one RPC."""
    return BYTES_IN.labels(rpc)


@functools.lru_cache(maxsize=256)
def bytes_out(rpc: str) -> Any:
    """The sent-bytes counter of one RPC."""
    return BYTES_OUT.labels(rpc)


@functools.lru_cache(maxsize=1024)
def methods(rpc: str, method: str) -> Any:
    """The method-chosen counter of one RPC and engine method."""
    return METHODS.labels(rpc, method)


def pool_changed(in_flight: int, reserved: int) -> None:
    """Update the gauges (called by the worker pool under its lock)."""
    IN_FLIGHT.set(in_flight)
    RESERVED.set(reserved)


def waiting_changed(streams: int, held: int) -> None:
    """Update the waiting-budget gauges (called by the waiting budget on every change)."""
    WAITING_STREAMS.set(streams)
    WAITING_BYTES.set(held)


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics HTTP endpoint; return the port it listens on."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
