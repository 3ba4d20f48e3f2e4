"""Shared fixtures: a real server in another process on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import convserve


@dataclass
class RunningServer:
    """A server process and the address it listens on."""

    process: subprocess.Popen[str]
    target: str


def start_server(*flags: str, env: dict[str, str] | None = None, stderr: Any = subprocess.DEVNULL) -> RunningServer:
    """Start ``convserve serve --port 0`` in a subprocess; return once it listens."""
    defaults = [] if "--metrics-port" in flags else ["--metrics-port", "-1"]
    command = [sys.executable, "-m", "convserve_server", "serve", "--host", "127.0.0.1", "--port", "0", *defaults, *flags]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "convserve listening on 127.0.0.1:PORT"
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return RunningServer(process, line.strip().rsplit(" ", 1)[-1])


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in KiB, e.g. ``VmRSS`` or ``VmHWM`` (the peak RSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def stop_server(server: RunningServer) -> int:
    """SIGTERM the server and return its exit code."""
    server.process.terminate()
    try:
        return server.process.wait(timeout=20)
    finally:
        if server.process.poll() is None:
            server.process.kill()


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """One server for the session, with small limits so limit tests stay fast."""
    running = start_server("--max-elements", str(2**24), "--log-level", "WARNING")
    yield running
    assert stop_server(running) == 0


@pytest.fixture()
def client(server: RunningServer) -> Iterator[convserve.Client]:
    """A client of the session's server."""
    with convserve.Client(server.target, timeout=60) as connected:
        yield connected
