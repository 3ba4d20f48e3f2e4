"""The ``fft`` path's transform sizes: whole input or overlap-save tiles, by a cost model.

:func:`plan_tiles` picks the transform size per spatial dimension that the ``fft`` ConvLayer
path (:mod:`convserve_server.engine.layers.fft`) uses, and returns its modelled seconds, which
the path policy (:mod:`convserve_server.engine.layers.policy`) compares with the direct cost.
Both import it from here; the measured constants of the model live here too.
"""

from __future__ import annotations

import math

from convserve_server.engine.fft.sizes import fast_length

# Cost model constants (seconds per unit), measured on the 2-core benchmark host with
# bench/bench_conv_layer.py; only their ratios matter for the choice.
FFT_PER_POINT_LOG = 1.0 / 3e9  # one real FFT point times log2(size)
CMAC = 1.0 / 6e9  # one complex multiply-add of the batched per-frequency matmul
SPECTRA_BYTE = 1.0 / 6e9  # reading the weight spectra from memory (bound when N is small)
CACHED_BYTE = 1.0 / 30e9  # reading a spectrum small enough to stay in cache
# The path's fixed cost per call (plan checkouts, padding, the Python around three stages).
# Measured: N2 C8 16x16 K64 13x13 took 0.77 ms against 0.51 modelled without it.
FFT_CALL = 2e-4

# Weight spectra up to this many bytes are read from cache, beyond it from memory.
CACHED_SPECTRA_BYTES = 4 << 20
# Tiling is considered only when the whole input's spectrum is larger than this. Measured:
# tiles ran 1.4x slower than the whole transform with a 21.5 MB spectrum (C16, 15x15 on
# 142^2: the tile copies and extra transforms cost more than the bandwidth saved), and 2-3x
# faster with 69-87 MB ones (C64, 7x7 and 11x11 on 56^2).
TILE_MIN_SPECTRA_BYTES = 32 << 20


def transform_shape(padded: tuple[int, ...]) -> tuple[int, ...]:
    """The FFT size per spatial dimension for a padded input of spatial shape ``padded``."""
    return tuple(fast_length(p) for p in padded)


def plan_tiles(padded: tuple[int, ...], kernel: tuple[int, ...], n: int, c_in: int, c_out: int) -> tuple[tuple[int, ...], float]:
    """The cheapest transform size per dimension (whole input or tiles) and its modelled seconds.

    Candidates: 5-smooth sizes from twice the kernel up to the whole padded input (only the
    whole input when its weight spectrum is at most 32 MB). Cost:
    transforms (``N * tiles * (C_in + C_out)`` real FFTs) plus the per-frequency products,
    bound by arithmetic or by reading the weight spectrum (from cache when it is small).
    """
    whole = transform_shape(padded)
    best: tuple[tuple[int, ...], float] | None = None
    whole_half = math.prod(whole) // whole[-1] * (whole[-1] // 2 + 1)
    candidate = fast_length(2 * max(kernel)) if c_in * c_out * whole_half * 8 > TILE_MIN_SPECTRA_BYTES else max(whole)
    while True:
        sizes = tuple(min(max(candidate, fast_length(2 * k)), f) for k, f in zip(kernel, whole))
        counts = [1 if t >= f else -(-(p - k + 1) // (t - k + 1)) for t, f, p, k in zip(sizes, whole, padded, kernel)]
        batch = n * math.prod(counts)
        points = math.prod(sizes)
        half = points // sizes[-1] * (sizes[-1] // 2 + 1)
        transforms = batch * (c_in + c_out) * points * math.log2(max(points, 2)) * FFT_PER_POINT_LOG
        spectra_bytes = c_in * c_out * half * 8
        byte_cost = CACHED_BYTE if spectra_bytes <= CACHED_SPECTRA_BYTES else SPECTRA_BYTE
        cost = FFT_CALL + transforms + max(batch * c_in * c_out * half * CMAC, spectra_bytes * byte_cost)
        if all(t >= f for t, f in zip(sizes, whole)):
            if spectra_bytes <= TILE_MIN_SPECTRA_BYTES or best is None or cost < best[1]:
                return sizes, cost
            return best
        if best is None or cost < best[1]:
            best = (sizes, cost)
        candidate = fast_length(candidate + 1)
