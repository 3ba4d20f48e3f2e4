"""ConvLayer benchmark: torch vs a numpy im2col baseline vs the convserve engine, in one run.

For each layer (float32, NCHW) it times, side by side in one process and round-robin (so that
the noise of a shared 2-core host falls on every peer alike):

- ``torch``: ``torch.nn.functional.conv{1,2,3}d`` on the CPU with ``torch.set_num_threads(2)``;
- ``numpy``: the im2col + ``np.matmul`` baseline (what the engine used to be);
- ``engine``: ``conv_layer(...)`` in-process, no ``prepared`` store (a cold weights object
  every call; ONNX Runtime sessions then come from the module cache keyed by a weight digest);
- ``warm``: ``conv_layer(..., prepared=store)`` with one store reused (registered weights).

Each timed call follows a short sleep (``--gap``, 150 ms) so that no peer pays for the previous
one's spinning worker threads.

It prints a Markdown table with medians, ratios to torch and the path the policy chose, and
the engine's first-call time (session / spectra / plan creation). ``--paths`` also times every
eligible path forced, and the alternatives considered: OpenCV ``filter2D`` per channel for the
depthwise layer, and OpenVINO (oneDNN) running the same ONNX model when ``openvino`` is
installed (it is not a dependency: ``pip install openvino`` to include it).

Before timing it checks correctness against torch: every benchmark layer, and a randomized grid
of shapes and options (1-3 spatial dims, stride, dilation, groups, padding modes, bias, ReLU,
pooling), by the policy's path and by every eligible path forced. The maximum error relative to
the output's peak must be at most 1e-5 (float32). The run fails (exit 1) otherwise.

Usage::

    pip install -e ".[server,bench]"        # torch==2.13.0 is a bench extra only
    python bench/bench_conv_layer.py [--repeat 15] [--paths] [--grid 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from convserve_server.engine.layers import onnx_model, policy
from convserve_server.engine.layers.conv_layer import conv_layer

torch.set_num_threads(2)

# name, input shape, weight shape, stride, padding, groups
LAYERS: list[tuple[str, tuple[int, ...], tuple[int, ...], int, int, int]] = [
    ("N8 C64 56x56 K64 3x3 s1 p1", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("N1 C3 224x224 K64 7x7 s2 p3", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1),
    ("N32 C128 28x28 K128 3x3 p1", (32, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1),
    ("N1 C16 128x128 K16 15x15 p7", (1, 16, 128, 128), (16, 16, 15, 15), 1, 7, 1),
    ("depthwise 3x3 N8 C256 28x28 g256", (8, 256, 28, 28), (256, 1, 3, 3), 1, 1, 256),
    ("1x1 N8 C256 28x28 K512", (8, 256, 28, 28), (512, 256, 1, 1), 1, 0, 1),
    ("3-D N1 C8 32^3 K8 3^3 p1", (1, 8, 32, 32, 32), (8, 8, 3, 3, 3), 1, 1, 1),
]
TOL = 1e-5


def torch_conv(x: Any, w: Any, b: Any = None, **kw: Any) -> Any:
    """``F.conv{1,2,3}d`` by the weight's dimensionality."""
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return fn(x, w, b, **kw)


