"""Helpers of the loopback balancer tests: nginx with the shipped config in front of replica processes.

nginx is installed when missing (Debian's ``nginx-light``, non-interactive, once per session) and
started with ``deploy/nginx/nginx.conf`` itself; only its two included files are rendered, from
the shipped host-network ones with the replicas' loopback addresses put in, every parameter kept.
Replicas are ``tests/conftest.py`` servers with a metrics port; calls are counted per replica from
their ``convserve_requests_total`` counters.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import RunningServer, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "deploy" / "nginx"
SHIPPED_UPSTREAM = NGINX_DIR / "host-network" / "convserve-upstream.conf"
SHIPPED_LISTEN = NGINX_DIR / "host-network" / "convserve-listen.conf"
SERVER_LINE = re.compile(r"^([ \t]*server[ \t]+)127\.0\.0\.1:\d+([ \t][^\n]*;)[ \t]*\n", re.MULTILINE)
LISTEN_LINE = re.compile(r"^([ \t]*listen[ \t]+)127\.0\.0\.1:\d+([ \t][^\n]*;)[ \t]*$", re.MULTILINE)
REQUESTS = re.compile(r"^convserve_requests_total\{([^}]*)\}\s+([0-9.e+]+)$", re.MULTILINE)
SERVING_WAIT_SECONDS = 30.0
# Metrics are read straight from loopback, whatever http_proxy says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unavailable(Exception):
    """nginx is not installed and cannot be installed here; the message says why."""


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def _apt_install(packages: Iterable[str]) -> subprocess.CompletedProcess[str]:
    """``apt-get install -y`` with no prompts and no service started (policy-rc.d denies starts)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # Debian starts nginx on port 80 of every interface after install unless told not to
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if result.returncode != 0:  # stale package lists: refresh once and try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=300)
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        return result
    finally:
        if ours:
            policy.unlink()


def ensure_nginx() -> str:
    """The nginx binary, installed with apt-get when missing; raise :class:`Unavailable` otherwise."""
    binary = _nginx_binary()
    if binary is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise Unavailable("nginx is not installed, and installing it needs root and apt-get (Debian: apt-get install nginx-light)")
        result = None
        for package in ("nginx-light", "nginx"):
            try:
                result = _apt_install([package])
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(f"apt-get install {package} did not finish: {exc}") from None
            binary = _nginx_binary()
            if binary is not None:
                break
        if binary is None:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] if result else []
            raise Unavailable(f"apt-get could not install nginx-light or nginx: {' '.join(detail) or 'no output'}")
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30).stderr
    if "--without-http_grpc_module" in built or "http_v2_module" not in built:
        raise Unavailable(f"{binary} lacks the grpc or http_v2 module: {built.strip().splitlines()[-1]}")
    return binary


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render(workdir: Path, upstreams: list[str], listen_port: int, edit: Callable[[str], str] | None = None) -> Path:
    """Copy the shipped nginx.conf into ``workdir`` and fill its two includes; return the config path.

    The upstream file is the shipped host-network one with one ``server`` line per address in
    ``upstreams``, each with the parameters the shipped lines carry (max_fails, fail_timeout); zone
    and keepalive stay as shipped. ``edit`` changes nginx.conf (only for tests of what a setting does).
    """
    shipped = SHIPPED_UPSTREAM.read_text()
    found = SERVER_LINE.findall(shipped)
    if not found or len({params for _, params in found}) != 1:
        raise ValueError("the shipped upstream file must name its replicas with one set of parameters")
    prefix, params = found[0]
    lines = "".join(f"{prefix}{address}{params}\n" for address in upstreams)
    first = SERVER_LINE.search(shipped)
    assert first is not None
    rendered = shipped[: first.start()] + lines + SERVER_LINE.sub("", shipped[first.start() :])
    (workdir / "convserve-upstream.conf").write_text(rendered)
    listen, count = LISTEN_LINE.subn(lambda m: f"{m.group(1)}127.0.0.1:{listen_port}{m.group(2)}", SHIPPED_LISTEN.read_text())
    if count != 1:
        raise ValueError("the shipped listen file must have one loopback listen line")
    (workdir / "convserve-listen.conf").write_text(listen)
    config = workdir / "nginx.conf"
    text = (NGINX_DIR / "nginx.conf").read_text()
    config.write_text(edit(text) if edit else text)
    return config


