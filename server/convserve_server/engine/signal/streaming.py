"""Streaming convolution of an unbounded signal with a fixed kernel, block by block.

Floating-point signals use uniformly partitioned overlap-save (UPOLS): the kernel is cut into
partitions of the internal block size B, each transformed once; every B input samples cost one
forward and one inverse real FFT of size 2B plus one multiply-add per partition and bin, so a
48,000-tap kernel stays cheap with 1,024-sample blocks. Integer signals are convolved exactly
(direct sums over the carried history, in the accumulator the unary path would choose: the
same worst-case bound, OUT_OF_RANGE and 1-tap rules as ``engine.convolve``). Blocks of any length go in; output comes out as
soon as whole internal blocks are complete, and :meth:`StreamConvolver.close` delivers the rest:
concatenated, the outputs equal the ``full`` convolution of the whole signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation
from convserve_server.engine.signal import integers
from convserve_server.engine.errors import InvalidArgumentError, OutOfRangeError
from convserve_server.engine.info import has_nonfinite
from convserve_server.engine.signal.options import SUPPORTED_DTYPES, normalize_output_dtype

MIN_BLOCK = 256
MAX_BLOCK = 1 << 16


class StreamConvolver:
    """Convolve a stream of blocks with ``kernel``.

    Parameters
    ----------
    kernel : array_like
        ``(M,)`` for every channel, or ``(M, C)`` with one column per channel.
    output_dtype : dtype, optional
        Result type (default: ``numpy.result_type`` of the blocks and the kernel).
    block_size : int, optional
        Internal partition size B (default: a power of two near the kernel's square root, at least 256).
    """

    def __init__(self, kernel: npt.ArrayLike, output_dtype: Any = None, block_size: int | None = None) -> None:
        h = np.asarray(kernel)
        if h.dtype not in SUPPORTED_DTYPES or h.dtype.kind == "c":
            raise InvalidArgumentError("kernel", f"dtype {h.dtype} is not supported for streaming; use a real dtype")
        if h.ndim not in (1, 2) or h.shape[0] == 0 or h.size == 0:
            raise InvalidArgumentError("kernel", f"expected shape (M,) or (M, C) with M >= 1; got {h.shape}")
        self.kernel = h
        self.output_dtype_request = output_dtype
        self.taps = h.shape[0]
        self.block = block_size or int(min(MAX_BLOCK, max(MIN_BLOCK, 4 * (1 << int(np.ceil(np.log2(np.sqrt(self.taps))))))))
        self.channels: int | None = None  # None until the first block: () for 1-D blocks, else C
        self.dtype: np.dtype[Any] | None = None
        self.out_dtype: np.dtype[Any] = np.dtype(np.float64)
        self.exact = False
        self._pending: npt.NDArray[Any] = np.zeros((1, 0))
        self._received = 0
        self._emitted = 0
        self._warnings: list[str] = []
        self._low = 0  # running range of the exact outputs (to name a holder dtype)
        self._high = 0
        self._sum_h: npt.NDArray[Any] = np.zeros(1)

    # -- set-up on the first block ---------------------------------------------------------
    def _start(self, block: npt.NDArray[Any]) -> None:
        self.dtype = block.dtype
        self.channels = None if block.ndim == 1 else block.shape[1]
        if self.kernel.ndim == 2 and self.kernel.shape[1] != (self.channels or 1):
            raise InvalidArgumentError("block", f"has {self.channels or 1} channels; the kernel has {self.kernel.shape[1]}")
        natural = np.result_type(block.dtype, self.kernel.dtype)
        self.out_dtype = normalize_output_dtype(self.output_dtype_request, natural)
        self.exact = self.out_dtype.kind in "biu"
        c = self.channels or 1
        h = self.kernel.reshape(self.taps, -1)
        h = np.broadcast_to(h, (self.taps, c)).T  # (C, M)
        if self.exact:
            self._h = np.ascontiguousarray(h)  # native dtype: the accumulator is chosen per block
            self._sum_h = np.sum(np.abs(h.astype(np.float64)), axis=1)  # (C,): one bound per channel
            self._history = np.zeros((c, self.taps - 1), block.dtype)
            return
        b = self.block
        parts = -(-self.taps // b)
        padded = np.zeros((c, parts * b), np.float64)
        padded[:, : self.taps] = h
        self._spectra = np.fft.rfft(padded.reshape(c, parts, b), n=2 * b, axis=-1)  # (C, P, B+1)
        self._delay = np.zeros_like(self._spectra)  # frequency delay line, newest first
        self._previous = np.zeros((c, b))
        self._pending = np.zeros((c, 0))

    def _check(self, block: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if block.dtype not in SUPPORTED_DTYPES or block.dtype.kind == "c":
            raise InvalidArgumentError("block", f"dtype {block.dtype} is not supported for streaming; use a real dtype")
        if block.ndim not in (1, 2) or (block.ndim == 2 and block.shape[1] == 0):
            raise InvalidArgumentError("block", f"expected (n,) or (n, C) channels-last with C >= 1; got shape {block.shape}")
        if self.dtype is None:
            self._start(block)
        elif block.dtype != self.dtype or (None if block.ndim == 1 else block.shape[1]) != self.channels:
            raise InvalidArgumentError(
                "block", f"every block must be {self.dtype} with {self.channels or 1} channel(s) like the first; got {block.dtype} {block.shape}"
            )
        return block.reshape(block.shape[0], self.channels or 1).T  # (C, n)

    # -- the two engines --------------------------------------------------------------------
    def _exact(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Exact integer outputs for the new samples ``x`` (C, n) (zeros at close).

        As the unary path: the worst-case bound max|x| * sum|h| picks int64 (or uint64 for
        unsigned inputs and a uint64 result) or raises OUT_OF_RANGE suggesting float64; the
        sums then cannot wrap. ``max|x|`` covers the carried history, so over a whole stream
        the decision is the unary one for the whole signal.
        """
        assert self.dtype is not None
        extended = np.concatenate([self._history, x.astype(self.dtype, copy=False)], axis=1)
        c = extended.shape[0]
        if x.shape[1] == 0:
            return np.zeros((c, 0), np.int64)
        max_x = np.max(np.abs(extended.astype(np.float64)), axis=1, initial=0.0)
        bound = float(np.max(max_x * self._sum_h)) * (1 + 1e-9)
        unsigned = self.dtype.kind in "bu" and self.kernel.dtype.kind in "bu"
        acc = integers.accumulator_for(bound, self.out_dtype, unsigned)
        xs, hs = extended.astype(acc), self._h.astype(acc)
        out = np.stack([np.convolve(xs[i], hs[i], "valid") for i in range(c)])
        if self.taps > 1:
            self._history = extended[:, extended.shape[1] - (self.taps - 1) :]
        return out

    def _upols(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Outputs for every complete internal block once ``x`` (C, n) is appended."""
        b = self.block
        self._pending = np.concatenate([self._pending, x.astype(np.float64)], axis=1)
        ready = self._pending.shape[1] // b
        outputs = []
        for k in range(ready):
            cancellation.check()
            current = self._pending[:, k * b : (k + 1) * b]
            spectrum = np.fft.rfft(np.concatenate([self._previous, current], axis=1), axis=-1)
            self._delay = np.roll(self._delay, 1, axis=1)
            self._delay[:, 0] = spectrum
            accumulated = np.einsum("cpf,cpf->cf", self._delay, self._spectra)
            outputs.append(np.fft.irfft(accumulated, n=2 * b, axis=-1)[:, b:])
            self._previous = current
        self._pending = self._pending[:, ready * b :]
        return np.concatenate(outputs, axis=1) if outputs else np.zeros((self._previous.shape[0], 0))

    # -- public --------------------------------------------------------------------------------
    def push(self, block: npt.ArrayLike) -> npt.NDArray[Any]:
        """Feed the next block; return the output samples that are now complete (maybe none)."""
        x = self._check(np.asarray(block))
        self._received += x.shape[1]
        if not self.exact and has_nonfinite(x):
            self._warn(f"the block at sample {self._received - x.shape[1]} holds NaN or Inf; it spreads over the next {self.taps - 1} output samples")
        out = self._exact(x) if self.exact else self._upols(x)
        return self._emit(out)

    def take_warnings(self) -> tuple[str, ...]:
        """The warnings raised by the blocks pushed (and the close) since the last call."""
        taken, self._warnings = tuple(self._warnings), []
        return taken

    def _warn(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def close(self) -> npt.NDArray[Any]:
        """End of the signal: return every remaining output sample (the tail)."""
        if self.dtype is None or self._received == 0:  # an empty signal convolves to nothing
            return np.zeros((0,) if self.channels is None else (0, self.channels), self.out_dtype)
        total = self._received + self.taps - 1
        missing = total - self._emitted
        c = self.channels or 1
        if self.exact:
            out = self._exact(np.zeros((c, self.taps - 1), np.int64))
        else:
            flush = -(-(missing - self._pending.shape[1]) // self.block) * self.block + self._pending.shape[1]
            out = self._upols(np.zeros((c, max(0, flush - self._pending.shape[1]) + self.block)))
        return self._emit(out[:, :missing])

    def _emit(self, out: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Cast and shape an output chunk like the blocks: (k,) or (k, C)."""
        self._emitted += out.shape[1]
        if self.exact:
            self._check_range(out)
            result = (out != 0) if self.out_dtype.kind == "b" else out.astype(self.out_dtype)
        else:
            result = out.astype(self.out_dtype)
            if has_nonfinite(result):
                self._warn(f"NaN or Inf in the output (an input holds NaN or Inf, or the result overflowed {self.out_dtype.name})")
        return np.ascontiguousarray(result[0] if self.channels is None else result.T)

    def _check_range(self, out: npt.NDArray[Any]) -> None:
        """OUT_OF_RANGE when exact outputs do not fit; the holder named covers every output so far."""
        if out.size == 0 or self.out_dtype.kind == "b":
            return
        self._low, self._high = min(self._low, int(out.min())), max(self._high, int(out.max()))
        try:
            integers.check_range(out, self.out_dtype)
        except OutOfRangeError:
            integers.check_range(np.array([self._low, self._high], dtype=object), self.out_dtype)
            raise
