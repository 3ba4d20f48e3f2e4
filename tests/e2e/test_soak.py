"""A bounded soak (about a minute): overload through the default client, idle streams, a
shared-memory attacker and SIGTERM with calls in flight, against one server process on loopback.

Only OK, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or CANCELLED may come back to the load; no answer
is wrong; the attacker gets nothing; the server's peak RSS stays under its budgets; after SIGTERM
the process exits within its grace plus a generous bound, with exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TextIO

import grpc
import numpy as np

import convserve
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.attacker_env import as_nobody, nobody_python
from tests.conftest import RunningServer, start_server, status_kib

HERE = Path(__file__).resolve().parents[1]  # tests/, where the soak scripts live
MIB = 2**20
BUDGET = 256 * MIB
WAITING = 64 * MIB
LOAD_SECONDS = 20.0
ALLOWED = {"OK", "ResourceExhaustedError", "DeadlineExceededError", "CancelledError"}


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _idle_upload(target: str, outcomes: list[str]) -> None:
    """A chunked upload that sends its header (4 MiB declared) and then nothing."""
    header = pb.SignalRequest(
        in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[MIB // 2]), in2=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=np.ones(3).tobytes())
    )
    release = threading.Event()

    def parts():  # type: ignore[no-untyped-def]
        yield pb.SignalRequestPart(header=header)
        release.wait(120)

    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.ConvolutionServiceStub(channel).ConvolveChunked(parts(), timeout=120)
        try:
            for _ in call:
                pass
            outcomes.append("OK")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)
        finally:
            release.set()


def _attack(target: str, victim_pid: int) -> dict[str, int]:
    """Run soak_attacker.py as another uid where the machine allows it (else as this one); its tally."""
    script = (HERE / "soak_attacker.py").read_text()
    with nobody_python({"soak_attacker.py": script}) as other:
        if other is None:
            command, env = [sys.executable, str(HERE / "soak_attacker.py")], {**os.environ, "PYTHONPATH": str(HERE.parent)}
        else:
            interpreter, directory = other
            command, env = as_nobody(interpreter, os.path.join(directory, "soak_attacker.py")), {"PYTHONPATH": directory}
        run = subprocess.run([*command, target, str(victim_pid)], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def _start_soak_server(log: TextIO) -> RunningServer:
    """The soak's server: two workers, four concurrent requests, small budgets, a 2 s idle timeout,
    shared memory allowed, a 1 s grace and a metrics port; its log goes to ``log``."""
    return start_server(
        "--workers",
        "2",
        "--max-concurrent-requests",
        "4",
        "--memory-budget-bytes",
        str(BUDGET),
        "--waiting-budget-bytes",
        str(WAITING),
        "--max-waiting-streams",
        "8",
        "--idle-timeout-seconds",
        "2",
        "--allow-shared-memory",
        "--grace-seconds",
        "1",
        "--fftw-threads",
        "1",
        "--metrics-port",
        "0",
        stderr=log,
    )


def _warm_up(target: str) -> None:
    """Every kind of call once, so that libraries and plans are loaded before the baseline RSS."""
    warm = subprocess.run(
        [sys.executable, str(HERE / "soak_load.py"), target, "1", "1", "--shared-memory"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        timeout=120,
    )
    assert warm.returncode == 0, warm.stderr  # every kind of call once: libraries and plans loaded


def _start_idle_uploads(target: str, idle: list[str]) -> list[threading.Thread]:
    """Six chunked uploads that send their header and then nothing; each appends its outcome to ``idle``."""
    idlers = [threading.Thread(target=_idle_upload, args=(target, idle)) for _ in range(6)]
    for thread in idlers:
        thread.start()
    return idlers


def _start_load(target: str) -> subprocess.Popen[str]:
    """soak_load.py for LOAD_SECONDS with 12 callers, shared memory included; it prints its tally."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "soak_load.py"), target, str(LOAD_SECONDS), "12", "--shared-memory"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )


def _sample_while_loaded(server: RunningServer, load: subprocess.Popen[str], attack_outcomes: list[dict[str, int]]) -> int:
    """Sample the server's RSS while the load runs, and start the attacker (once) after 2 s; the peak RSS in KiB."""
    pid = server.process.pid
    peak_kib = 0
    started = time.monotonic()
    while load.poll() is None and time.monotonic() - started < LOAD_SECONDS + 60:
        peak_kib = max(peak_kib, status_kib(pid, "VmRSS"))
        if not attack_outcomes and time.monotonic() - started > 2:
            attack_outcomes.append(_attack(server.target, load.pid))
        time.sleep(0.1)  # a sampling period, not a wait for an event
    return peak_kib


