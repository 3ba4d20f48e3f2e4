"""Which ConvLayer path runs: a deterministic choice from the layer's shapes, dtype and options.

The paths (each in its own module):

``onnxruntime``
    ONNX Runtime's MLAS kernels (:mod:`.onnx`); float32 only; any layer.
``fft``
    FFTW with cached weight spectra (:mod:`.fft`, sized by :mod:`.tiling`); ``groups == 1``,
    dilation 1, stride 1.
``pointwise``
    1x1 kernels with ``groups == 1`` as one matrix product per batch item (:mod:`.gemm`).
``depthwise``
    ``groups == C_in == C_out``, accumulated tap by tap (:mod:`.depthwise`).
``im2col_gemm``
    im2col and one batched matrix product (:mod:`.gemm`); any layer, any float dtype.

(Module references here are relative to :mod:`convserve_server.engine.layers`.)

The choice depends only on the shapes, the dtype and the options (and on whether ONNX Runtime
is installed), never on what happens to be cached, so it is the same for every call of a layer.
The rules, and the measurements behind them, are in ``docs/conv_layer.md``:

1. Tiny problems (fewer than :data:`SMALL_MACS` multiply-adds) stay in numpy, where a call
   costs tens of microseconds and float32 is accumulated in float64.
2. Large kernels go to ``fft`` where its estimated cost (transforms plus the per-frequency
   channel products) is below :data:`FFT_ADVANTAGE` of the direct multiply-adds' cost.
3. Other float32 layers go to ``onnxruntime`` when it is installed (a 1-D layer as a 2-D one of
   height 1, :func:`.onnx.lift_1d`; a grouped 2-D layer with a large kernel as one dense convolution
   per group, :func:`.onnx.split_groups`).
4. Otherwise (float64, or no ONNX Runtime) the numpy path that fits the shape:
   ``pointwise``, ``depthwise`` or ``im2col_gemm``.

The only data-dependent exception: ``fft`` needs a finite input (a NaN or Inf would spread over
the whole output), so a non-finite input takes the rule-3/4 path instead; that is the caller's
job (:func:`fallback`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from convserve_server.engine.layers import onnx
from convserve_server.engine.layers.tiling import plan_tiles
from convserve_server.engine.signal import cost_model

PATHS: tuple[str, ...] = ("onnxruntime", "fft", "pointwise", "depthwise", "im2col_gemm")
# Below this many multiply-adds a call stays in numpy (ONNX Runtime's per-call cost and a
# session per shape don't pay off).
SMALL_MACS = 1 << 16
# FFT is chosen when its modelled cost is below this fraction of the direct cost.
FFT_ADVANTAGE = 0.7
# Seconds per multiply-add of the direct computation (ONNX Runtime / MLAS float32), measured on
# the 2-core benchmark host with bench/bench_conv_layer.py; only its ratio to the FFT model's
# constants (in :mod:`.tiling`) matters for the choice. ``convserve calibrate`` measures both on
# the host: the cost model's constants ``layer_direct_per_mac`` and ``layer_fft_scale`` (a factor
# on :func:`.tiling.plan_tiles`' seconds) then replace these defaults.
DIRECT_PER_MAC = cost_model.DEFAULTS["layer_direct_per_mac"]  # 1 / 80e9
# Cost factor of MLAS's direct convolution outside its blocked-channel kernels (see :func:`direct_cost`).
DIRECT_SLOW = 3.0
# Distinct layer problems whose choice is remembered (least recently used dropped).
MAX_CHOICES = 4096


@dataclass(frozen=True)
class Problem:
    """The shape of one validated layer call (what the policy may look at).

    Attributes
    ----------
    dtype : str
        ``"float32"`` or ``"float64"``.
    n, c_in, c_out, groups : int
        Batch, channels and channel groups.
    kernel, strides, dilations, padded, out_spatial : tuple of int
        Per spatial dimension; ``padded`` is the padded input's spatial shape.
    """

    dtype: str
    n: int
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    padded: tuple[int, ...]
    out_spatial: tuple[int, ...]

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct computation."""
        return self.n * self.c_out * math.prod(self.out_spatial) * (self.c_in // self.groups) * math.prod(self.kernel)


def eligible(path: str, p: Problem) -> bool:
    """Whether ``path`` can compute problem ``p`` at all (``im2col_gemm`` always can)."""
    if path == "onnxruntime":
        return p.dtype == "float32" and onnx.available()
    if path == "fft":
        return p.groups == 1 and all(d == 1 for d in p.dilations) and all(s == 1 for s in p.strides)
    if path == "pointwise":
        return p.groups == 1 and all(k == 1 for k in p.kernel)
    if path == "depthwise":
        return p.groups == p.c_in == p.c_out
    return path == "im2col_gemm"


def layer_constants() -> tuple[float, float]:
    """(seconds per direct multiply-add, factor on the modelled FFT seconds) in force: the host's calibration, else the defaults."""
    c = cost_model.constants()
    return c["layer_direct_per_mac"], c["layer_fft_scale"]


def fft_cost(p: Problem) -> float:
    """Modelled seconds of the ``fft`` path, whole or tiled (see :func:`.tiling.plan_tiles`).

    The channel products read the whole weight spectrum (``C_in * C_out`` complex values per
    frequency), so with a small batch they are bound by memory bandwidth, not by arithmetic;
    tiling trades more transform work for a spectrum small enough to stay in cache.
    """
    return plan_tiles(p.padded, p.kernel, p.n, p.c_in, p.c_out)[1] * layer_constants()[1]


def direct_cost(p: Problem) -> float:
    """Modelled seconds of the direct (GEMM) computation.

    MLAS runs a layer in its blocked-channel (NCHWc) kernels when each group's output channels
    are a multiple of 16; otherwise through im2col and a GEMM with few rows, :data:`DIRECT_SLOW`
    times slower per multiply-add (measured: 82 against 9-16 ps per multiply-add on 11x11 C8 96x96
    and on 7x7 / 13x13 / 15x15 layers of 16 to 64 output channels).
    """
    slow = DIRECT_SLOW if (p.c_out // p.groups) % 16 else 1.0
    return p.macs * layer_constants()[0] * slow


def numpy_path(p: Problem) -> str:
    """The numpy path for ``p``: ``pointwise``, ``depthwise`` or ``im2col_gemm``."""
    if eligible("pointwise", p):
        return "pointwise"
    if eligible("depthwise", p):
        return "depthwise"
    return "im2col_gemm"


def fallback(p: Problem) -> str:
    """The path rule 3 or 4 picks (used when ``fft`` meets a non-finite input)."""
    if p.macs >= SMALL_MACS and eligible("onnxruntime", p):
        return "onnxruntime"
    return numpy_path(p)


def choose(p: Problem) -> str:
    """Return the path for problem ``p`` (deterministic; see the module docstring).

    Memoised by the problem, whether ONNX Runtime is usable and the constants in force, so a
    repeated layer pays one dictionary lookup.
    """
    return _choose_memo(p, onnx.available(), layer_constants())


@functools.lru_cache(maxsize=MAX_CHOICES)
def _choose_memo(p: Problem, ort: bool, constants: tuple[float, float]) -> str:
    """:func:`choose` for one key (``ort`` and ``constants`` only key the memo: the rules read them)."""
    if p.macs < SMALL_MACS:
        return numpy_path(p)
    if eligible("fft", p) and math.prod(p.kernel) >= 25 and fft_cost(p) < FFT_ADVANTAGE * direct_cost(p):
        return "fft"
    return fallback(p)