def numpy_im2col(x: np.ndarray, w: np.ndarray, stride: int, padding: int, groups: int) -> np.ndarray:
    """The baseline: zero pad, im2col by ``sliding_window_view``, one batched ``np.matmul``."""
    nd = w.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(padding, padding)] * nd)
    kernel = w.shape[2:]
    win = sliding_window_view(xp, kernel, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + (slice(None, None, stride),) * nd]
    n, c = x.shape[:2]
    out_sp = win.shape[2 : 2 + nd]
    cg, k = c // groups, w.shape[0]
    win = win.reshape((n, groups, cg) + out_sp + kernel)
    perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    cols = win.transpose(perm).reshape(groups, -1, cg * int(np.prod(kernel)))
    out = np.matmul(cols, w.reshape(groups, k // groups, -1).transpose(0, 2, 1))
    out = out.reshape((groups, n) + out_sp + (k // groups,))
    return np.ascontiguousarray(out.transpose((1, 0, 2 + nd) + tuple(range(2, 2 + nd))).reshape((n, k) + out_sp))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Maximum absolute error over the reference's peak."""
    peak = max(float(np.max(np.abs(want))), 1e-30)
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) / peak


def round_robin(fns: dict[str, Callable[[], Any]], repeat: int, gap: float) -> dict[str, tuple[float, float]]:
    """(median, best) seconds of each function, run in turn (one warm-up each first).

    ``gap`` seconds of sleep before each timed call let the previous peer's worker threads stop
    spinning: torch's OpenMP, OpenBLAS and ONNX Runtime workers all busy-wait for a while after
    a parallel section, and on 2 cores that halves the speed of whatever runs next (measured:
    torch 67 ms right after an ONNX Runtime call, 39 ms after a 50 ms gap). OpenBLAS's workers
    spin for about 2^28 cycles (~0.1 s): with a 50 ms gap whatever ran after the numpy baseline
    was still 11 ms slower on the first layer, hence 150 ms by default.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if gap:
                time.sleep(gap)
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


# --------------------------------------------------------------------------- correctness


def _torch_layer(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, opts: dict[str, Any]) -> np.ndarray:
    """The torch module semantics (padding_mode, then ReLU and pooling) for ``opts``."""
    nd = w.ndim - 2
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    pad, mode = opts["padding"], opts["padding_mode"]
    kw = dict(stride=opts["stride"], dilation=opts["dilation"], groups=opts["groups"])
    if mode != "zeros" and pad:
        tx = F.pad(tx, (pad,) * (2 * nd), mode=mode)
        y = torch_conv(tx, tw, tb, padding=0, **kw)
    else:
        y = torch_conv(tx, tw, tb, padding=pad, **kw)
    if opts["activation"] == "relu":
        y = F.relu(y)
    pool = opts["pool"]
    if pool is not None:
        fn = getattr(F, f"{pool['kind']}_pool{nd}d")
        y = fn(y, pool["kernel_size"], pool["kernel_size"], 0)
    return y.numpy()


def random_grid(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random layer configurations (shapes and options) for the correctness check."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd = int(rng.integers(1, 4))
        groups = int(rng.choice([1, 1, 2, 4]))
        depthwise = rng.random() < 0.2
        c_in = groups * int(rng.integers(1, 6))
        c_out = groups * int(rng.integers(1, 6))
        if depthwise:
            groups = c_in = c_out = int(rng.integers(2, 24))
        big = nd < 3 and rng.random() < 0.3
        k = int(rng.integers(9, 16)) if big else int(rng.choice([1, 2, 3, 5]))
        size = int(rng.integers(k + 4, {1: 300, 2: 48, 3: 14}[nd]))
        n = int(rng.integers(1, 4))
        stride = 1 if big else int(rng.choice([1, 1, 2]))
        dilation = 1 if big else int(rng.choice([1, 1, 2]))
        if dilation * (k - 1) + 1 > size:
            continue
        pad = int(rng.integers(0, k))
        mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
        if mode == "reflect" and pad >= size:
            continue
        pool = {"kind": str(rng.choice(["max", "avg"])), "kernel_size": 2} if rng.random() < 0.3 else None
        cases.append(
            dict(
                x=(n, c_in) + (size,) * nd,
                w=(c_out, c_in // groups) + (k,) * nd,
                bias=bool(rng.random() < 0.7),
                opts=dict(
                    stride=stride,
                    padding=pad,
                    dilation=dilation,
                    groups=groups,
                    padding_mode=mode,
                    activation="relu" if rng.random() < 0.5 else None,
                    pool=pool,
                ),
            )
        )
    return cases


def check_correctness(grid: int) -> tuple[float, int, dict[str, int]]:
    """Check the benchmark layers and a random grid against torch; return (worst, checks, per path)."""
    rng = np.random.default_rng(1)
    worst, checks, per_path = 0.0, 0, {p: 0 for p in policy.PATHS}
    configs = [
        dict(x=xs, w=ws, bias=True, opts=dict(stride=s, padding=p, dilation=1, groups=g, padding_mode="zeros", activation=None, pool=None))
        for _, xs, ws, s, p, g in LAYERS
    ]
    for cfg in configs + random_grid(grid):
        x = rng.standard_normal(cfg["x"]).astype(np.float32)
        w = rng.standard_normal(cfg["w"]).astype(np.float32)
        b = rng.standard_normal(cfg["w"][0]).astype(np.float32) if cfg["bias"] else None
        want = _torch_layer(x, w, b, cfg["opts"])
        for path in ("auto",) + policy.PATHS:
            try:
                got, info = conv_layer(x, w, b, return_info=True, path=path, **cfg["opts"])
            except Exception as exc:  # an ineligible forced path
                if path == "auto" or "cannot compute" not in str(exc):
                    raise
                continue
            err = rel_err(got, want)
            checks += 1
            per_path[info.method] += 1
            worst = max(worst, err)
            if err > TOL:
                raise AssertionError(f"{info.method} (asked {path}) error {err:.3g} > {TOL} for {cfg}")
    return worst, checks, per_path


# --------------------------------------------------------------------------- timing


def bench(repeat: int, paths: bool, gap: float) -> list[dict[str, Any]]:
    """Time every layer; return one row per layer."""
    rng = np.random.default_rng(0)
    rows = []
    for name, xs, ws, s, p, g in LAYERS:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        opts = dict(stride=s, padding=p, groups=g)
        t0 = time.perf_counter()
        _, info = conv_layer(x, w, b, return_info=True, **opts)  # first call: builds sessions/plans
        first = time.perf_counter() - t0
        store: dict[Any, Any] = {}
        fns: dict[str, Callable[[], Any]] = {
            "torch": lambda: torch_conv(tx, tw, tb, **opts),
            "numpy": lambda: numpy_im2col(x, w, s, p, g) + b.reshape((1, -1) + (1,) * (x.ndim - 2)),
            "engine": lambda: conv_layer(x, w, b, **opts),
            "warm": lambda: conv_layer(x, w, b, prepared=store, **opts),
        }
        if paths:
            for path in policy.PATHS:
                try:
                    conv_layer(x, w, b, path=path, **opts)
                except Exception:
                    continue
                fns[f"path:{path}"] = lambda path=path: conv_layer(x, w, b, path=path, prepared=store, **opts)
            if g == xs[1] == ws[0] and x.ndim == 4:
                import cv2  # the depthwise alternative considered: OpenCV filter2D per channel

                def cv2_depthwise() -> np.ndarray:
                    xp = np.pad(x, [(0, 0), (0, 0), (p, p), (p, p)])
                    out = np.empty((xs[0], ws[0], xs[2], xs[3]), np.float32)
                    for i in range(xs[0]):
                        for c in range(xs[1]):
                            full = cv2.filter2D(xp[i, c], -1, w[c, 0], anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
                            out[i, c] = full[: xs[2], : xs[3]] + b[c]
                    return out

                fns["alt:cv2_filter2D"] = cv2_depthwise
            openvino = _openvino_peer(x, w, b, s, p, g)
            if openvino is not None:
                fns["alt:openvino"] = openvino
        med = round_robin(fns, repeat, gap)
        row: dict[str, Any] = dict(layer=name, path=info.method, first_ms=first * 1e3)
        row.update({f"{k}_ms": v[0] * 1e3 for k, v in med.items()})
        row.update({f"best_{k}_ms": v[1] * 1e3 for k, v in med.items()})
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {v[0] * 1e3:.2f}" for k, v in med.items()) + f" ms; path {info.method}", file=sys.stderr, flush=True)
    return rows


def _openvino_peer(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: int, p: int, g: int) -> Callable[[], Any] | None:
    """The same ONNX model compiled by OpenVINO (oneDNN) on 2 threads, if openvino is installed."""
    try:
        import openvino
    except ImportError:
        return None
    import tempfile

    nd = w.ndim - 2
    model = onnx_model.conv_model_bytes(x.shape, w, b, (s,) * nd, [(p, p)] * nd, (1,) * nd, g, False)
    with tempfile.NamedTemporaryFile(suffix=".onnx") as fh:
        fh.write(model)
        fh.flush()
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(fh.name), "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    want = torch_conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=s, padding=p, groups=g).numpy()
    got = request.infer({0: x})[0]
    assert rel_err(got, want) <= TOL, "openvino disagrees with torch"
    return lambda: request.infer({0: x})


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of medians and ratios."""
    lines = [
        "| layer | path chosen | torch ms | numpy im2col ms | engine ms | engine warm ms | warm / torch | engine / torch "
        "| numpy / torch | best: torch / warm ms (ratio) | first call ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["torch_ms"]
        lines.append(
            f"| {r['layer']} | {r['path']} | {t:.2f} | {r['numpy_ms']:.2f} | {r['engine_ms']:.2f} | {r['warm_ms']:.2f} "
            f"| {r['warm_ms'] / t:.2f} | {r['engine_ms'] / t:.2f} | {r['numpy_ms'] / t:.2f} "
            f"| {r['best_torch_ms']:.2f} / {r['best_warm_ms']:.2f} ({r['best_warm_ms'] / r['best_torch_ms']:.2f}) | {r['first_ms']:.1f} |"
        )
    extra = sorted({k for r in rows for k in r if k.startswith(("path:", "alt:"))})  # medians
    if extra:
        lines += ["", "| layer | " + " | ".join(f"{k[:-3]} ms (/torch)" for k in extra) + " |", "|---|" + "---:|" * len(extra)]
        for r in rows:
            cells = [f"{r[k]:.2f} ({r[k] / r['torch_ms']:.2f})" if k in r else "-" for k in extra]
            lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    """Run the correctness check and the timing; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds per layer (default 15)")
    ap.add_argument("--grid", type=int, default=60, help="random configurations checked against torch")
    ap.add_argument("--paths", action="store_true", help="also time every eligible path forced, and alternatives")
    ap.add_argument("--gap", type=float, default=0.15, help="seconds of sleep before each timed call (default 0.15)")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args()
    worst, checks, per_path = check_correctness(args.grid)
    rows = bench(args.repeat, args.paths, args.gap)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"ConvLayer benchmark, {now}, nproc {os.cpu_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, median of {args.repeat} round-robin rounds "
        f"({args.gap * 1e3:.0f} ms settle gap before each call), float32 NCHW\n"
    )
    print(table(rows))
    print(
        f"\nCorrectness vs torch.nn.functional (float32): {checks} checks "
        f"({', '.join(f'{k} {v}' for k, v in per_path.items())}), worst error {worst:.2e} of the output's peak "
        f"(limit {TOL:g}): OK"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(date=now, nproc=os.cpu_count(), rows=rows, worst=worst, checks=checks), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
