"""Three replicas behind the real balancers: nginx with the shipped config, and client-side round_robin.

Real server processes on loopback, the default ``convserve.Client`` (its default RetryPolicy), and
calls counted per replica from each replica's metrics. nginx is installed when missing; the nginx
tests are skipped, with the reason, where it cannot be. No container runtime is used here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import convserve
from convserve.errors import ConvserveError, ProxyError
from tests.deployment import balancer as helpers
from tests.deployment.balancer import Nginx, Replica, Unavailable, ensure_nginx, start_nginx, wait_serving

# Quiet streams end after this long on the replicas (the shipped default is 30 s; short here so
# that the test of who ends a quiet stream is quick; no other call here is quiet for that long).
IDLE_SECONDS = 3.0
FLAGS = ("--log-level", "WARNING", "--idle-timeout-seconds", str(IDLE_SECONDS))
# The shipped upstream's fail_timeout: nginx tries a dropped replica again after this long.
FAIL_TIMEOUT_SECONDS = 5.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    """nginx, installed with apt-get when missing (once); skip the nginx tests when that fails."""
    try:
        return ensure_nginx()
    except Unavailable as exc:
        pytest.skip(f"no nginx for the balancer test: {exc}")


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[Replica]]:
    """Three server processes with metrics ports (a test that kills one starts it again)."""
    started: list[Replica] = []
    try:
        for _ in range(3):
            started.append(Replica(FLAGS))
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module")
def balancer(nginx_binary: str, replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx with deploy/nginx/nginx.conf in front of the three replicas."""
    try:
        nginx = start_nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), [replica.target for replica in replicas])
    except Unavailable as exc:
        pytest.skip(f"nginx cannot run for the balancer test: {exc}")
    yield nginx
    nginx.stop()


def _counts(replicas: list[Replica], rpc: str | None = None) -> list[int]:
    return [replica.calls(rpc) for replica in replicas]


def _delta(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before)]


def _assert_spread(target: str, replicas: list[Replica]) -> None:
    """300 calls one after the other: every replica serves a fair share, and none is lost or doubled."""
    before = _counts(replicas)
    x, k = np.arange(64.0), np.ones(5)
    with convserve.Client(target) as client:
        for _ in range(300):
            np.testing.assert_allclose(client.convolve(x, k), np.convolve(x, k))
    served = _delta(_counts(replicas), before)
    assert sum(served) == 300, served
    assert min(served) >= 60, f"calls per replica {served}: not spread over all three"


def test_calls_spread_over_all_three_replicas_through_nginx(balancer: Nginx, replicas: list[Replica]) -> None:
    _assert_spread(balancer.target, replicas)


def test_calls_spread_over_all_three_replicas_with_client_side_round_robin(replicas: list[Replica]) -> None:
    """The default client picks round_robin for a multi-address target: no option needed."""
    _assert_spread("ipv4:" + ",".join(replica.target for replica in replicas), replicas)


