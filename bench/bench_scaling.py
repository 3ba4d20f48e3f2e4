"""Throughput of independent calls with 1, 2 and 3 replicas, through nginx and through client-side round_robin.

Each replica is a server process with 1 worker and 1 FFT thread. The client is one process with
eight threads on one default ``convserve.Client``. nginx runs the shipped ``deploy/nginx/nginx.conf``
(the test helper renders its includes). Every figure is measured in this run: calls per second
(the median of the repetitions), the calls each replica served (from its own metrics), and the
server CPU time each call took (from /proc), which is what the projection to N machines uses.

The machine this runs on has few cores shared by the client, nginx and every replica: beyond the
core count, replicas add no compute, and the table shows that instead of hiding it.

It then measures the fan-out of ONE big job: a long 1-D signal sent one-shot, and split with
``tiles=3`` over the three replicas (one channel per address of an ``ipv4:a,b,c`` target), and over
one replica (``tiles=3`` on a single address) for reference. Wall time of the whole call, client
side included (tiling, transfer and stitching), the median of the repetitions.

Run: ``python bench/bench_scaling.py [--seconds 2] [--repeats 3] [--fanout-only]``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import convserve  # noqa: E402
from tests.deployment.balancer import Nginx, Replica, ensure_nginx, start_nginx  # noqa: E402

REPLICA_FLAGS = ("--workers", "1", "--fftw-threads", "1", "--max-concurrent-requests", "8", "--log-level", "WARNING")
THREADS = 8
BANDWIDTHS_GBIT = (10, 25)
MACHINES = (1, 4, 16, 64)
CORES_PER_MACHINE = os.cpu_count() or 1


@dataclass(frozen=True)
class Workload:
    """One kind of independent call."""

    name: str
    signal: int
    kernel: int
    method: str

    def arrays(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(self.signal), rng.standard_normal(self.kernel)

    @property
    def wire_bytes(self) -> int:
        """Tensor bytes per call, both ways (float64 in1 + in2 in, the full result out)."""
        return 8 * (self.signal + self.kernel + self.signal + self.kernel - 1)


WORKLOADS = (
    Workload("small (1024 x 16)", 1024, 16, "auto"),
    Workload("compute (20000 x 1001, direct)", 20_000, 1001, "direct"),
    Workload("transfer (2 MiB x 9)", 262_144, 9, "auto"),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def nginx_pids(nginx: Nginx) -> list[int]:
    """The master and its worker processes."""
    master = nginx.process.pid
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        children = []
    return [master, *map(int, children)]


@dataclass
class Run:
    """One measurement: calls per second, per replica the calls and the CPU seconds, and the others' load."""

    rate: float
    calls: list[int]
    cpu: list[float]
    others: float  # cores kept busy by processes not part of this benchmark
    client_cpu: float  # CPU seconds of the client process (all its threads) per call


