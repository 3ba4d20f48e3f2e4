"""Check a running replicas stack by hand: calls through the balancer, counted per replica from their metrics.

    podman-compose -f compose.replicas.host-network.yml up -d
    python deploy/smoke_stack.py                                  # spread, 16 MiB paths
    python deploy/smoke_stack.py --kill convserve-replicas_convserve-2_1   # and a kill -9 under load

Not a test (it needs a container runtime and the stack up): what it prints is what a run saw.
``--kill`` sends SIGKILL to the server process inside that container (a crash, which the compose
restart policy answers) while 8 threads call the balancer with the default client, then waits for
the replica to serve calls through the balancer again.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np

import convserve

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def calls(port: int) -> dict[str, int] | None:
    """Completed calls by RPC from one replica's metrics, or None when it does not answer."""
    try:
        with DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    found: dict[str, int] = {}
    for labels, value in re.findall(r"^convserve_requests_total\{([^}]*)\}\s+(\S+)$", text, re.MULTILINE):
        rpc = re.search(r'rpc="(\w+)"', labels)
        if rpc:
            found[rpc.group(1)] = found.get(rpc.group(1), 0) + int(float(value))
    return found


def spread_and_large(target: str, ports: list[int]) -> None:
    """300 small calls, then 16 MiB as one unary message, as a chunked upload and as a stream."""
    before = [calls(p) or {} for p in ports]
    x, k = np.random.default_rng(0).standard_normal(4096), np.ones(17)
    big = np.random.default_rng(1).standard_normal(2**21)
    with convserve.Client(target) as client:
        started = time.perf_counter()
        for _ in range(300):
            np.testing.assert_allclose(client.convolve(x, k), np.convolve(x, k))
        print(f"300 Convolve calls through {target}: {time.perf_counter() - started:.2f} s")
        np.testing.assert_allclose(client.convolve(big, k), np.convolve(big, k))
        streamed = np.concatenate(list(client.convolve_stream(np.array_split(big, 16), k, timeout=120)))
        np.testing.assert_allclose(streamed, np.convolve(big, k))
    with convserve.Client(target, chunk_threshold=2**30) as unary:
        np.testing.assert_allclose(unary.convolve(big, k), np.convolve(big, k))
    print("16 MiB chunked, streamed and unary: results correct")
    for port, old in zip(ports, before):
        new = calls(port) or {}
        print(f"replica with metrics on {port}:", {rpc: new[rpc] - old.get(rpc, 0) for rpc in sorted(new)})


def server_pid(container: str) -> int:
    """The server process inside ``container`` (the child of its init)."""
    init = subprocess.run(["podman", "inspect", "-f", "{{.State.Pid}}", container], check=True, capture_output=True, text=True).stdout.strip()
    children = subprocess.run(["pgrep", "-P", init], capture_output=True, text=True).stdout.split()
    return int(children[0]) if children else int(init)


def kill_under_load(target: str, container: str, metrics_port: int, seconds: float) -> None:
    """kill -9 the server in ``container`` under load; report failed calls and when it served again."""
    client = convserve.Client(target)
    stop = threading.Event()
    failures: list[str] = []
    done = [0] * 8

    def work(index: int) -> None:
        rng = np.random.default_rng(index)
        x, k = rng.standard_normal(2048), rng.standard_normal(17)
        want = np.convolve(x, k)
        while not stop.is_set():
            try:
                np.testing.assert_allclose(client.convolve(x, k), want, rtol=1e-10, atol=1e-10)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.append(repr(exc))
            done[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2)  # load running before the kill (a by-hand check: the duration is not a claim)
    at_kill = sum(done)
    os.kill(server_pid(container), signal.SIGKILL)
    killed = time.monotonic()
    back = None
    while time.monotonic() - killed < seconds:
        counted = calls(metrics_port)
        if counted and sum(counted.values()) > 0:
            back = time.monotonic() - killed
            break
        time.sleep(0.1)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    client.close()
    print(f"after the kill: {sum(done) - at_kill} calls, {len(failures)} failed {failures[:2]}")
    print(f"replica served calls again {back:.1f} s after the kill" if back is not None else f"replica not back within {seconds} s")


def main() -> None:
    """Parse the options and run the checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50050", help="the balancer")
    parser.add_argument("--metrics-ports", default="9464,9465,9466", help="each replica's metrics port")
    parser.add_argument("--kill", metavar="CONTAINER", help="podman container whose server to kill -9 under load")
    parser.add_argument("--kill-metrics-port", type=int, default=9465, help="metrics port of that container's replica")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the killed replica to serve again")
    args = parser.parse_args()
    ports = [int(p) for p in args.metrics_ports.split(",")]
    spread_and_large(args.target, ports)
    if args.kill:
        kill_under_load(args.target, args.kill, args.kill_metrics_port, args.wait)


if __name__ == "__main__":
    main()
