"""Metrics, structured logs with request ids, health and server reflection."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import start_server, stop_server


def test_metrics_and_logs_carry_the_request(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        server = start_server("--metrics-port", "0", "--log-level", "INFO", stderr=log_file)
    try:
        assert server.process.stdout is not None
        metrics_line = server.process.stdout.readline()
        assert "metrics on http://127.0.0.1:" in metrics_line
        metrics_url = metrics_line.strip().rsplit(" ", 1)[-1]
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            request = pb.SignalRequest(in1=codec.encode(np.ones(1000)), in2=codec.encode(np.ones(3)))
            _, call = stub.Convolve.with_call(request, timeout=10)
            request_id = dict(call.trailing_metadata())["x-request-id"]
            with pytest.raises(grpc.RpcError):
                stub.Convolve(pb.SignalRequest(in1=request.in1), timeout=10)
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        assert 'convserve_requests_total{code="OK",rpc="Convolve"} 1.0' in text
        assert 'convserve_requests_total{code="INVALID_ARGUMENT",rpc="Convolve"} 1.0' in text
        assert 'convserve_received_bytes_total{rpc="Convolve"} 16024.0' in text
        assert 'convserve_sent_bytes_total{rpc="Convolve"} 8016.0' in text
        assert 'convserve_method_chosen_total{method="direct",rpc="Convolve"} 1.0' in text
        assert "convserve_request_seconds_bucket" in text and "convserve_in_flight_requests 0.0" in text
        assert "convserve_admission_rejections" in text
    finally:
        assert stop_server(server) == 0
    time.sleep(0.1)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    ours = [r for r in records if r.get("request_id") == request_id]
    assert ours and ours[0]["rpc"] == "Convolve" and ours[0]["method"] == "direct" and ours[0]["level"] == "INFO"
    assert any(r.get("code") == "INVALID_ARGUMENT" for r in records)


def test_health_and_reflection(server) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"convserve.v1.ConvolutionService", "grpc.health.v1.Health"} <= names
        from grpc_health.v1 import health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="convserve.v1.ConvolutionService"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_server_info_reports_limits(client: convserve.Client) -> None:
    info = client.server_info()
    assert info.max_concurrent_requests >= info.workers >= 1 and info.fftw_threads >= 1 and info.wisdom
