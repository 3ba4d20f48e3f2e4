"""The bound on caller-chosen FFT shapes, and what runs a transform past it.

FFTW keeps wisdom for every plan it makes, ESTIMATE ones too (about 1-2 KB per shape), and cannot
forget one entry. So at most ``fftw_max_planned_shapes`` (an engine setting) distinct transforms
(kind, shape, dtype, axes) are planned by FFTW in one process; wisdom loaded from a file counts as ``bytes /
WISDOM_BYTES_PER_SHAPE`` of them. Past the bound a transform runs on numpy's pocketfft
(:class:`NumpyTransform`) between a plan's buffers: same results, one thread, nothing cached.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine import config

# What one shape's wisdom takes, roughly (measured 0.9 to 2.4 KB for ESTIMATE plans of 1-D shapes).
WISDOM_BYTES_PER_SHAPE = 2048

_LOCK = threading.Lock()
# Transforms (kind, shape, dtype, axes) FFTW has planned in this process, and the shapes a loaded
# wisdom file counts for.
_SHAPES: set[tuple[Any, ...]] = set()
_BUDGET = {"from_file": 0}


def count_wisdom_file(nbytes: int) -> None:
    """Count the shapes of a loaded wisdom file (``nbytes`` of accepted wisdom) against the budget."""
    with _LOCK:
        _BUDGET["from_file"] = nbytes // WISDOM_BYTES_PER_SHAPE


def admit(shape_key: tuple[Any, ...]) -> bool:
    """True when FFTW may plan (and so add wisdom for) ``shape_key``: known, or within the budget."""
    with _LOCK:
        if shape_key in _SHAPES:
            return True
        if len(_SHAPES) + _BUDGET["from_file"] >= config.current().fftw_max_planned_shapes:
            return False
        _SHAPES.add(shape_key)
        return True


def planned_shapes() -> int:
    """Distinct transforms FFTW planned in this process (at most ``fftw_max_planned_shapes``)."""
    return len(_SHAPES)


class NumpyTransform:
    """What runs a transform past the shape budget: numpy's pocketfft between a plan's buffers.

    Unnormalised like FFTW (``norm="forward"`` for the inverses); nothing is planned or cached.
    """

    def __init__(self, kind: str, inp: npt.NDArray[Any], out: npt.NDArray[Any], axes: tuple[int, ...]) -> None:
        self.kind, self.input, self.output, self.axes = kind, inp, out, axes

    def execute(self) -> None:
        """Transform ``input`` into ``output``."""
        axes = self.axes
        if self.kind == "r2c":
            self.output[...] = np.fft.rfftn(self.input, axes=axes)
        elif self.kind == "c2r":
            sizes = [self.output.shape[a] for a in axes]
            self.output[...] = np.fft.irfftn(self.input, s=sizes, axes=axes, norm="forward")
        elif self.kind == "c2c":
            self.output[...] = np.fft.fftn(self.input, axes=axes)
        else:
            self.output[...] = np.fft.ifftn(self.input, axes=axes, norm="forward")
