"""The second FFT backend: ducc0 transforms between a plan's buffers, and ducc0's fast lengths.

ducc0 (the successor of pocketfft, scipy.fft's backend) needs no planning, so a "plan" of this
backend is only the aligned buffers (cached like FFTW's, so a repeated shape faults no fresh pages)
and a :class:`DuccTransform` that runs one ducc0 call between them, with the same ``execute()``
shape of interface as a ``pyfftw.FFTW`` plan: unnormalised, ``input`` to ``output``. The choice
between FFTW and ducc0 is the signal cost model's (per shape class, calibrated on the host);
this module imports nothing of the engine.
"""

from __future__ import annotations

import functools
from typing import Any

import ducc0
import numpy.typing as npt

FFTW = "fftw"
DUCC0 = "ducc0"
BACKENDS = (FFTW, DUCC0)


class DuccTransform:
    """One ducc0 transform from ``input`` into ``output`` (unnormalised, like FFTW).

    Parameters
    ----------
    kind : {"r2c", "c2r", "c2c", "c2c_inverse"}
        As :func:`convserve_server.engine.fft.plans.plan`.
    inp, out : numpy.ndarray
        The buffers (complex of the real buffer's precision); ``c2r`` may overwrite ``inp``.
    axes : tuple of int
        Axes transformed; the last one is halved for real transforms.
    threads : int
        ducc0 threads for this transform.
    """

    def __init__(self, kind: str, inp: npt.NDArray[Any], out: npt.NDArray[Any], axes: tuple[int, ...], threads: int) -> None:
        self.kind, self.input, self.output, self.axes, self.threads = kind, inp, out, tuple(axes), max(1, int(threads))

    def execute(self) -> None:
        """Transform ``input`` into ``output`` (the GIL is released inside ducc0)."""
        axes, threads = self.axes, self.threads
        if self.kind == "r2c":
            ducc0.fft.r2c(self.input, axes=axes, out=self.output, nthreads=threads)
        elif self.kind == "c2r":
            lastsize = self.output.shape[axes[-1]]
            ducc0.fft.c2r(self.input, axes=axes, lastsize=lastsize, forward=False, out=self.output, nthreads=threads, allow_overwriting_input=True)
        else:
            ducc0.fft.c2c(self.input, axes=axes, forward=self.kind == "c2c", out=self.output, nthreads=threads)

    __call__ = execute

    def execute_into(self, out: npt.NDArray[Any]) -> None:
        """Forward-transform ``input`` into ``out``, any strided array of ``output``'s shape and dtype.

        ducc0 gathers and scatters each line itself, so a caller that wants the spectrum in
        another layout (transposed, say) gets it without a pass of its own: measured on 512 rows
        of 27x27 float32, r2c into a transposed view took 0.53-0.62 ms, against 0.70-0.71 ms for
        r2c then the transposing copy.
        """
        if self.kind != "r2c":
            raise ValueError(f"execute_into serves r2c transforms, not {self.kind}")
        ducc0.fft.r2c(self.input, axes=self.axes, out=out, nthreads=self.threads)

    def execute_from(self, inp: npt.NDArray[Any]) -> None:
        """Inverse-transform ``inp`` (any strided array of ``input``'s shape and dtype; it may be overwritten) into ``output``."""
        if self.kind != "c2r":
            raise ValueError(f"execute_from serves c2r transforms, not {self.kind}")
        lastsize = self.output.shape[self.axes[-1]]
        ducc0.fft.c2r(inp, axes=self.axes, lastsize=lastsize, forward=False, out=self.output, nthreads=self.threads, allow_overwriting_input=True)


@functools.lru_cache(maxsize=4096)
def good_length(n: int, real: bool = True) -> int:
    """ducc0's fast transform length of at least ``n`` (``ducc0.fft.good_size``; ``real`` for real data)."""
    return int(ducc0.fft.good_size(max(int(n), 1), bool(real)))


def version() -> str:
    """The ducc0 version in use."""
    return str(getattr(ducc0, "__version__", "unknown"))
