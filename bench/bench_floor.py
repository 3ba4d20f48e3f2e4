"""convserve at the gRPC floor: every path beside a raw gRPC echo of the same bytes, in one run.

The floor is :mod:`echo_floor`: a ``grpc.aio`` echo server in its own process and a sync stub,
carrying numpy -> bytes -> protobuf -> echo -> numpy, unary or streamed in 1 MiB chunks. The
convserve call is ``client.convolve(x, [1.0])`` on float64 (a one-tap kernel, so transport
dominates), through the default client, a client forced onto chunks, and shared memory.
Contenders run interleaved, round by round; every figure is a median. The service's own cost is
the round trip minus the ``compute_seconds`` the server reports.

Also: small-call throughput from 1 and 8 threads against the echo, a 2048x2048 float32 image with
a 7x7 Gaussian against ``cv2.filter2D`` in-process, and the server's peak RSS on the chunked path.

Run: ``python bench/bench_floor.py [--sizes-kib 1 64 1024 16384 131072 1048576] [--rss-mib 128 1024]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import convserve  # noqa: E402
from echo_floor import EchoClient  # noqa: E402
from tests.conftest import RunningServer, start_server, stop_server  # noqa: E402

KIB, MIB = 2**10, 2**20
BIG = 2047 * MIB
SERVER_FLAGS = ("--max-elements", str(2**31), "--max-request-bytes", str(BIG), "--max-output-bytes", str(BIG), "--memory-budget-bytes", str(16 * 1024 * MIB))
SERVER_FLAGS += ("--allow-shared-memory",)
Sample = Callable[[], float]  # runs one call, returns its compute seconds (0 for the echo)


def rounds_for(nbytes: int) -> tuple[int, int]:
    """(rounds, calls per contender per round) for a payload size."""
    if nbytes <= 64 * KIB:
        return 9, 40
    if nbytes <= 16 * MIB:
        return 7, 4
    return (5, 1) if nbytes <= 128 * MIB else (3, 1)


def interleaved(contenders: dict[str, Sample], rounds: int, calls: int) -> dict[str, tuple[float, float]]:
    """Median (round trip, compute) seconds per contender, after one warm-up each.

    Each round runs every contender, in a new seeded random order: in a fixed order the one that
    follows a large transfer pays for what that left behind (freed memory, cold caches).
    """
    for sample in contenders.values():
        sample()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    computes: dict[str, list[float]] = {name: [] for name in contenders}
    order = random.Random(0)
    for _ in range(rounds):
        names = list(contenders)
        order.shuffle(names)
        for name in names:
            sample = contenders[name]
            for _ in range(calls):
                started = time.perf_counter()
                compute = sample()
                times[name].append(time.perf_counter() - started)
                computes[name].append(compute)
    return {name: (statistics.median(times[name]), statistics.median(computes[name])) for name in contenders}


def convolve_sample(client: convserve.Client, x: np.ndarray, kernel: np.ndarray) -> Sample:
    """One convserve call as a sample: checks the result, returns the server's compute seconds."""

    def sample() -> float:
        result, info = client.convolve(x, kernel, return_info=True)
        assert result.shape == x.shape
        return info.compute_seconds

    return sample