def test_16_mib_unary_chunked_and_streaming_calls_pass_through_nginx(balancer: Nginx, replicas: list[Replica]) -> None:
    """Far above nginx's default 1 MiB body limit, each transfer path gives the right result."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(16 * MIB // 8)
    k = rng.standard_normal(9)
    expected = np.convolve(x, k)
    before = {rpc: sum(_counts(replicas, rpc)) for rpc in ("Convolve", "ConvolveChunked", "ConvolveStream")}
    # One 16 MiB message each way: a chunk threshold above the input is the caller's choice.
    with convserve.Client(balancer.target, chunk_threshold=64 * MIB) as client:
        np.testing.assert_allclose(client.convolve(x, k), expected, rtol=1e-10, atol=1e-10)
    # The default client streams inputs above 4 MiB in 1 MiB chunks.
    with convserve.Client(balancer.target) as client:
        np.testing.assert_allclose(client.convolve(x, k), expected, rtol=1e-10, atol=1e-10)
        blocks = np.array_split(x, 16)  # 1 MiB blocks in, output blocks back as they are ready
        streamed = np.concatenate(list(client.convolve_stream(blocks, k, timeout=120)))
        np.testing.assert_allclose(streamed, expected, rtol=1e-10, atol=1e-10)
    after = {rpc: sum(_counts(replicas, rpc)) for rpc in before}
    assert {rpc: after[rpc] - before[rpc] for rpc in before} == {"Convolve": 1, "ConvolveChunked": 1, "ConvolveStream": 1}


def test_without_the_shipped_body_limit_nginx_refuses_what_the_shipped_config_passes(
    nginx_binary: str, replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The control: the same config without ``client_max_body_size 0`` fails a 2 MiB call (nginx's 1 MiB default)."""
    edited = start_nginx(
        nginx_binary, tmp_path_factory.mktemp("nginx-default-limit"), [replicas[0].target], edit=lambda text: text.replace("client_max_body_size 0;", "")
    )
    try:
        with convserve.Client(edited.target, chunk_threshold=64 * MIB) as client, pytest.raises(ProxyError) as caught:
            client.convolve(np.ones(2 * MIB // 8), np.ones(3))
        assert caught.value.http_status == 413, caught.value
    finally:
        edited.stop()


def test_a_quiet_stream_is_ended_by_the_server_not_by_nginx(balancer: Nginx) -> None:
    """The proxy's timeouts outlast the server's idle timeout: the caller gets the server's status."""
    release = threading.Event()

    def blocks() -> Iterator[np.ndarray]:
        yield np.ones(1000)
        release.wait(120)  # then nothing: the stream goes quiet

    started = time.monotonic()
    try:
        with convserve.Client(balancer.target) as client, pytest.raises(ConvserveError) as caught:
            for _ in client.convolve_stream(blocks(), np.ones(3), timeout=120):
                pass
    finally:
        release.set()
    assert caught.value.code.name == "DEADLINE_EXCEEDED", caught.value
    assert "idle_timeout_seconds" in str(caught.value), caught.value
    assert time.monotonic() - started >= IDLE_SECONDS


class Load:
    """Eight threads calling one default client without pause, each result checked."""

    def __init__(self, target: str) -> None:
        self.client = convserve.Client(target)
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.done = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(seed,), daemon=True) for seed in range(8)]

    def _work(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        x, k = rng.standard_normal(2048), rng.standard_normal(17)
        expected = np.convolve(x, k)
        while not self.stop.is_set():
            try:
                np.testing.assert_allclose(self.client.convolve(x, k), expected, rtol=1e-10, atol=1e-10)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self._lock:
                    self.failures.append(repr(exc))
            with self._lock:
                self.done += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.client.close()

    def wait_calls(self, more: int, timeout: float = 60.0) -> None:
        """Return once ``more`` further calls have completed."""
        goal = self.done + more
        ends = time.monotonic() + timeout
        while self.done < goal:
            assert time.monotonic() < ends, f"only {self.done} of {goal} calls done in {timeout} s"
            time.sleep(0.01)


def _wait_for(condition: object, timeout: float, what: str) -> float:
    """Poll ``condition()`` until true; return the seconds it took."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _kill_and_restart_under_load(target: str, replicas: list[Replica], take_back_seconds: float) -> float:
    """kill -9 one replica under load, start it again; return the seconds until it got calls again."""
    victim, others = replicas[1], [replicas[0], replicas[2]]
    before = _counts(replicas)
    with Load(target) as load:
        _wait_for(lambda: min(_delta(_counts(replicas), before)) >= 20, 60, "every replica serving the load")
        victim.kill()
        survivors_before = _counts(others)
        load.wait_calls(400)
        assert min(_delta(_counts(others), survivors_before)) > 0
        victim.restart()
        wait_serving(victim.target)
        took = _wait_for(lambda: victim.calls() > 0, take_back_seconds, "the restarted replica taken back")
        load.wait_calls(100)
    assert load.failures == [], f"{len(load.failures)} of {load.done} calls failed: {load.failures[:3]}"
    return took


def test_kill_9_of_a_replica_under_load_through_nginx_fails_no_call_and_it_is_taken_back(balancer: Nginx, replicas: list[Replica]) -> None:
    # nginx tries a dropped replica again after fail_timeout; allow that three times over.
    _kill_and_restart_under_load(balancer.target, replicas, 3 * FAIL_TIMEOUT_SECONDS)


def test_kill_9_of_a_replica_under_load_with_round_robin_fails_no_call_and_it_is_back_within_5_s(replicas: list[Replica]) -> None:
    _kill_and_restart_under_load("ipv4:" + ",".join(replica.target for replica in replicas), replicas, 5.0)


def test_the_shipped_config_is_the_one_nginx_runs(balancer: Nginx) -> None:
    """Only the two included files were rendered; nginx.conf is the shipped file byte for byte."""
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf"
    assert (balancer.workdir / "nginx.conf").read_bytes() == shipped.read_bytes()
    upstream = (balancer.workdir / "convserve-upstream.conf").read_text()
    assert upstream.count("max_fails=1 fail_timeout=5s") == 3 and "zone convserve" in upstream and "keepalive 32;" in upstream


def test_where_nginx_cannot_be_installed_the_skip_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """No nginx and no root: the set-up raises the reason the nginx tests are skipped with."""
    monkeypatch.setattr(helpers, "_nginx_binary", lambda: None)
    monkeypatch.setattr(helpers.os, "geteuid", lambda: 1000)
    with pytest.raises(Unavailable, match="needs root and apt-get"):
        ensure_nginx()
