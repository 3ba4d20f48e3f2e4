"""ducc0 transforms that skip what is known to be zero on the way in, or unread on the way out.

A convolution's operands are zero-padded: a 15x15 kernel fills 15 of the 526 rows of its 526x526
buffer. A multi-dimensional transform is one 1-D pass per axis, so the first pass (along the last
axis) needs to run only on the rows that hold data, the next one only on the planes that hold data,
and so on: the rest of each pass would transform zeros into zeros. On the way back, only the
output region that is read (a "same"-mode crop) needs the last passes. Same arithmetic on every
value that is kept, so the results equal the whole transform's to rounding.

Used for the ducc0 backend only (one ducc0 call per axis, no plans); imports nothing of the engine.
"""

from __future__ import annotations

from typing import Any, Sequence

import ducc0
import numpy.typing as npt


def _prefix(ndim: int, axes: Sequence[int], ranges: Sequence[tuple[int, int]], count: int) -> list[slice]:
    """An index that limits the first ``count`` of ``axes`` to their ``ranges`` (the rest whole)."""
    index = [slice(None)] * ndim
    for axis in axes[:count]:
        start, stop = ranges[axis]
        index[axis] = slice(start, stop)
    return index


def forward(kind: str, inp: npt.NDArray[Any], out: npt.NDArray[Any], axes: Sequence[int], extents: Sequence[int], threads: int) -> None:
    """Forward transform of ``inp`` into ``out``, where ``inp`` is zero outside its leading corner.

    Parameters
    ----------
    kind : {"r2c", "c2c"}
        Real-to-complex (the last of ``axes`` halved) or complex forward.
    inp, out : numpy.ndarray
        Time-domain buffer and spectrum buffer (unnormalised, as FFTW). ``out`` need not be zeroed.
    axes : sequence of int
        Transformed axes, in increasing order.
    extents : sequence of int
        Per axis of ``inp``, how many leading entries may be nonzero (whole length on other axes).
    threads : int
        ducc0 threads.
    """
    axes = tuple(axes)
    ranges = [(0, int(n)) for n in extents]
    rows = tuple(_prefix(inp.ndim, axes, ranges, len(axes) - 1))
    last = (axes[-1],)
    if kind == "r2c":
        ducc0.fft.r2c(inp[rows], axes=last, out=out[rows], nthreads=threads)
    else:
        ducc0.fft.c2c(inp[rows], axes=last, forward=True, out=out[rows], nthreads=threads)
    for count in range(len(axes) - 2, -1, -1):
        axis = axes[count]
        index = _prefix(out.ndim, axes, ranges, count)
        zeros = list(index)
        zeros[axis] = slice(int(extents[axis]), None)
        out[tuple(zeros)] = 0
        region = out[tuple(index)]
        ducc0.fft.c2c(region, axes=(axis,), forward=True, out=region, nthreads=threads)


def inverse(kind: str, inp: npt.NDArray[Any], out: npt.NDArray[Any], axes: Sequence[int], needed: Sequence[tuple[int, int]], threads: int) -> None:
    """Inverse transform of the spectrum ``inp`` into ``out``, correct only where it is read.

    Parameters
    ----------
    kind : {"c2r", "c2c_inverse"}
        Complex-to-real (``out``'s last transformed axis is the real length) or complex inverse.
    inp : numpy.ndarray
        The spectrum; overwritten.
    out : numpy.ndarray
        The time-domain result (unnormalised). Outside ``needed`` it holds garbage.
    axes : sequence of int
        Transformed axes, in increasing order.
    needed : sequence of (start, stop)
        Per axis of ``out``, the range that is read.
    threads : int
        ducc0 threads.
    """
    axes = tuple(axes)
    for count, axis in enumerate(axes[:-1]):
        region = inp[tuple(_prefix(inp.ndim, axes, needed, count))]
        ducc0.fft.c2c(region, axes=(axis,), forward=False, out=region, nthreads=threads)
    rows = tuple(_prefix(inp.ndim, axes, needed, len(axes) - 1))
    last = axes[-1]
    if kind == "c2r":
        ducc0.fft.c2r(inp[rows], axes=(last,), lastsize=out.shape[last], forward=False, out=out[rows], nthreads=threads, allow_overwriting_input=True)
    else:
        ducc0.fft.c2c(inp[rows], axes=(last,), forward=False, out=out[rows], nthreads=threads)
