"""TLS, mutual TLS and bearer-token auth, each with a wrong credential refused; caps on calls in progress."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import convserve

from tests import certificates
from tests.conftest import RunningServer, start_server, stop_server

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
    server = start_server("--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key), "--tls-client-ca", str(files.ca))
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
    with convserve.Client(
        mtls_server.target, root_certificates=files.ca, client_certificate=files.client_cert, client_key=files.client_key, timeout=10
    ) as client:
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
    result = subprocess.run([sys.executable, "-m", "convserve_server", "health", "--target", token_server.target], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0


def test_non_loopback_without_tls_or_token_warns() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "convserve_server", "serve", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert "listening on" in process.stdout.readline()
        warning = process.stderr.readline()
        assert "WARNING" in warning and "TLS" in warning
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def test_tls_key_without_certificate_is_a_setting_error(files: certificates.Files) -> None:
    result = subprocess.run([sys.executable, "-m", "convserve_server", "serve", "--tls-key", str(files.server_key)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "tls_cert" in result.stderr


# ---- calls in progress: a global cap and a cap per identity ----------------------------------

STREAM = "/convserve.v1.ConvolutionService/ConvolveStream"
CONVOLVE = "/convserve.v1.ConvolutionService/Convolve"
INFO = "/convserve.v1.ConvolutionService/GetServerInfo"


class Idle:
    """Calls that are open on the server but send nothing: streams, and unary calls whose message never comes."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel, self.metadata = channel, metadata
        self.stop = threading.Event()
        self.calls: list[Any] = []
        self.methods: list[str] = []

    def _nothing(self) -> Iterator[bytes]:
        self.stop.wait(60)
        return
        yield b""  # a generator that sends nothing

    def open(self, count: int, method: str = STREAM) -> None:
        self.methods += [method] * count
        for _ in range(count):
            if method == STREAM:
                self.calls.append(self.channel.stream_stream(method)(self._nothing(), metadata=self.metadata, timeout=60))
            else:  # a unary method, its one message never sent: the handler never runs
                self.calls.append(self.channel.stream_unary(method).future(self._nothing(), metadata=self.metadata, timeout=60))

    def reopen_refused(self) -> None:
        """Open again the calls that were refused because a probe held a slot when they arrived."""
        for index, call in enumerate(self.calls):
            if call.done() and call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.calls.pop(index)
                method = self.methods.pop(index)
                self.open(1, method)

    def states(self) -> list[str]:
        """Each call's state, for failure messages."""
        return [f"{call.code()}: {call.details()}" if call.done() else "running" for call in self.calls]

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.stop.set()