def _check_load(tally: dict[str, int], idle: list[str], attack_outcomes: list[dict[str, int]], pid: int, peak_kib: int, baseline_kib: int) -> None:
    """Only allowed outcomes and some OK for the load, every idle upload ended by the server, nothing
    for the attacker, and the peak RSS growth within the budgets."""
    outcomes = {k: v for k, v in tally.items() if ":" not in k}
    print(
        "soak load:",
        tally,
        "idle:",
        idle,
        "attacker:",
        attack_outcomes,
        f"peak RSS {peak_kib // 1024} MiB over a baseline of {baseline_kib // 1024} MiB",
    )
    assert set(outcomes) <= ALLOWED, tally
    assert outcomes.get("OK", 0) > 0
    assert set(idle) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"} and len(idle) == 6, idle
    assert attack_outcomes and attack_outcomes[0].get("OK", 0) == 0, attack_outcomes
    assert attack_outcomes[0].get("tried", 0) > 0, attack_outcomes
    hwm_kib = status_kib(pid, "VmHWM")
    growth = (max(peak_kib, hwm_kib) - baseline_kib) * 1024
    print(f"peak RSS growth {growth / MIB:.0f} MiB against budgets of {(BUDGET + WAITING) / MIB:.0f} MiB")
    assert growth < BUDGET + WAITING


def _sigterm_with_calls_in_flight(server: RunningServer, metrics_url: str) -> tuple[int, float, list[str]]:
    """Two long calls in flight, then SIGTERM: the exit code, the seconds from SIGTERM to exit and
    how the calls ended."""
    signal_in, kernel = np.random.default_rng(0).standard_normal(4_000_000), np.ones(4001)
    ends: list[str] = []

    def long_call() -> None:
        with convserve.Client(server.target) as long_client:
            try:
                long_client.convolve(signal_in, kernel, method="direct")
                ends.append("OK")
            except convserve.ConvserveError as error:
                ends.append(type(error).__name__)

    callers = [threading.Thread(target=long_call) for _ in range(2)]
    for thread in callers:
        thread.start()
    waited = time.monotonic()
    while _metric(metrics_url, "convserve_in_flight_requests") < 2 and time.monotonic() - waited < 60:
        time.sleep(0.02)
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=60)
    exit_seconds = time.monotonic() - sent
    for thread in callers:
        thread.join(60)
    return code, exit_seconds, ends


def _check_sigterm(code: int, exit_seconds: float, ends: list[str], log_path: Path) -> None:
    """Exit code 0 soon after the grace, the calls in flight ended OK or CANCELLED, and no traceback
    or ERROR in the server's log."""
    print(f"SIGTERM to exit: {exit_seconds:.2f} s; in-flight calls ended {ends}")
    assert code == 0
    assert exit_seconds < 1 + 10  # grace 1 s, generous bound for a loaded machine
    assert set(ends) <= {"OK", "CancelledError"} and len(ends) == 2, ends
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    for line in log_text.splitlines():
        assert json.loads(line)["level"] != "ERROR", line


def test_soak_overload_idle_attacker_and_sigterm() -> None:
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        with open(log_path, "w") as log:
            server = _start_soak_server(log)
        assert server.process.stdout is not None
        metrics_url = server.process.stdout.readline().strip().rsplit(" ", 1)[-1]
        pid = server.process.pid
        try:
            _warm_up(server.target)
            baseline_kib = status_kib(pid, "VmRSS")

            idle: list[str] = []
            idlers = _start_idle_uploads(server.target, idle)
            load = _start_load(server.target)
            attack_outcomes: list[dict[str, int]] = []
            peak_kib = _sample_while_loaded(server, load, attack_outcomes)
            out, _ = load.communicate(timeout=60)
            assert load.returncode == 0
            tally = json.loads(out)
            for thread in idlers:
                thread.join(60)
            _check_load(tally, idle, attack_outcomes, pid, peak_kib, baseline_kib)

            # SIGTERM with calls in flight: they end OK or CANCELLED, and the process exits soon after its grace.
            code, exit_seconds, ends = _sigterm_with_calls_in_flight(server, metrics_url)
            _check_sigterm(code, exit_seconds, ends, log_path)
        finally:
            if server.process.poll() is None:
                server.process.kill()