def _hammer(client: convserve.Client, work: Workload, seconds: float) -> int:
    """Eight threads call without pause for ``seconds``; return the calls done (raise if one failed)."""
    stop = threading.Event()
    done = [0] * THREADS
    failures: list[BaseException] = []

    def loop(index: int) -> None:
        x, k = work.arrays(index)
        while not stop.is_set():
            try:
                client.convolve(x, k, method=work.method)
            except BaseException as exc:  # noqa: BLE001 - a failed call invalidates the figure
                failures.append(exc)
                return
            done[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed: {failures[0]!r}")
    return sum(done)


def measure(target: str, replicas: list[Replica], nginx: Nginx, work: Workload, seconds: float) -> Run:
    """Calls to ``target`` for about ``seconds``; what each of ``replicas`` did, and the machine's other load."""
    with convserve.Client(target, timeout=120) as client:
        x, k = work.arrays(0)
        for _ in range(2 * len(replicas)):  # warm every replica's plans and connections
            client.convolve(x, k, method=work.method)
        ours = [os.getpid(), *nginx_pids(nginx), *(r.server.process.pid for r in replicas)]
        calls0 = [r.calls() for r in replicas]
        cpu0 = [cpu_seconds(r.server.process.pid) for r in replicas]
        ours0, busy0, client0 = sum(map(cpu_seconds, ours)), machine_busy_seconds(), cpu_seconds(os.getpid())
        started = time.perf_counter()
        done = _hammer(client, work, seconds)
        wall = time.perf_counter() - started
        client_cpu = (cpu_seconds(os.getpid()) - client0) / max(1, done)
        others = (machine_busy_seconds() - busy0 - (sum(map(cpu_seconds, ours)) - ours0)) / wall
    return Run(
        done / wall,
        [r.calls() - c for r, c in zip(replicas, calls0)],
        [cpu_seconds(r.server.process.pid) - c for r, c in zip(replicas, cpu0)],
        max(0.0, others),
        client_cpu,
    )


def median_run(runs: list[Run]) -> Run:
    """The run with the median rate."""
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


def bench(seconds: float, repeats: int) -> list[dict[str, Any]]:
    """Every workload x replica count x path, interleaved (so that a change in the machine's other
    load hits every replica count alike); one row each, with the median of ``repeats`` runs."""
    binary = ensure_nginx()
    replicas: list[Replica] = []
    balancers: dict[int, Nginx] = {}
    runs: dict[tuple[int, int, str], list[Run]] = {}
    try:
        for _ in range(3):
            replicas.append(Replica(REPLICA_FLAGS))
        for count in (1, 2, 3):  # one nginx per replica count, in front of the first `count`
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-nginx-{count}-"))
            balancers[count] = start_nginx(binary, workdir, [r.target for r in replicas[:count]])
        for w, work in enumerate(WORKLOADS):
            for _ in range(repeats):
                for count in (1, 2, 3):
                    used = replicas[:count]
                    targets = {"round_robin": "ipv4:" + ",".join(r.target for r in used), "nginx": balancers[count].target}
                    for path, target in targets.items():
                        run = measure(target, used, balancers[count], work, seconds)
                        runs.setdefault((w, count, path), []).append(run)
                        print(
                            f"  {work.name:32s} {count} replica(s) {path:11s} {run.rate:7.0f} calls/s  others {run.others:.2f} cores",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        for nginx in balancers.values():
            nginx.stop()
        for replica in replicas:
            replica.stop()
    return [
        {"work": WORKLOADS[w], "replicas": count, "path": path, "run": median_run(found)}
        for (w, count, path), found in sorted(runs.items(), key=lambda item: (item[0][0], item[0][2] != "round_robin", item[0][1]))
    ]


def print_tables(rows: list[dict[str, Any]], seconds: float, repeats: int) -> None:
    """The measured table, then the projection from the 1-replica figures."""
    print(f"\n## Independent calls, {THREADS} client threads, {CORES_PER_MACHINE} cores shared by client, nginx and replicas")
    print(f"(median of {repeats} runs of {seconds:g} s; each replica 1 worker, 1 FFT thread)\n")
    print("| workload | path | replicas | calls/s | vs 1 replica | calls per replica | server CPU ms / call | client CPU ms / call | other load (cores) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base: dict[tuple[str, str], float] = {}
    for row in rows:
        work, run = row["work"], row["run"]
        key = (work.name, row["path"])
        if row["replicas"] == 1:
            base[key] = run.rate
        cpu_ms = 1e3 * sum(run.cpu) / max(1, sum(run.calls))
        print(
            f"| {work.name} | {row['path']} | {row['replicas']} | {run.rate:,.0f} | {run.rate / base[key]:.2f}x | "
            f"{' / '.join(str(c) for c in run.calls)} | {cpu_ms:.2f} | {1e3 * run.client_cpu:.2f} | {run.others:.2f} |"
        )
    print("\n## Projection on paper to N machines (not measured)\n")
    print(
        f"Each machine has {CORES_PER_MACHINE} cores running replicas only; per machine: {CORES_PER_MACHINE} / (server CPU s per call) "
        "from the 1-replica round_robin run. The network ceiling is one link's bandwidth, each way, divided by the tensor "
        "bytes of a call (request + result): exact for the balancer's host, whose link carries requests and results "
        "both in and out; conservative by up to 2x for a single client host under round_robin (requests out, results in). "
        "Replicas on their own machines each add a link, so only the host every call passes sets the ceiling.\n"
    )
    head = " | ".join(f"{n} machine{'s' if n > 1 else ''}" for n in MACHINES)
    print(
        f"| workload | bytes / call | {head} | " + " | ".join(f"{b} Gb/s ceiling" for b in BANDWIDTHS_GBIT) + f" | client cores for {MACHINES[-1]} machines |"
    )
    print("|---|---|" + "---|" * (len(MACHINES) + len(BANDWIDTHS_GBIT) + 1))
    for row in rows:
        if row["replicas"] != 1 or row["path"] != "round_robin":
            continue
        work, run = row["work"], row["run"]
        per_machine = CORES_PER_MACHINE * sum(run.calls) / max(1e-9, sum(run.cpu))
        ceilings = [b * 1e9 / 8 / work.wire_bytes for b in BANDWIDTHS_GBIT]
        cells = [f"{min(n * per_machine, max(ceilings)):,.0f}" for n in MACHINES]
        clients = min(MACHINES[-1] * per_machine, max(ceilings)) * run.client_cpu
        ceiling_cells = " | ".join(f"{c:,.0f}/s" for c in ceilings)
        print(f"| {work.name} | {work.wire_bytes / 2**20:.2f} MiB | " + " | ".join(cells) + f" | {ceiling_cells} | {clients:,.0f} |")
    print(
        "\n(machine columns: N x per machine, capped at the 25 Gb/s ceiling; at 10 Gb/s cap at that column instead. "
        "The last column: cores of Python client processes needed to make that many calls, from the client CPU time per call measured here.)"
    )


@dataclass(frozen=True)
class BigJob:
    """One large call for the fan-out figure."""

    name: str
    signal: int
    kernel: int
    method: str


BIG_JOBS = (
    BigJob("compute-bound (1200000 x 2001, direct)", 1_200_000, 2001, "direct"),
    BigJob("FFT (8388608 x 4097, auto)", 8_388_608, 4097, "auto"),
)


def _timed(call: Any, repeats: int) -> float:
    """The median wall time of ``repeats`` calls (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def fanout(repeats: int) -> list[tuple[BigJob, float, float, float, float]]:
    """Per big job: one-shot, tiles=3 over 3 replicas, tiles=3 on 1 replica (median seconds), and the other load (cores)."""
    replicas = [Replica(REPLICA_FLAGS) for _ in range(3)]
    rows = []
    try:
        everyone = "ipv4:" + ",".join(r.target for r in replicas)
        with convserve.Client(everyone, timeout=600) as spread, convserve.Client(replicas[0].target, timeout=600) as single:
            for job in BIG_JOBS:
                rng = np.random.default_rng(0)
                x, k = rng.standard_normal(job.signal), rng.standard_normal(job.kernel)
                np.testing.assert_allclose(spread.convolve(x, k, method=job.method, tiles=3), spread.convolve(x, k, method=job.method), atol=1e-6)
                ours = [os.getpid(), *(r.server.process.pid for r in replicas)]
                ours0, busy0, started = sum(map(cpu_seconds, ours)), machine_busy_seconds(), time.perf_counter()
                one = _timed(lambda: spread.convolve(x, k, method=job.method), repeats)
                three = _timed(lambda: spread.convolve(x, k, method=job.method, tiles=3), repeats)
                local = _timed(lambda: single.convolve(x, k, method=job.method, tiles=3), repeats)
                others = max(0.0, (machine_busy_seconds() - busy0 - (sum(map(cpu_seconds, ours)) - ours0)) / (time.perf_counter() - started))
                print(f"  {job.name}: one-shot {one:.3f} s, tiles=3 x 3 replicas {three:.3f} s, tiles=3 x 1 replica {local:.3f} s", file=sys.stderr, flush=True)
                rows.append((job, one, three, local, others))
    finally:
        for replica in replicas:
            replica.stop()
    return rows


def print_fanout(rows: list[tuple[BigJob, float, float, float, float]], repeats: int) -> None:
    """The fan-out table."""
    print(f"\n## One big job fanned out (median of {repeats} calls; each replica 1 worker, 1 FFT thread; {CORES_PER_MACHINE} cores in all)\n")
    print("| job | one-shot s | tiles=3 over 3 replicas s | speed-up | tiles=3 on 1 replica s | speed-up | other load (cores) |")
    print("|---|---|---|---|---|---|---|")
    for job, one, three, local, others in rows:
        print(f"| {job.name} | {one:.3f} | {three:.3f} | {one / three:.2f}x | {local:.3f} | {one / local:.2f}x | {others:.2f} |")


def main() -> None:
    """Parse the options, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per cell (the median is shown)")
    parser.add_argument("--fanout-only", action="store_true", help="only the fan-out of one big job")
    args = parser.parse_args()
    if not args.fanout_only:
        print_tables(bench(args.seconds, args.repeats), args.seconds, args.repeats)
    print_fanout(fanout(max(3, args.repeats)), max(3, args.repeats))


if __name__ == "__main__":
    main()
