"""Server memory per path, the streaming convolution's CPU cost, and one array past gRPC's 2 GB limit.

The round trips of every path beside a raw gRPC echo are ``bench/bench_floor.py``'s. Here: the
server's peak RSS growth for one call of ``convolve(x, [1.0], mode="same")`` against the bytes of
its input and output (a fresh server per path: unary, chunked, shared memory); for the streaming
convolution (48 kHz stereo, (1024, 2) blocks, 48,000 taps) the server CPU time per second of
audio; and with ``--huge`` one 2.5 GB chunked round trip (it needs about 12 GB of free memory).

Run: ``python bench/bench_transport.py [--huge]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import convserve  # noqa: E402
from tests.conftest import RunningServer, start_server, stop_server  # noqa: E402

MIB = 2**20
CHUNK = MIB
SERVER_FLAGS = (
    "--max-elements",
    str(2**31),
    "--max-request-bytes",
    str(2047 * MIB),
    "--max-output-bytes",
    str(2047 * MIB),
    "--memory-budget-bytes",
    str(16 * 1024 * MIB),
    "--allow-shared-memory",
    "--log-level",
    "WARNING",
)


def rss_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients(server: RunningServer) -> dict[str, convserve.Client]:
    big = 2047 * MIB
    return {
        "unary": convserve.Client(server.target, chunk_threshold=2**62, max_message_bytes=big, timeout=None),
        "chunked": convserve.Client(server.target, chunk_threshold=0, timeout=None),
        "shared memory": convserve.Client(server.target, shared_memory=True, shared_memory_threshold=0, timeout=None),
    }


def peak_memory(size: int) -> None:
    print(f"\n| path ({size} MiB in, {size} MiB out) | server peak RSS growth | / (input + output bytes) |\n|---|---:|---:|")
    x = np.random.default_rng(0).random(size * MIB // 4, dtype=np.float32)
    for name in ("unary", "chunked", "shared memory"):
        server = start_server(*SERVER_FLAGS)
        client = clients(server)[name]
        try:
            base = rss_kib(server.process.pid, "VmRSS") * 1024
            client.convolve(x, np.ones(1, np.float32), "same", method="direct")
            growth = rss_kib(server.process.pid, "VmHWM") * 1024 - base
            print(f"| {name} | {growth / MIB:.0f} MiB | {growth / (2 * x.nbytes):.2f} |", flush=True)
        finally:
            client.close()
            stop_server(server)


def streaming_audio(seconds: int = 20) -> None:
    rate, taps = 48_000, 48_000
    audio = np.random.default_rng(1).standard_normal((rate * seconds, 2)).astype(np.float32)
    kernel = (np.random.default_rng(2).standard_normal(taps) * np.exp(-np.arange(taps) / 8000)).astype(np.float32)
    server = start_server("--log-level", "WARNING")
    try:
        with convserve.Client(server.target) as client:
            before = cpu_seconds(server.process.pid)
            started = time.perf_counter()
            blocks = (audio[i : i + 1024] for i in range(0, len(audio), 1024))
            outputs = sum(len(block) for block in client.convolve_stream(blocks, kernel))
            wall = time.perf_counter() - started
            cpu = cpu_seconds(server.process.pid) - before
        assert outputs == len(audio) + taps - 1
        print(
            f"\nstreaming convolution, 48 kHz stereo, (1024, 2) blocks, {taps} taps, {seconds} s of audio: "
            f"wall {wall:.2f} s ({seconds / wall:.0f}x real time), server CPU {cpu:.2f} s = "
            f"{100 * cpu / seconds:.1f}% of one core per second of audio"
        )
    finally:
        stop_server(server)


def huge() -> None:
    size = 2560
    x = np.ones(size * MIB // 4, np.float32)
    server = start_server(*SERVER_FLAGS, "--max-output-bytes", str(4096 * MIB), "--max-elements", str(2**32))
    try:
        with convserve.Client(server.target, chunk_threshold=0, timeout=None) as client:
            started = time.perf_counter()
            result = client.convolve(x, np.ones(1, np.float32), "same", method="direct")
            elapsed = time.perf_counter() - started
        assert result.shape == x.shape and float(result[-1]) == 1.0
        print(f"\n2.5 GB (2560 MiB float32) chunked round trip: {elapsed:.1f} s ({2 * size / 1024 / elapsed:.2f} GiB/s both ways)")
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--huge", action="store_true")
    args = parser.parse_args()
    peak_memory(128)
    streaming_audio()
    if args.huge:
        huge()


if __name__ == "__main__":
    main()
