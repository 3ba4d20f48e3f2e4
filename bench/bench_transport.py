"""Large arrays over the wire: unary vs chunked streaming vs shared memory, beside a raw gRPC echo
and a numpy copy of the same bytes, all in one run; plus the streaming convolution's CPU cost.

The convolution is ``convolve(x, [1.0], mode="same")`` on float32 (a one-tap kernel), so transport
dominates. Round trips are medians; "overhead" is the round trip minus the server's compute time.
Also reported: the server's peak RSS growth for one call against the bytes of its input and
output (fresh server per path), and for the streaming convolution (48 kHz stereo, (1024, 2)
blocks, 48,000 taps) the server CPU time per second of audio.

Run: ``python bench/bench_transport.py [--sizes 1 16 128 1024] [--repeats 5] [--huge]``
(``--huge`` adds one 2.5 GB chunked round trip; it needs about 12 GB of free memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
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


def _identity(data: bytes) -> bytes:
    return data


class EchoServer:
    """A raw gRPC echo of bytes: unary and chunked bidirectional streaming, no protobuf at all."""

    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: request, _identity, _identity),
            "Stream": grpc.stream_stream_rpc_method_handler(lambda requests, context: requests, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        self.unary = self.channel.unary_unary("/bench.Echo/Unary", _identity, _identity)
        self.stream = self.channel.stream_stream("/bench.Echo/Stream", _identity, _identity)

    def echo_unary(self, array: np.ndarray) -> None:
        self.unary(array.tobytes())

    def echo_stream(self, array: np.ndarray) -> None:
        view = memoryview(array.reshape(-1).view(np.uint8))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(view), CHUNK):
                yield view[start : start + CHUNK].tobytes()

        received = bytearray(len(view))
        offset = 0
        for piece in self.stream(chunks()):
            received[offset : offset + len(piece)] = piece
            offset += len(piece)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


def median_seconds(function, repeats: int) -> float:  # type: ignore[no-untyped-def]
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


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


def transport_table(sizes: list[int], repeats: int) -> None:
    echo = EchoServer()
    server = start_server(*SERVER_FLAGS)
    paths = clients(server)
    kernel = np.ones(1, np.float32)
    print(
        "| MiB | numpy copy | gRPC echo unary | gRPC echo streamed | convserve unary | chunked | shared memory | chunked / streamed echo throughput | shm overhead / numpy copy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for size in sizes:
            x = np.random.default_rng(size).random(size * MIB // 4, dtype=np.float32)
            copy = median_seconds(lambda: np.copyto(np.empty_like(x), x), repeats)
            unary_echo = median_seconds(lambda: echo.echo_unary(x), repeats) if size <= 1024 else float("nan")
            stream_echo = median_seconds(lambda: echo.echo_stream(x), repeats)
            row: dict[str, float] = {}
            compute: dict[str, float] = {}
            for name, client in paths.items():
                if name == "unary" and size * 2 > 2047:
                    row[name] = float("nan")
                    continue
                infos = []

                def call() -> None:
                    _, info = client.convolve(x, kernel, "same", method="direct", return_info=True)  # noqa: B023
                    infos.append(info.compute_seconds)  # noqa: B023

                row[name] = median_seconds(call, repeats)
                compute[name] = statistics.median(infos)
            throughput_ratio = stream_echo / row["chunked"]
            shm_overhead = (row["shared memory"] - compute["shared memory"]) / copy
            print(
                f"| {size} | {copy * 1e3:.1f} ms | {unary_echo * 1e3:.1f} ms | {stream_echo * 1e3:.1f} ms | "
                f"{row['unary'] * 1e3:.1f} ms | {row['chunked'] * 1e3:.1f} ms | {row['shared memory'] * 1e3:.1f} ms | "
                f"{throughput_ratio:.0%} | {shm_overhead:.2f}x |",
                flush=True,
            )
    finally:
        for client in paths.values():
            client.close()
        stop_server(server)
        echo.close()


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 128, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--huge", action="store_true")
    args = parser.parse_args()
    transport_table(args.sizes, args.repeats)
    peak_memory(128)
    streaming_audio()
    if args.huge:
        huge()


if __name__ == "__main__":
    main()