def echo_sample(call: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> Sample:
    """One echo as a sample."""

    def sample() -> float:
        assert call(x).shape == x.shape
        return 0.0

    return sample


def memcpy_seconds(x: np.ndarray) -> float:
    """Median time of one copy of ``x`` into a preallocated array."""
    out = np.empty_like(x)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        np.copyto(out, x)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def clients(server: RunningServer) -> dict[str, convserve.Client]:
    """The default client, one forced onto chunks, and one on shared memory."""
    return {
        "default": convserve.Client(server.target, timeout=None),
        "chunked": convserve.Client(server.target, chunk_threshold=0, timeout=None),
        "shared memory": convserve.Client(server.target, shared_memory=True, shared_memory_threshold=0, timeout=None),
    }


def latency_table(sizes_kib: list[int], echo: EchoClient, paths: dict[str, convserve.Client]) -> None:
    """The transport table: echo beside every convserve path, per size."""
    print("| size | echo unary | echo streamed | default | default - compute | / faster echo | chunked - compute | shared memory | shm budget |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    kernel = np.ones(1)
    for size in sizes_kib:
        x = np.random.default_rng(size).random(size * KIB // 8)
        contenders = {"echo unary": echo_sample(echo.echo_unary, x)}
        if size >= 1024:
            contenders["echo streamed"] = echo_sample(echo.echo_stream, x)
        contenders |= {name: convolve_sample(client, x, kernel) for name, client in paths.items()}
        medians = interleaved(contenders, *rounds_for(x.nbytes))
        floor = min(medians[name][0] for name in ("echo unary", "echo streamed") if name in medians)
        default_rt, default_compute = medians["default"]
        chunked_rt, chunked_compute = medians["chunked"]
        shm_rt, shm_compute = medians["shared memory"]
        budget = shm_compute + 2 * memcpy_seconds(x) + 0.5e-3
        streamed = f"{medians['echo streamed'][0] * 1e3:.2f}" if "echo streamed" in medians else "-"
        print(
            f"| {_size(size)} | {medians['echo unary'][0] * 1e3:.2f} | {streamed} | {default_rt * 1e3:.2f} | {(default_rt - default_compute) * 1e3:.2f} | "
            f"{(default_rt - default_compute) / floor:.2f}x | {(chunked_rt - chunked_compute) * 1e3:.2f} | {shm_rt * 1e3:.2f} | "
            f"{budget * 1e3:.2f} ({shm_rt / budget:.2f}x) |",
            flush=True,
        )


def _size(kib: int) -> str:
    return f"{kib} KiB" if kib < 1024 else (f"{kib // 1024} MiB" if kib < 1024 * 1024 else f"{kib // (1024 * 1024)} GiB")


def calls_per_second(call: Callable[[], object], threads: int, calls: int) -> float:
    """Calls per second of ``calls`` calls spread over ``threads`` threads."""
    with futures.ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: call(), range(calls)))
        return calls / (time.perf_counter() - started)


def throughput(echo: EchoClient, client: convserve.Client) -> None:
    """Small-call throughput (6 float64 elements) from 1 and 8 threads, echo beside convserve."""
    x, kernel = np.arange(6.0), np.ones(1)
    print("\n| threads | echo calls/s | convserve calls/s | convserve / echo |\n|---:|---:|---:|---:|")
    for threads in (1, 8):
        echo_rates, convserve_rates = [], []
        for _ in range(5):
            echo_rates.append(calls_per_second(lambda: echo.echo_unary(x), threads, 1000))
            convserve_rates.append(calls_per_second(lambda: client.convolve(x, kernel), threads, 1000))
        e, c = statistics.median(echo_rates), statistics.median(convserve_rates)
        print(f"| {threads} | {e:.0f} | {c:.0f} | {c / e:.2f}x |", flush=True)


def image(paths: dict[str, convserve.Client]) -> None:
    """A 2048x2048 float32 image with a 7x7 Gaussian: default and shared memory against cv2.filter2D."""
    img = np.random.default_rng(7).random((2048, 2048), dtype=np.float32)
    g = cv2.getGaussianKernel(7, 1.5).astype(np.float32)
    kernel = g @ g.T

    def local() -> float:
        cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        return 0.0

    def remote(client: convserve.Client) -> Sample:
        def sample() -> float:
            _, info = client.convolve(img, kernel, mode="same", return_info=True)
            return info.compute_seconds

        return sample

    medians = interleaved({"cv2.filter2D": local, "default": remote(paths["default"]), "shared memory": remote(paths["shared memory"])}, 7, 3)
    cv = medians["cv2.filter2D"][0]
    print("\n| 2048x2048 float32, 7x7 | ms | server compute ms | / cv2.filter2D |\n|---|---:|---:|---:|")
    for name, (rt, compute) in medians.items():
        print(f"| {name} | {rt * 1e3:.2f} | {compute * 1e3:.2f} | {rt / cv:.2f}x |", flush=True)


def rss_kib(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def peak_rss(sizes_mib: list[int]) -> None:
    """Peak RSS growth of a fresh server for one chunked call, against its input plus output bytes."""
    print("\n| chunked call, fresh server | peak RSS growth | / (input + output) |\n|---|---:|---:|")
    for size in sizes_mib:
        x = np.ones(size * MIB // 8)
        server = start_server(*SERVER_FLAGS)
        try:
            with convserve.Client(server.target, chunk_threshold=0, timeout=None) as client:
                client.convolve(np.ones(8), np.ones(1))
                base = rss_kib(server.process.pid, "VmRSS") * 1024
                client.convolve(x, np.ones(1))
                growth = rss_kib(server.process.pid, "VmHWM") * 1024 - base
            print(f"| {size} MiB in, {size} MiB out | {growth / MIB:.0f} MiB | {growth / (2 * x.nbytes):.2f} |", flush=True)
        finally:
            stop_server(server)


def main() -> None:
    """Run every table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[1, 64, 1024, 16 * 1024, 128 * 1024, 1024 * 1024])
    parser.add_argument("--rss-mib", type=int, nargs="*", default=[128, 1024])
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "throughput", "image"])
    args = parser.parse_args()
    echo = EchoClient()
    server = start_server(*SERVER_FLAGS, "--log-level", "INFO")
    paths = clients(server)
    try:
        if "latency" not in args.skip:
            latency_table(args.sizes_kib, echo, paths)
        if "throughput" not in args.skip:
            throughput(echo, paths["default"])
        if "image" not in args.skip:
            image(paths)
    finally:
        for client in paths.values():
            client.close()
        stop_server(server)
        echo.close()
    peak_rss(args.rss_mib)


if __name__ == "__main__":
    main()
