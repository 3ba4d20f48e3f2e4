"""Smaller operational promises: JSON logs stay JSON when numpy warns, two servers with default
settings share a host, and a TLS key that is not the certificate's is reported as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import convserve

from tests import certificates
from tests.conftest import RunningServer, stop_server

SERVE = [sys.executable, "-m", "convserve_server", "serve", "--host", "127.0.0.1"]


def _json_lines(text: str) -> list[dict[str, object]]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {line!r}\nin:\n{text[-3000:]}") from None
    return records


def test_warnings_and_uncaught_errors_are_json_log_lines() -> None:
    """What numpy, ``warnings.warn`` and a dying thread write to stderr comes out as JSON records."""
    program = textwrap.dedent("""
        import threading, warnings
        import numpy as np
        from convserve_server.ops import logs
        logs.configure("INFO", "json")
        np.array([1.0]) / np.array([0.0])
        np.sqrt(np.array([-1.0]))
        warnings.warn("careful", UserWarning)
        thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
        thread.start(); thread.join()
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    records = _json_lines(result.stderr)
    warned = [r for r in records if r["logger"] == "py.warnings"]
    assert {r["category"] for r in warned} == {"RuntimeWarning", "UserWarning"}, records
    assert all(r["level"] == "WARNING" and "\n" not in str(r["message"]) for r in warned)
    (crash,) = [r for r in records if r["level"] == "ERROR"]
    assert "doomed" in str(crash["message"]) and "ZeroDivisionError" in str(crash["exception"])


def test_server_log_is_json_when_inputs_hold_nan_and_inf(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([*SERVE, "--port", "0", "--metrics-port", "-1", "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    server = RunningServer(process, process.stdout.readline().strip().rsplit(" ", 1)[-1])
    try:
        x = np.ones(5000)
        x[10], x[20] = np.nan, np.inf
        with convserve.Client(server.target) as client:
            for method in ("direct", "fft", "overlap_add", "auto"):
                client.convolve(x, np.ones(301), method=method)
                client.convolve(np.array([1e308, -1e308]), np.array([1e308, 1e308]), method=method)
                client.correlate(np.full((40, 40), np.inf), np.ones((5, 5)), method=method)
    finally:
        assert stop_server(server) == 0
    records = _json_lines(log.read_text())
    assert any(r["message"] == "call ok" for r in records)
    assert not [r for r in records if r["level"] == "ERROR"]


def _serve_with_default_metrics_port(log: Path) -> tuple[RunningServer, str]:
    """A server on a free gRPC port with the metrics port left at its default (9464)."""
    env = {k: v for k, v in os.environ.items() if k != "CONVSERVE_METRICS_PORT"}
    with log.open("w") as stderr:
        process = subprocess.Popen([*SERVE, "--port", "0", "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert process.stdout is not None
    listening = process.stdout.readline()
    metrics = process.stdout.readline()
    if "listening on" not in listening or "metrics on" not in metrics:
        process.kill()
        raise AssertionError(f"the server did not start: {listening!r} {metrics!r} {log.read_text()[-2000:]}")
    return RunningServer(process, listening.strip().rsplit(" ", 1)[-1]), metrics.strip().rsplit(" ", 1)[-1]


def test_two_servers_with_default_settings_share_a_host(tmp_path: Path) -> None:
    """The second server (and the first, when something else holds 9464) keeps serving: its
    metrics move to a free port, and a WARNING names the setting to change."""
    first, first_metrics = _serve_with_default_metrics_port(tmp_path / "first.log")
    try:
        second, second_metrics = _serve_with_default_metrics_port(tmp_path / "second.log")
        try:
            assert first_metrics != second_metrics
            for server, url in ((first, first_metrics), (second, second_metrics)):
                with convserve.Client(server.target) as client:
                    np.testing.assert_allclose(client.convolve([1.0, 2.0], [1.0, 1.0]), [1.0, 3.0, 2.0])
                assert "convserve_requests_total" in urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            assert stop_server(second) == 0
    finally:
        assert stop_server(first) == 0
    warning = [r for r in _json_lines((tmp_path / "second.log").read_text()) if r["level"] == "WARNING"]
    assert warning and "metrics_port" in str(warning[0]["message"]) and warning[0]["metrics_port"] == 9464
    assert str(warning[0]["port"]) in second_metrics


def test_a_taken_metrics_port_given_explicitly_also_keeps_the_server_up(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.Popen([*SERVE, "--port", "0", "--metrics-port", str(taken)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert result.stdout is not None and result.stderr is not None
        assert "listening on" in result.stdout.readline()
        metrics = result.stdout.readline()
        assert "metrics on" in metrics and f":{taken}/" not in metrics
        result.terminate()
        assert result.wait(timeout=20) == 0
        assert "CONVSERVE_METRICS_PORT" in result.stderr.read()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> certificates.Files:
    return certificates.make(tmp_path_factory.mktemp("certs"))


def _serve_tls(cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, "--port", "0", "--metrics-port", "-1", "--tls-cert", str(cert), "--tls-key", str(key)], capture_output=True, text=True, timeout=30
    )


def test_tls_key_that_does_not_match_the_certificate_is_reported_as_such(files: certificates.Files) -> None:
    result = _serve_tls(files.server_cert, files.client_key)
    assert result.returncode == 1
    assert "tls_key" in result.stderr and "does not match" in result.stderr and str(files.server_cert) in result.stderr
    assert "in use" not in result.stderr


def test_tls_files_that_are_not_pem_are_reported_as_such(files: certificates.Files, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    result = _serve_tls(files.server_cert, garbage)
    assert result.returncode == 1 and str(garbage) in result.stderr and "in use" not in result.stderr
