"""TLS, mutual TLS and bearer-token auth, each with a wrong credential refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import convserve

from . import certificates
from .conftest import RunningServer, start_server, stop_server

DICE = np.full(6, 1 / 6)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> certificates.Files:
    return certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(files: certificates.Files) -> Iterator[RunningServer]:
    server = start_server("--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key))
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def mtls_server(files: certificates.Files) -> Iterator[RunningServer]:
    server = start_server("--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
                          "--tls-client-ca", str(files.ca))
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def token_server() -> Iterator[RunningServer]:
    server = start_server("--auth-token", "s3cret")
    yield server
    assert stop_server(server) == 0


def test_tls(tls_server: RunningServer, files: certificates.Files) -> None:
    with convserve.Client(tls_server.target, root_certificates=files.ca, timeout=10) as client:
        assert client.convolve(DICE, DICE).argmax() == 5


def test_tls_refuses_an_untrusted_server_and_plaintext(tls_server: RunningServer, files: certificates.Files) -> None:
    with convserve.Client(tls_server.target, root_certificates=files.other_ca, timeout=3) as client:
        with pytest.raises(convserve.UnavailableError):
            client.convolve(DICE, DICE)
    with convserve.Client(tls_server.target, timeout=3) as plaintext:
        with pytest.raises(convserve.UnavailableError):
            plaintext.convolve(DICE, DICE)


def test_mtls(mtls_server: RunningServer, files: certificates.Files) -> None:
    with convserve.Client(mtls_server.target, root_certificates=files.ca, client_certificate=files.client_cert,
                          client_key=files.client_key, timeout=10) as client:
        assert client.convolve(DICE, DICE).argmax() == 5


@pytest.mark.parametrize("who", ["no certificate", "foreign certificate"])
def test_mtls_refuses_wrong_client_certificates(mtls_server: RunningServer, files: certificates.Files, who: str) -> None:
    options: dict[str, Path] = {"root_certificates": files.ca}
    if who == "foreign certificate":
        options.update(client_certificate=files.other_client_cert, client_key=files.other_client_key)
    with convserve.Client(mtls_server.target, timeout=3, **options) as client:  # type: ignore[arg-type]
        with pytest.raises(convserve.UnavailableError):
            client.convolve(DICE, DICE)


def test_token(token_server: RunningServer) -> None:
    with convserve.Client(token_server.target, token="s3cret", timeout=10) as client:
        assert client.convolve(DICE, DICE).argmax() == 5


@pytest.mark.parametrize("token", [None, "wrong", "s3cret "])
def test_wrong_or_missing_token_is_unauthenticated(token_server: RunningServer, token: str | None) -> None:
    with convserve.Client(token_server.target, token=token, timeout=10) as client:
        with pytest.raises(convserve.UnauthenticatedError):
            client.convolve(DICE, DICE)
        with pytest.raises(convserve.UnauthenticatedError):
            client.server_info()


def test_health_needs_no_token(token_server: RunningServer) -> None:
    result = subprocess.run([sys.executable, "-m", "convserve_server", "health", "--target", token_server.target],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0


def test_non_loopback_without_tls_or_token_warns() -> None:
    process = subprocess.Popen([sys.executable, "-m", "convserve_server", "serve", "--host", "0.0.0.0", "--port", "0",
                                "--metrics-port", "-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        assert "listening on" in process.stdout.readline()
        warning = process.stderr.readline()
        assert "WARNING" in warning and "TLS" in warning
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def test_tls_key_without_certificate_is_a_setting_error(files: certificates.Files) -> None:
    result = subprocess.run([sys.executable, "-m", "convserve_server", "serve", "--tls-key", str(files.server_key)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "tls_cert" in result.stderr