@dataclass
class Nginx:
    """A running nginx (master process started here, in the foreground)."""

    process: subprocess.Popen[bytes]
    target: str
    workdir: Path

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master, which stops its workers)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def log(self) -> str:
        """nginx's error log so far (for failure messages)."""
        path = self.workdir / "error.log"
        return path.read_text()[-4000:] if path.exists() else ""


def start_nginx(binary: str, workdir: Path, upstreams: list[str], edit: Callable[[str], str] | None = None) -> Nginx:
    """Start nginx with the shipped config (changed by ``edit``, if given) in front of ``upstreams``; return once it answers health."""
    port = free_port()
    config = render(workdir, upstreams, port, edit)
    directives = f"daemon off; pid {workdir / 'nginx.pid'}; error_log {workdir / 'error.log'} warn;"
    base = [binary, "-p", str(workdir), "-c", str(config), "-e", str(workdir / "error.log"), "-g", directives]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    if checked.returncode != 0:
        if os.geteuid() != 0 and "Permission denied" in checked.stderr:  # e.g. its temp folders under /var/lib/nginx
            raise Unavailable(f"nginx cannot run as this user: {checked.stderr.strip().splitlines()[0]}")
        raise RuntimeError(f"nginx -t rejected the shipped config: {checked.stderr}")
    with (workdir / "access.log").open("wb") as access:
        process = subprocess.Popen(base, stdout=access, stderr=subprocess.STDOUT)
    nginx = Nginx(process, f"127.0.0.1:{port}", workdir)
    try:
        wait_serving(nginx.target)
    except Exception:
        nginx.stop()
        raise
    return nginx


def health(target: str, timeout: float = 2.0) -> int:
    """The overall health status (``health_pb2.HealthCheckResponse`` enum) at ``target``; -1 when unreachable."""
    with grpc.insecure_channel(target) as channel:
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status)
        except grpc.RpcError:
            return -1


def wait_serving(target: str, timeout: float = SERVING_WAIT_SECONDS) -> float:
    """Poll health at ``target`` until SERVING; return the seconds it took (raise after ``timeout``)."""
    started = time.monotonic()
    while health(target) != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{target} not SERVING after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Replica:
    """One server process with its gRPC and metrics ports."""

    flags: tuple[str, ...]
    server: RunningServer = field(init=False)
    metrics_port: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.start()

    @property
    def target(self) -> str:
        """``127.0.0.1:port`` (the same across restarts)."""
        return self.server.target

    def start(self, port: int = 0) -> None:
        """Start the process (on ``port``; 0: any free one) and read its metrics port."""
        self.server = start_server(*self.flags, "--metrics-port", "0", "--port", str(port))
        assert self.server.process.stdout is not None
        line = self.server.process.stdout.readline()  # "convserve metrics on http://127.0.0.1:P/metrics"
        match = re.search(r":(\d+)/metrics", line)
        if match is None:
            self.server.process.kill()
            raise RuntimeError(f"no metrics port in {line!r}")
        self.metrics_port = int(match.group(1))

    def kill(self) -> None:
        """``kill -9`` the process."""
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=20)

    def restart(self) -> None:
        """Start again on the same gRPC port (after :meth:`kill`)."""
        port = int(self.target.rsplit(":", 1)[1])
        self.start(port)

    def stop(self) -> None:
        """SIGTERM, if still running."""
        if self.server.process.poll() is None:
            stop_server(self.server)

    def calls(self, rpc: str | None = None) -> int:
        """Completed calls this process counted (of ``rpc`` only, if given), any status."""
        with _DIRECT.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for labels, value in REQUESTS.findall(text):
            if rpc is None or f'rpc="{rpc}"' in labels:
                total += float(value)
        return int(total)
