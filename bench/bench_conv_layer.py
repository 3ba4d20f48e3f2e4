"""ConvLayer benchmark: the convserve engine against torch CPU on a fixed, seeded grid of layers.

For each layer (float32, NCHW; the benchmark's seven layers, five more that once missed, and a
seeded grid covering stride, dilation, groups, depthwise, small and large channel counts,
kernels 1 to 15, 1-D to 3-D and batches 1 to 32; 60 in all) it times, in one process:

- ``torch``: ``torch.nn.functional.conv{1,2,3}d`` with ``torch.set_num_threads(2)``;
- ``inline``: ``conv_layer(...)`` with no ``prepared`` store (inline weights: the engine's
  LRU of stores keyed by the weights' digest serves; this is the target);
- ``registered``: ``conv_layer(..., prepared=store)`` with one store reused (registered weights);
- on layers an FFT can compute (groups 1, stride 1, dilation 1, at least 25 taps), two plain
  FFT layer peers with their buffers and weight spectra made ahead: pyFFTW with FFTW_MEASURE
  plans (5-smooth lengths, 2 threads) and ducc0 (``r2c``/``c2r`` at ``good_size`` lengths,
  2 threads), each with one batched ``np.matmul`` per frequency for the channel sums.

Timing: two warm-up calls each, then rounds in which every contender, in a new seeded random
order, makes one untimed call (its threads wake, the previous contender's stop spinning) and
``--burst`` timed calls, whose median is the round's figure. A contender's time is the median of
its rounds; "best" its fastest round. The host's 1-minute load average is printed per layer. Before timing, every layer's output is checked
against torch (1e-5 of the output's peak), and so is a random grid of shapes and options
(padding modes, bias, ReLU, pooling) by the policy's path and by every eligible path forced;
the run exits 1 on a mismatch. It prints per layer the ratio convserve / torch, the geometric
mean, and the misses (over 1.05x).

Usage: ``python bench/bench_conv_layer.py [--rounds 21] [--burst 3] [--paths] [--only A,B] [--json FILE]``,
or ``--quick`` for a sanity run (every 6th layer, 3 rounds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ducc0
import numpy as np
import pyfftw
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "server"))
from convserve_server.engine.fft.sizes import fast_length  # noqa: E402
from convserve_server.engine.layers import policy, prepared  # noqa: E402
from convserve_server.engine.layers.conv_layer import conv_layer, plan_layer  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-5
MISS = 1.05
Fn = Callable[[], Any]


class Layer(NamedTuple):
    """One timed layer: shapes and the convolution's options (``opts``: the keyword arguments)."""

    name: str
    x: tuple[int, ...]
    w: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def opts(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


BENCH_LAYERS = [
    Layer("N8 C64 56x56 K64 3x3 s1 p1", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    Layer("N1 C3 224x224 K64 7x7 s2 p3", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    Layer("N32 C128 28x28 K128 3x3 p1", (32, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    Layer("N1 C16 128x128 K16 15x15 p7", (1, 16, 128, 128), (16, 16, 15, 15), 1, 7),
    Layer("depthwise 3x3 N8 C256 28x28 g256", (8, 256, 28, 28), (256, 1, 3, 3), 1, 1, 1, 256),
    Layer("1x1 N8 C256 28x28 K512", (8, 256, 28, 28), (512, 256, 1, 1)),
    Layer("3-D N1 C8 32^3 K8 3^3 p1", (1, 8, 32, 32, 32), (8, 8, 3, 3, 3), 1, 1),
]
MISSED_LAYERS = [
    Layer("N8 C64 28x28 K64 3x3 p2 d2 g4", (8, 64, 28, 28), (64, 16, 3, 3), 1, 2, 2, 4),
    Layer("N1 C8 96x96 K8 11x11 p5", (1, 8, 96, 96), (8, 8, 11, 11), 1, 5),
    Layer("N2 C64 32x32 K64 3x3 s2 p1", (2, 64, 32, 32), (64, 64, 3, 3), 2, 1),
    Layer("N1 C16 64x64 K32 7x7 p3", (1, 16, 64, 64), (32, 16, 7, 7), 1, 3),
    Layer("N32 C32 16x16 K32 3x3 p1", (32, 32, 16, 16), (32, 32, 3, 3), 1, 1),
]


def layer_grid(count: int = 48, seed: int = 2026) -> list[Layer]:
    """A fixed, seeded grid: every kernel size 1..15, 1-3 spatial dims, stride, dilation, groups, batches 1..32.

    Each layer's multiply-adds are drawn log-uniformly between 3e6 and 2e8 (torch takes about
    0.05-10 ms), the spatial size following from the rest.
    """
    rng = np.random.default_rng(seed)
    kernels = list(range(1, 16)) * 2 + [3] * 10 + [int(k) for k in rng.integers(1, 8, count)]
    layers: list[Layer] = []
    i = 0
    while len(layers) < count:
        nd = (2, 1, 2, 3)[len(layers) % 4]
        k = kernels[i % len(kernels)]
        k = 1 + k % 5 if nd == 3 and k > 5 else k
        n = int(rng.choice([1, 1, 2, 4, 8, 16, 32]))
        kind = rng.choice(["dense", "dense", "dense", "grouped", "depthwise"]) if k > 1 else "dense"
        c_in, c_out, groups = int(rng.choice([1, 3, 8, 16, 32, 64, 128, 256])), int(rng.choice([8, 16, 32, 64, 128, 256])), 1
        if kind == "grouped":
            groups = int(rng.choice([2, 4, 8]))
            c_in, c_out = max(c_in, groups) // groups * groups, max(c_out, groups) // groups * groups
        elif kind == "depthwise":
            groups = c_in = c_out = int(rng.choice([16, 32, 64, 128, 256]))
        stride = int(rng.choice([1, 1, 1, 2, 3])) if k > 1 or rng.random() < 0.3 else 1
        dilation = int(rng.choice([1, 1, 1, 2, 3])) if 1 < k <= 5 else 1
        reach = dilation * (k - 1) + 1
        size = int(round((math.exp(rng.uniform(math.log(3e6), math.log(2e8))) / (n * c_out * (c_in // groups) * k**nd)) ** (1 / nd))) * stride
        size = min(size, {1: 1 << 16, 2: 256, 3: 40}[nd])
        pad = int(rng.choice([0, dilation * (k // 2), dilation * (k // 2)]))
        out = (size + 2 * pad - reach) // stride + 1
        if size < reach + 1 or not 1e6 <= n * c_out * (c_in // groups) * k**nd * out**nd <= 3e8:
            continue
        dims = "x".join([str(size)] * nd) if nd < 3 else f"{size}^3"
        name = f"{nd}-D N{n} C{c_in} {dims} K{c_out} {k}^{nd} s{stride} p{pad} d{dilation} g{groups}"
        layers.append(Layer(name, (n, c_in) + (size,) * nd, (c_out, c_in // groups) + (k,) * nd, stride, pad, dilation, groups))
        i += 1  # a rejected draw retries the same kernel size
    return layers


def all_layers() -> list[Layer]:
    """The benchmark's layers, the five once-missed ones and the seeded grid: 60 layers."""
    return BENCH_LAYERS + MISSED_LAYERS + layer_grid()


def torch_conv(x: Any, w: Any, b: Any = None, **kw: Any) -> Any:
    """``F.conv{1,2,3}d`` by the weight's dimensionality."""
    return {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()](x, w, b, **kw)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Maximum absolute error over the reference's peak."""
    return float(np.max(np.abs(got.astype(np.float64) - want))) / max(float(np.max(np.abs(want))), 1e-30)


def load() -> float:
    """The host's 1-minute load average."""
    return os.getloadavg()[0]


def rounds(fns: dict[str, Fn], count: int, burst: int, seed: int) -> dict[str, tuple[float, float]]:
    """(median, best) seconds of each contender over ``count`` interleaved rounds (see the module docstring)."""
    rng = np.random.default_rng(seed)
    per: dict[str, list[float]] = {k: [] for k in fns}
    for fn in list(fns.values()) * 2:
        fn()
    for _ in range(count):
        for k in rng.permutation(list(fns)):
            fns[k]()
            times = []
            for _ in range(burst):
                t = time.perf_counter()
                fns[k]()
                times.append(time.perf_counter() - t)
            per[k].append(statistics.median(times))
    return {k: (statistics.median(v), min(v)) for k, v in per.items()}


class FFTLayerPeer:
    """A plain FFT layer (zero padding, stride 1): forward transforms of the ``N * C_in`` planes,
    one ``np.matmul`` per frequency with the weight spectra, inverse transforms of the ``N * C_out``
    planes, crop, bias. Buffers, plans and the weight spectra are made ahead (registered weights)."""

    def __init__(self, backend: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, timelimit: float = 10.0) -> None:
        self.backend, self.x, self.b, self.pad = backend, x, b, pad
        n, c_in = x.shape[:2]
        c_out, nd = w.shape[0], w.ndim - 2
        padded = [s + 2 * pad for s in x.shape[2:]]
        size = fast_length if backend == "fftw" else lambda v: int(ducc0.fft.good_size(v, True))
        self.fshape = tuple(size(p) for p in padded)
        self.axes = tuple(range(1, 1 + nd))
        half = self.fshape[:-1] + (self.fshape[-1] // 2 + 1,)
        self.out_sp = tuple(p - k + 1 for p, k in zip(padded, w.shape[2:]))
        self.xbuf = pyfftw.zeros_aligned((n * c_in,) + self.fshape, np.float32)
        self.xspec = pyfftw.empty_aligned((n * c_in,) + half, np.complex64)
        self.yspec = pyfftw.empty_aligned((n * c_out,) + half, np.complex64)
        self.ybuf = pyfftw.empty_aligned((n * c_out,) + self.fshape, np.float32)
        wpad = np.zeros((c_out * c_in,) + self.fshape, np.float32)
        wpad[(slice(None),) + tuple(slice(0, k) for k in w.shape[2:])] = w.reshape((c_out * c_in,) + w.shape[2:])
        ws = np.conj(np.fft.rfftn(wpad, axes=self.axes)).astype(np.complex64) / math.prod(self.fshape)
        self.spectra = np.ascontiguousarray(ws.reshape(c_out, c_in, -1).transpose(2, 1, 0))  # (F, C_in, C_out)
        self.n, self.c_in, self.c_out = n, c_in, c_out
        if backend == "fftw":
            kw: dict[str, Any] = dict(axes=self.axes, flags=("FFTW_MEASURE",), threads=2, planning_timelimit=timelimit)
            self.forward = pyfftw.FFTW(self.xbuf, self.xspec, **kw)
            self.inverse = pyfftw.FFTW(self.yspec, self.ybuf, direction="FFTW_BACKWARD", normalise_idft=False, **kw)
            self.xbuf[...] = 0  # MEASURE planning wrote over the buffer

    def __call__(self) -> np.ndarray:
        """The layer's output ``(N, C_out, *out)``."""
        p, n = self.pad, self.n
        self.xbuf[(slice(None),) + tuple(slice(p, p + s) for s in self.x.shape[2:])] = self.x.reshape((-1,) + self.x.shape[2:])
        if self.backend == "fftw":
            self.forward()
        else:
            ducc0.fft.r2c(self.xbuf, axes=self.axes, out=self.xspec, nthreads=2)
        xf = self.xspec.reshape(n, self.c_in, -1).transpose(2, 0, 1)  # (F, N, C_in)
        yf = np.matmul(xf, self.spectra)  # (F, N, C_out)
        self.yspec.reshape(n, self.c_out, -1)[...] = yf.transpose(1, 2, 0)
        if self.backend == "fftw":
            self.inverse()
        else:
            ducc0.fft.c2r(self.yspec, axes=self.axes, lastsize=self.fshape[-1], forward=False, out=self.ybuf, nthreads=2, allow_overwriting_input=True)
        y = self.ybuf[(slice(None),) + tuple(slice(0, o) for o in self.out_sp)].reshape((n, self.c_out) + self.out_sp)
        return y + self.b.reshape((1, -1) + (1,) * len(self.out_sp))


def fft_peer_eligible(layer: Layer) -> bool:
    """Whether the plain FFT peers compute this layer (groups 1, stride 1, dilation 1, >= 25 taps)."""
    return layer.groups == 1 and layer.stride == 1 and layer.dilation == 1 and math.prod(layer.w[2:]) >= 25


def _torch_layer(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, opts: dict[str, Any]) -> np.ndarray:
    """The torch module semantics (padding_mode, then ReLU and pooling) for ``opts``."""
    nd = w.ndim - 2
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b)
    pad, mode = opts["padding"], opts["padding_mode"]
    kw = dict(stride=opts["stride"], dilation=opts["dilation"], groups=opts["groups"])
    if mode != "zeros" and pad:
        y = torch_conv(F.pad(tx, (pad,) * (2 * nd), mode=mode), tw, tb, padding=0, **kw)
    else:
        y = torch_conv(tx, tw, tb, padding=pad, **kw)
    if opts["activation"] == "relu":
        y = F.relu(y)
    if opts["pool"] is not None:
        y = getattr(F, f"{opts['pool']['kind']}_pool{nd}d")(y, opts["pool"]["kernel_size"], opts["pool"]["kernel_size"], 0)
    return y.numpy()


def random_options(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random layer configurations (shapes and every option) for the correctness check."""
    rng = np.random.default_rng(seed)
    cases: list[dict[str, Any]] = []
    while len(cases) < count:
        nd, groups = int(rng.integers(1, 4)), int(rng.choice([1, 1, 2, 4]))
        c_in, c_out = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 6))
        if rng.random() < 0.2:  # depthwise
            groups = c_in = c_out = int(rng.integers(2, 24))
        big = nd < 3 and rng.random() < 0.3
        k = int(rng.integers(9, 16)) if big else int(rng.choice([1, 2, 3, 5]))
        size, n = int(rng.integers(k + 4, {1: 300, 2: 48, 3: 14}[nd])), int(rng.integers(1, 4))
        stride, dilation = (1, 1) if big else (int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2])))
        pad = int(rng.integers(0, k))
        mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
        if dilation * (k - 1) + 1 > size or (mode == "reflect" and pad >= size):
            continue
        pool = {"kind": str(rng.choice(["max", "avg"])), "kernel_size": 2} if rng.random() < 0.3 else None
        opts = dict(
            stride=stride, padding=pad, dilation=dilation, groups=groups, padding_mode=mode, activation="relu" if rng.random() < 0.5 else None, pool=pool
        )
        cases.append(dict(x=(n, c_in) + (size,) * nd, w=(c_out, c_in // groups) + (k,) * nd, bias=bool(rng.random() < 0.7), opts=opts))
    return cases


def check_correctness(count: int) -> tuple[float, int, dict[str, int]]:
    """Check random option configurations against torch by every path; return (worst, checks, per path)."""
    rng = np.random.default_rng(1)
    worst, checks, per_path = 0.0, 0, {p: 0 for p in policy.PATHS}
    for cfg in random_options(count):
        x, w = rng.standard_normal(cfg["x"]).astype(np.float32), rng.standard_normal(cfg["w"]).astype(np.float32)
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
            checks, worst = checks + 1, max(worst, err)
            per_path[info.method] += 1
            if err > TOL:
                raise AssertionError(f"{info.method} (asked {path}) error {err:.3g} > {TOL} for {cfg}")
    return worst, checks, per_path


def _forced(x: np.ndarray, w: np.ndarray, b: np.ndarray, path: str, store: dict[Any, Any], opts: dict[str, Any]) -> Fn:
    """One forced path of the engine with the registered weights' store."""
    return lambda: conv_layer(x, w, b, path=path, prepared=store, **opts)


def time_layer(layer: Layer, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Check one layer against torch, then time every contender; return its row."""
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(shape).astype(np.float32) for shape in (layer.x, layer.w, layer.w[:1]))
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    want = torch_conv(tx, tw, tb, **layer.opts).numpy()
    prepared.clear()
    t0 = time.perf_counter()
    got = conv_layer(x, w, b, **layer.opts)  # first call of a new shape and new weights
    first = time.perf_counter() - t0
    path = plan_layer(x, w, b, **layer.opts).path
    store: dict[Any, Any] = {}
    fns: dict[str, Fn] = {
        "torch": lambda: torch_conv(tx, tw, tb, **layer.opts),
        "inline": lambda: conv_layer(x, w, b, **layer.opts),
        "registered": lambda: conv_layer(x, w, b, prepared=store, **layer.opts),
    }
    errors = {"inline": rel_err(got, want)}
    if fft_peer_eligible(layer):
        for backend in ("fftw", "ducc0"):
            peer = FFTLayerPeer(backend, x, w, b, layer.padding)
            errors[backend] = rel_err(peer(), want)
            fns[backend] = peer
    if args.paths:
        for forced in policy.PATHS:
            try:
                errors[forced] = rel_err(conv_layer(x, w, b, path=forced, **layer.opts), want)
            except Exception:
                continue
            fns[f"path:{forced}"] = _forced(x, w, b, forced, store, layer.opts)
    if any(e > TOL for e in errors.values()):
        raise AssertionError(f"{layer.name}: error over {TOL} against torch: {errors}")
    before = load()
    med = rounds(fns, args.rounds, args.burst, seed)
    row: dict[str, Any] = dict(layer=layer.name, path=path, first_ms=first * 1e3, load=(before + load()) / 2)
    row.update({f"{k}_ms": v[0] * 1e3 for k, v in med.items()})
    row.update({f"best_{k}_ms": v[1] * 1e3 for k, v in med.items()})
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of medians and ratios, then the geometric means and the misses."""
    lines = [
        "| # | layer | path | torch ms | inline ms | registered ms | inline / torch | registered / torch | best inline / torch "
        "| FFTW MEASURE ms | ducc0 ms | first call ms | load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        t = r["torch_ms"]
        peers = [f"{r[k]:.2f}" if k in r else "-" for k in ("fftw_ms", "ducc0_ms")]
        lines.append(
            f"| {i} | {r['layer']} | {r['path']} | {t:.2f} | {r['inline_ms']:.2f} | {r['registered_ms']:.2f} | {r['inline_ms'] / t:.2f} "
            f"| {r['registered_ms'] / t:.2f} | {r['best_inline_ms'] / r['best_torch_ms']:.2f} | {peers[0]} | {peers[1]} | {r['first_ms']:.1f} | {r['load']:.2f} |"
        )
    extra = sorted({k for r in rows for k in r if k.startswith("path:")})
    if extra:
        lines += ["", "| # | " + " | ".join(f"{k[:-3]} ms (/torch)" for k in extra) + " |", "|---:|" + "---:|" * len(extra)]
        for i, r in enumerate(rows, 1):
            lines.append(f"| {i} | " + " | ".join(f"{r[k]:.2f} ({r[k] / r['torch_ms']:.2f})" if k in r else "-" for k in extra) + " |")
    inline = [r["inline_ms"] / r["torch_ms"] for r in rows]
    registered = [r["registered_ms"] / r["torch_ms"] for r in rows]
    best = [r["best_inline_ms"] / r["best_torch_ms"] for r in rows]
    misses = [f"#{i} {r['layer']} ({v:.2f})" for i, (r, v) in enumerate(zip(rows, inline), 1) if v > MISS]
    gm = statistics.geometric_mean
    lines.append(f"\nGeometric mean convserve / torch: inline {gm(inline):.3f}, registered {gm(registered):.3f}, best rounds {gm(best):.3f}.")
    lines.append(f"Misses (inline over {MISS}x): {len(misses)} of {len(rows)}" + (": " + "; ".join(misses) if misses else ""))
    return "\n".join(lines)


def main() -> int:
    """Run the correctness checks and the timing; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21, help="interleaved timed rounds per layer (default 21)")
    ap.add_argument("--burst", type=int, default=3, help="timed calls per contender and round (default 3)")
    ap.add_argument("--grid", type=int, default=60, help="random option configurations checked against torch first")
    ap.add_argument("--paths", action="store_true", help="also time every eligible path forced")
    ap.add_argument("--quick", action="store_true", help="a sanity run: every 6th layer, 3 rounds, 6 random checks")
    ap.add_argument("--only", help="time only layers whose name contains one of these (comma-separated)")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args()
    layers = all_layers()
    if args.quick:
        layers, args.rounds, args.burst, args.grid = layers[::6], 3, 2, 6
    if args.only:
        layers = [layer for layer in layers if any(part in layer.name for part in args.only.split(","))]
    started = time.perf_counter()
    worst, checks, per_path = check_correctness(args.grid)
    rows = []
    for i, layer in enumerate(layers):
        rows.append(time_layer(layer, args, seed=i))
        print(f"  {layer.name}: " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in rows[-1].items() if k[-3:] == "_ms" and k[:4] != "best"), file=sys.stderr)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"ConvLayer against torch, {now}, nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, ducc0 {ducc0.__version__}, median of {args.rounds} interleaved rounds (each the median of "
        f"{args.burst} calls after one untimed call), float32, {time.perf_counter() - started:.0f} s\n"
    )
    print(table(rows))
    print(f"\nCorrectness vs torch (float32): {checks} option checks ({', '.join(f'{k} {v}' for k, v in per_path.items())}), worst {worst:.2e} of the peak: OK")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(date=now, nproc=os.cpu_count(), rows=rows, worst=worst, checks=checks), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
