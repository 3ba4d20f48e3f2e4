"""The samples of one file as the file commands hold them, and their conversion to an output dtype (clip with a warning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve._cli_common import CliError, warn

Array = npt.NDArray[Any]


@dataclass
class Signal:
    """A file's samples and what is needed to write them back the same way.

    Attributes
    ----------
    data : numpy.ndarray
        ``.npy``: the array as stored. Image: ``(H, W)`` or ``(H, W, C)`` in the file's own values (an
        alpha channel split off into ``alpha``). Audio: ``(frames, channels)`` in full-scale units
        (integer samples divided by ``full_scale``, float samples as stored).
    kind : {"array", "image", "audio"}
    dtype : numpy.dtype
        The file's sample type: the default output dtype.
    axes : tuple of int
        The axes convolved unless ``--axes`` says otherwise.
    rate : float, optional
        Samples per second (audio files; ``--rate`` for the others).
    bits : int, optional
        Bits of an integer audio sample (8, 16, 24, 32).
    alpha : numpy.ndarray, optional
        An image's alpha channel, ``(H, W)``.
    mode : str, optional
        The image's Pillow mode (``L``, ``RGB``, ``I;16``...).
    subtype : str, optional
        The audio file's soundfile subtype (``PCM_16``, ``FLOAT``...).
    info : dict
        Image metadata written back (ICC profile, resolution).
    """

    data: Array
    kind: str
    dtype: np.dtype[Any]
    axes: tuple[int, ...]
    rate: float | None = None
    bits: int | None = None
    alpha: Array | None = None
    mode: str | None = None
    subtype: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def full_scale(self) -> float:
        """What one full-scale audio sample is in the file's integers (``2**(bits-1)``); 1 for everything else."""
        return float(2 ** (self.bits - 1)) if self.bits else 1.0


def integer_range(dtype: np.dtype[Any], bits: int | None = None) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype (of ``bits`` bits, for 24-bit audio in int32)."""
    if bits is not None and dtype.kind == "i":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def quantize(values: Array, dtype: np.dtype[Any], scale: float = 1.0, bits: int | None = None, what: str = "output") -> Array:
    """``values * scale`` as ``dtype``: integers rounded to nearest and clipped to the range, with a warning on stderr.

    Parameters
    ----------
    values : numpy.ndarray
        The computed samples.
    dtype : numpy.dtype
        The output's sample type.
    scale : float
        Multiplies the values first (audio: full scale of the output's integers).
    bits : int, optional
        The integer range is that of ``bits`` bits (24-bit audio held in int32).
    what : str
        The output's name, for the warning.

    Raises
    ------
    CliError
        Complex values for a real dtype, or a dtype files cannot hold.
    """
    if values.dtype.kind == "c" and dtype.kind != "c":
        raise CliError(f"the result is complex ({values.dtype}); {what} needs {dtype}: write .npy with --output-dtype complex128")
    scaled = values * scale if scale != 1.0 else values
    if dtype.kind in "fc":
        if dtype.kind == "f" and scaled.size and np.isfinite(scaled).all():
            limit = float(np.finfo(dtype).max)
            if float(np.abs(scaled).max()) > limit:
                warn(f"{what}: values beyond {dtype}'s range become inf")
        return np.asarray(scaled, dtype=dtype)
    if dtype.kind == "b":
        raise CliError(f"{what}: cannot write bool samples; choose a numeric --output-dtype")
    low, high = integer_range(dtype, bits)
    finite = np.isfinite(scaled) if scaled.dtype.kind == "f" else np.ones(scaled.shape, dtype=bool)
    if not finite.all():
        warn(f"{what}: {int((~finite).sum())} non-finite value(s) written as 0")
        scaled = np.where(finite, scaled, 0.0)
    rounded = np.rint(scaled) if scaled.dtype.kind == "f" else scaled
    below, above = _outside(rounded, low, high)
    count = int(below.sum() + above.sum())
    if count:
        share = 100.0 * count / rounded.size
        seen = f"min {float(scaled.min()) / scale:.6g}, max {float(scaled.max()) / scale:.6g}"
        warn(f"{what}: {count} of {rounded.size} values ({share:.3g}%) outside {_range_name(dtype, bits)} {low}..{high} were clipped ({seen})")
    return _convert(rounded, dtype, low, high, below, above)


def _bounds(values: Array, low: int, high: int) -> tuple[Any, Any]:
    """``low`` and ``high`` as the nearest values of ``values``' dtype inside the range (float64 cannot hold 2**63-1)."""
    if values.dtype.kind == "f":
        low_f, high_f = np.float64(low), np.float64(high)
        if int(low_f) < low:
            low_f = np.nextafter(low_f, np.inf)
        if int(high_f) > high:
            high_f = np.nextafter(high_f, -np.inf)
        return low_f, high_f
    info = np.iinfo(values.dtype)
    return max(low, int(info.min)), min(high, int(info.max))


def _outside(values: Array, low: int, high: int) -> tuple[Array, Array]:
    """Masks of the (whole-number) values below ``low`` and above ``high``, compared exactly."""
    low_v, high_v = _bounds(values, low, high)
    return values < low_v, values > high_v


def _convert(values: Array, dtype: np.dtype[Any], low: int, high: int, below: Array, above: Array) -> Array:
    """Whole-number ``values`` as ``dtype``: in-range ones exactly, the clipped ones ``low`` or ``high`` exactly (no overflowing cast)."""
    low_v, high_v = _bounds(values, low, high)
    inside = np.clip(values, low_v, high_v) if (below.any() or above.any()) else values
    result = np.asarray(inside).astype(dtype)
    result[below] = low
    result[above] = high
    return result


def _range_name(dtype: np.dtype[Any], bits: int | None) -> str:
    """``int16's range`` or, for audio held in a wider integer, ``24-bit samples' range``."""
    if bits is not None and bits != dtype.itemsize * 8:
        return f"{bits}-bit samples' range"
    return f"{dtype.name}'s range"


def dtype_of(name: str) -> np.dtype[Any]:
    """A numeric numpy dtype from its name (``--output-dtype``)."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise CliError(f"--output-dtype: unknown dtype {name!r} (e.g. uint8, uint16, int16, int32, float32, float64, complex128)") from None
    if dtype.kind not in "biufc":
        raise CliError(f"--output-dtype: {dtype} is not numeric")
    return dtype
