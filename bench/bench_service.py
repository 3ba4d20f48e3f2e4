"""Service-level figures, measured over loopback in one run.

- two-core speed-up: two CPU-bound requests at once vs one after the other (1 FFTW thread each);
- rejection latency: how fast a full server answers RESOURCE_EXHAUSTED, beside an idle server's OK;
- cancel-to-idle: from the client's deadline to the server using no CPU, for long jobs;
- peak RSS under an overload burst, against the memory budget.

Run: ``python bench/bench_service.py``. Prints a Markdown table; takes about a minute.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import convserve  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

NO_RETRY = convserve.RetryPolicy(max_attempts=1)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def two_core_speedup(rows: list[tuple[str, str]]) -> None:
    server = start_server("--workers", "2", "--max-concurrent-requests", "4", "--fftw-threads", "1")
    x = np.random.default_rng(0).standard_normal(1_000_000)
    h = np.random.default_rng(1).standard_normal(1501)
    try:
        with convserve.Client(server.target, timeout=120) as client:
            client.convolve(x, h, method="direct")  # warm up
            serial, parallel = [], []
            for _ in range(5):
                started = time.perf_counter()
                client.convolve(x, h, method="direct")
                client.convolve(x, h, method="direct")
                serial.append(time.perf_counter() - started)
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    started = time.perf_counter()
                    list(pool.map(lambda _: client.convolve(x, h, method="direct"), range(2)))
                    parallel.append(time.perf_counter() - started)
        s, p = statistics.median(serial), statistics.median(parallel)
        rows.append(("two direct requests (1e6 x 1501), one after the other", f"{s * 1e3:.0f} ms"))
        rows.append(("the same two at once", f"{p * 1e3:.0f} ms"))
        rows.append(("two-core speed-up", f"{s / p:.2f}x"))
    finally:
        stop_server(server)


def rejection_latency(rows: list[tuple[str, str]]) -> None:
    server = start_server("--workers", "1", "--max-concurrent-requests", "1", "--fftw-threads", "1")
    try:
        with convserve.Client(server.target, retry=NO_RETRY, timeout=60) as client:
            idle = []
            for _ in range(200):
                started = time.perf_counter()
                client.convolve([1.0, 2.0], [1.0])
                idle.append(time.perf_counter() - started)
            pool = concurrent.futures.ThreadPoolExecutor(1)
            slow = pool.submit(client.convolve, np.ones(2_000_000), np.ones(3001), method="direct", timeout=120)
            time.sleep(0.3)
            rejected = []
            for _ in range(200):
                started = time.perf_counter()
                try:
                    client.convolve([1.0, 2.0], [1.0])
                except convserve.ResourceExhaustedError:
                    rejected.append(time.perf_counter() - started)
            slow.result()
            pool.shutdown()
        rows.append(("small call on an idle server (median of 200)", f"{statistics.median(idle) * 1e3:.2f} ms"))
        rows.append((f"RESOURCE_EXHAUSTED from a full server (median of {len(rejected)})", f"{statistics.median(rejected) * 1e3:.2f} ms"))
    finally:
        stop_server(server)


def cancel_to_idle(rows: list[tuple[str, str]]) -> None:
    server = start_server("--workers", "1", "--max-concurrent-requests", "1", "--fftw-threads", "1")
    pid = server.process.pid
    cases = {"direct (4e6 x 3001)": (4_000_000, 3001, "direct"), "overlap_add (2e7 x 65537)": (20_000_000, 65_537, "overlap_add")}
    try:
        with convserve.Client(server.target, retry=NO_RETRY) as client:
            for name, (n, m, method) in cases.items():
                x = np.random.default_rng(2).standard_normal(n)
                h = np.random.default_rng(3).standard_normal(m)
                try:
                    client.convolve(x, h, method=method, timeout=1.0)
                    rows.append((f"cancel-to-idle, {name}", "finished before the deadline"))
                    continue
                except convserve.DeadlineExceededError:
                    deadline_at = time.perf_counter()
                while True:
                    before = cpu_seconds(pid)
                    time.sleep(0.02)
                    if cpu_seconds(pid) - before < 0.002:
                        break
                rows.append((f"cancel-to-idle, {name}", f"{(time.perf_counter() - deadline_at) * 1e3:.0f} ms"))
    finally:
        stop_server(server)


def overload_memory(rows: list[tuple[str, str]]) -> None:
    budget = 200 * 2**20
    server = start_server("--workers", "2", "--max-concurrent-requests", "4", "--memory-budget-bytes", str(budget), "--fftw-threads", "1")
    pid = server.process.pid
    baseline = rss_kib(pid, "VmRSS") * 1024
    x = np.random.default_rng(4).standard_normal(1_000_000)
    outcomes: list[str] = []

    def call(_: int) -> None:
        with convserve.Client(server.target, retry=NO_RETRY, timeout=120) as client:
            try:
                client.convolve(x, np.ones(33), method="direct")
                outcomes.append("OK")
            except convserve.ConvserveError as error:
                outcomes.append(error.code.name)

    try:
        with concurrent.futures.ThreadPoolExecutor(24) as burst:
            list(burst.map(call, range(96)))
        peak = rss_kib(pid, "VmHWM") * 1024
        rows.append(
            (
                "overload burst: 96 calls of 8 MB from 24 threads",
                f"{outcomes.count('OK')} OK, {outcomes.count('RESOURCE_EXHAUSTED')} RESOURCE_EXHAUSTED, other {len(outcomes) - outcomes.count('OK') - outcomes.count('RESOURCE_EXHAUSTED')}",
            )
        )
        rows.append(
            (
                "peak RSS growth over the idle server",
                f"{(peak - baseline) / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB; baseline {baseline / 2**20:.0f} MiB)",
            )
        )
    finally:
        stop_server(server)


def main() -> None:
    rows: list[tuple[str, str]] = []
    for step in (two_core_speedup, rejection_latency, cancel_to_idle, overload_memory):
        step(rows)
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