def info_status(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str, int | None]:
    """GetServerInfo's status, details and grpc-retry-pushback-ms."""
    try:
        channel.unary_unary(INFO)(b"", metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, "", None
    except grpc.RpcError as error:
        pushback = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
        return error.code(), error.details() or "", None if pushback is None else int(pushback)


def wait_for(
    channel: grpc.Channel, code: grpc.StatusCode, metadata: tuple[tuple[str, str], ...] = (), seconds: float = 20, idle: Idle | None = None
) -> tuple[grpc.StatusCode, str, int | None]:
    """Probe GetServerInfo until it returns ``code`` (the idle calls have reached the server) or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        if idle is not None:
            idle.reopen_refused()
        status = info_status(channel, metadata)
        if status[0] == code or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def health_status(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


@pytest.mark.parametrize("method", [STREAM, CONVOLVE], ids=["idle streams", "unary calls without their message"])
def test_calls_beyond_the_global_cap_are_refused_with_pushback(method: str) -> None:
    server = start_server("--max-concurrent-calls", "3", "--idle-timeout-seconds", "60", "--log-level", "WARNING")
    try:
        with grpc.insecure_channel(server.target) as channel:
            idle = Idle(channel)
            idle.open(3, method)
            try:
                code, details, pushback = wait_for(channel, grpc.StatusCode.RESOURCE_EXHAUSTED, idle=idle)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_calls" in details, idle.states()
                assert pushback is not None and pushback >= 0
                assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING  # never counted
            finally:
                idle.close()
            # Cancelled calls stop counting (also the unary ones whose handler never ran).
            assert wait_for(channel, grpc.StatusCode.OK)[0] == grpc.StatusCode.OK
        with convserve.Client(server.target, timeout=30) as client:
            assert client.convolve(DICE, DICE).argmax() == 5
    finally:
        assert stop_server(server) == 0


def test_failed_calls_stop_counting() -> None:
    server = start_server("--max-concurrent-calls", "2", "--log-level", "WARNING")
    try:
        with grpc.insecure_channel(server.target) as channel:
            for _ in range(6):  # each fails in the servicer (an empty request)
                with pytest.raises(grpc.RpcError) as raised:
                    channel.unary_unary(CONVOLVE)(b"", timeout=10)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with convserve.Client(server.target, timeout=30) as client:
                assert client.convolve(DICE, DICE).argmax() == 5
            idle = Idle(channel)  # and the cap still holds: exactly two calls fit
            idle.open(2, CONVOLVE)
            try:
                code, details, _ = wait_for(channel, grpc.StatusCode.RESOURCE_EXHAUSTED, idle=idle)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_calls" in details, idle.states()
            finally:
                idle.close()
    finally:
        assert stop_server(server) == 0


def test_one_token_is_one_identity_and_bad_tokens_never_count() -> None:
    server = start_server(
        "--auth-token", "s3cret", "--max-calls-per-identity", "2", "--max-concurrent-calls", "10", "--idle-timeout-seconds", "60", "--log-level", "WARNING"
    )
    token = (("authorization", "Bearer s3cret"),)
    try:
        with grpc.insecure_channel(server.target) as channel:
            idle = Idle(channel, token)
            idle.open(2, CONVOLVE)
            try:
                code, details, pushback = wait_for(channel, grpc.StatusCode.RESOURCE_EXHAUSTED, token, idle=idle)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_calls_per_identity" in details, idle.states()
                assert pushback is not None and pushback >= 0
                # Without the token: refused as unauthenticated, not as over a cap.
                assert info_status(channel, (("authorization", "Bearer wrong"),))[0] == grpc.StatusCode.UNAUTHENTICATED
                assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            finally:
                idle.close()
            assert wait_for(channel, grpc.StatusCode.OK, token)[0] == grpc.StatusCode.OK
    finally:
        assert stop_server(server) == 0


@dataclass
class TwoClients:
    ca: Path
    server: tuple[Path, Path]
    clients: list[tuple[Path, Path]]


@pytest.fixture(scope="module")
def two_clients(tmp_path_factory: pytest.TempPathFactory) -> TwoClients:
    """A CA, a server pair and two client pairs with different subjects, all signed by that CA."""
    directory = tmp_path_factory.mktemp("two-clients")
    ca_key = certificates._key()
    ca = certificates._certificate("two-client CA", ca_key, None, ca_key, ca=True)
    pairs = []
    for name, san in (("127.0.0.1", True), ("client one", False), ("client two", False)):
        key = certificates._key()
        cert = certificates._certificate(name, key, ca, ca_key, ca=False, san=san)
        stem = name.replace(" ", "-")
        pairs.append((certificates._write(directory / f"{stem}.pem", cert), certificates._write(directory / f"{stem}.key", key=key)))
    return TwoClients(certificates._write(directory / "ca.pem", ca), pairs[0], pairs[1:])


def test_each_client_certificate_is_its_own_identity(two_clients: TwoClients) -> None:
    server = start_server(
        "--tls-cert",
        str(two_clients.server[0]),
        "--tls-key",
        str(two_clients.server[1]),
        "--tls-client-ca",
        str(two_clients.ca),
        "--max-calls-per-identity",
        "2",
        "--max-concurrent-calls",
        "10",
        "--idle-timeout-seconds",
        "60",
        "--log-level",
        "WARNING",
    )

    def channel(index: int) -> grpc.Channel:
        cert, key = two_clients.clients[index]
        credentials = grpc.ssl_channel_credentials(two_clients.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
        return grpc.secure_channel(server.target, credentials, options=[("convserve.test.identity", index)])

    try:
        with channel(0) as first, channel(1) as second:
            idle = Idle(first)
            idle.open(1, CONVOLVE)  # a unary call whose message never comes counts too
            idle.open(1, STREAM)
            try:
                code, details, _ = wait_for(first, grpc.StatusCode.RESOURCE_EXHAUSTED, idle=idle)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_calls_per_identity" in details, idle.states()
                assert info_status(second)[0] == grpc.StatusCode.OK  # the other certificate is not locked out
            finally:
                idle.close()
            assert wait_for(first, grpc.StatusCode.OK)[0] == grpc.StatusCode.OK
        cert, key = two_clients.clients[0]
        with convserve.Client(
            server.target, root_certificates=two_clients.ca, client_certificate=cert, client_key=key, timeout=30
        ) as client:  # unary and chunked calls still work through the wrapper
            assert client.convolve(DICE, DICE).argmax() == 5
            big = np.ones(3 << 20)
            np.testing.assert_allclose(client.convolve(big, np.ones(1), method="direct"), big)
    finally:
        assert stop_server(server) == 0
