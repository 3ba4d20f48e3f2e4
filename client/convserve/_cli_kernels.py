"""Kernels of the file commands: named kernels (``box:3``, ``gaussian:1.5``...), kernel files, and ImageMagick's ``convolve:scale``.

A named kernel has one dimension per convolved axis of the input: ``box:3`` on an image (two axes)
is the 3x3 array of 1/9. Every named kernel is float64.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from convserve._cli_common import CliError
from convserve._cli_files import load_npy

MAX_KERNEL_ELEMENTS = 2**26  # a named kernel larger than this is a typo, not a kernel
Array = npt.NDArray[Any]


def _numbers(name: str, text: str, count: int) -> list[float]:
    """The ``count`` comma-separated numbers after ``name:``."""
    parts = [part.strip() for part in text.split(",")] if text else []
    if len(parts) != count:
        raise CliError(f"kernel {name}: expected {count} number{'s' if count > 1 else ''} after '{name}:'; got {text!r}")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise CliError(f"kernel {name}: not a number in {text!r}") from None
    if not all(math.isfinite(value) for value in values):
        raise CliError(f"kernel {name}: the numbers must be finite; got {text!r}")
    return values


def _size(name: str, text: str) -> int:
    """The positive integer N of ``box:N`` or ``dice:N``."""
    (value,) = _numbers(name, text, 1)
    if value != int(value) or value < 1:
        raise CliError(f"kernel {name}: N must be a positive integer; got {text!r}")
    if value > MAX_KERNEL_ELEMENTS:
        raise CliError(f"kernel {name}: N = {text} is too large (a kernel has at most {MAX_KERNEL_ELEMENTS} elements)")
    return int(value)


def _check_elements(name: str, size: int, ndim: int) -> None:
    """Refuse a ``size``-per-axis kernel of ``ndim`` axes before any memory is taken for it."""
    if size**ndim > MAX_KERNEL_ELEMENTS:
        raise CliError(f"kernel {name}: {size}^{ndim} elements is too large (at most {MAX_KERNEL_ELEMENTS})")


def _outer(vector: Array, ndim: int) -> Array:
    """The separable ``ndim``-dimensional kernel whose every axis is ``vector``."""
    _check_elements("of", vector.size, ndim)
    result = vector
    for _ in range(ndim - 1):
        result = np.multiply.outer(result, vector)
    return np.asarray(result, dtype=np.float64)


def gaussian_1d(sigma: float) -> Array:
    """The normalised Gaussian of scipy.ndimage (truncated at 4 sigma): radius ``int(4 * sigma + 0.5)``."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def _sigma(name: str, value: float, ndim: int) -> float:
    if value <= 0:
        raise CliError(f"kernel {name}: SIGMA must be > 0; got {value}")
    if 4.0 * value > MAX_KERNEL_ELEMENTS:
        raise CliError(f"kernel {name}: SIGMA = {value:g} is too large (a kernel has at most {MAX_KERNEL_ELEMENTS} elements)")
    _check_elements(name, 2 * int(4.0 * value + 0.5) + 1, ndim)
    return value


def _box(args: str, ndim: int, rate: float | None) -> Array:
    n = _size("box", args)
    _check_elements("box", n, ndim)
    return _outer(np.full(n, 1.0 / n), ndim)


def _dice(args: str, ndim: int, rate: float | None) -> Array:
    n = _size("dice", args)  # one die's pmf of 1..N (one dimension per die)
    _check_elements("dice", n, ndim)
    return _outer(np.full(n, 1.0 / n), ndim)


def _gaussian(args: str, ndim: int, rate: float | None) -> Array:
    (sigma,) = _numbers("gaussian", args, 1)
    return _outer(gaussian_1d(_sigma("gaussian", sigma, ndim)), ndim)


def _delta(shape: tuple[int, ...]) -> Array:
    """A unit impulse at the centre of ``shape`` (odd sizes)."""
    delta = np.zeros(shape)
    delta[tuple(size // 2 for size in shape)] = 1.0
    return delta


def _unsharp(args: str, ndim: int, rate: float | None) -> Array:
    sigma, amount = _numbers("unsharp", args, 2)
    blur = _outer(gaussian_1d(_sigma("unsharp", sigma, ndim)), ndim)
    return (1.0 + amount) * _delta(blur.shape) - amount * blur  # x + amount * (x - blur(x))


def _sobel(args: str, ndim: int, rate: float | None) -> Array:
    if ndim != 2:
        raise CliError(f"kernel sobel is 2-D; the input has {ndim} convolved ax{'is' if ndim == 1 else 'es'} (choose two with --axes)")
    direction = args.strip().lower()
    if direction not in ("x", "y"):
        raise CliError(f"kernel sobel: expected sobel:x or sobel:y; got sobel:{args}")
    # Convolving with it gives the derivative along x (axis 1, left to right), as scipy.ndimage.sobel(axis=1).
    kernel_x = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    return kernel_x if direction == "x" else kernel_x.T.copy()


def _laplacian(args: str, ndim: int, rate: float | None) -> Array:
    if args:
        raise CliError(f"kernel laplacian takes no arguments; got laplacian:{args}")
    kernel = np.zeros((3,) * ndim)
    centre = (1,) * ndim
    kernel[centre] = -2.0 * ndim
    for axis in range(ndim):  # +1 at both neighbours along each axis, as scipy.ndimage.laplace
        for side in (0, 2):
            kernel[centre[:axis] + (side,) + centre[axis + 1 :]] = 1.0
    return kernel


def _echo(args: str, ndim: int, rate: float | None) -> Array:
    delay, gain = _numbers("echo", args, 2)
    if ndim != 1:
        raise CliError(f"kernel echo is 1-D; the input has {ndim} convolved axes (choose one with --axes)")
    if rate is None:
        raise CliError("kernel echo needs the sample rate: the input file has none, give --rate")
    taps = round(delay * rate)
    if taps < 1:
        raise CliError(f"kernel echo: DELAY_S * rate must be at least one sample; got {delay} s * {rate} Hz")
    if taps + 1 > MAX_KERNEL_ELEMENTS:
        raise CliError(f"kernel echo: {taps + 1} taps is too long (at most {MAX_KERNEL_ELEMENTS})")
    kernel = np.zeros(taps + 1)
    kernel[0], kernel[taps] = 1.0, gain  # the signal, then its echo DELAY_S later
    return kernel


NAMED: dict[str, tuple[str, Callable[[str, int, float | None], Array]]] = {
    "box": ("box:N          N^d ones / N^d (mean filter)", _box),
    "gaussian": ("gaussian:SIGMA Gaussian, radius int(4*SIGMA+0.5), sum 1 (scipy.ndimage)", _gaussian),
    "sobel": ("sobel:x|y      3x3 Sobel: derivative along x (axis 1) or y (axis 0)", _sobel),
    "laplacian": ("laplacian      3^d discrete Laplacian, centre -2d (scipy.ndimage.laplace)", _laplacian),
    "unsharp": ("unsharp:SIGMA,AMOUNT  (1+AMOUNT)*delta - AMOUNT*gaussian:SIGMA", _unsharp),
    "echo": ("echo:DELAY_S,GAIN     [1, 0..., GAIN] with GAIN at DELAY_S*rate (1-D)", _echo),
    "dice": ("dice:N         a die's pmf on 1..N: ones(N)/N (one dimension per axis)", _dice),
}


def is_name(text: str) -> bool:
    """Whether ``text`` names a kernel (``box:3``, ``laplacian``...) rather than a file."""
    return text.partition(":")[0].strip().lower() in NAMED


def named(text: str, ndim: int, rate: float | None) -> Array:
    """The named kernel ``text`` with ``ndim`` dimensions (``rate``: samples per second, for echo)."""
    name, _, args = text.partition(":")
    return NAMED[name.strip().lower()][1](args.strip(), ndim, rate)


def load_file(path: str) -> Array:
    """A kernel from a ``.npy`` file (no pickles) or a text file of numbers (``.txt``/``.csv``, one row per line)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npy":
            kernel = load_npy(path, "kernel file ")
        elif suffix in (".txt", ".csv"):
            with open(path, encoding="utf-8") as handle:
                delimiter = "," if "," in handle.read() else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "loadtxt: input contained no data": refused below in one line
                kernel = np.loadtxt(path, delimiter=delimiter, ndmin=1, dtype=np.float64)
        else:
            raise CliError(f"kernel file {path}: unknown format {suffix or '(none)'!r}; expected .npy, .txt or .csv")
    except CliError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # UnicodeDecodeError is a ValueError
        raise CliError(f"cannot read kernel file {path}: {exc}") from None
    if not isinstance(kernel, np.ndarray) or kernel.dtype.kind not in "biufc" or kernel.size == 0:
        raise CliError(f"kernel file {path}: expected a non-empty numeric array; got {getattr(kernel, 'dtype', type(kernel))}")
    return kernel


def resolve(kernel: str | None, kernel_file: str | None, ndim: int, rate: float | None) -> Array:
    """The kernel of the command line: KERNEL (a name, else a path) or ``--kernel-file``.

    A KERNEL whose part before the first ``:`` is a kernel name is that named kernel; anything else
    is a file path (write ``./box:3`` or use ``--kernel-file`` for a file named like a kernel).
    """
    if kernel is not None and kernel_file is not None:
        raise CliError("give KERNEL or --kernel-file, not both")
    if kernel_file is not None:
        return load_file(kernel_file)
    if kernel is None:
        raise CliError("no kernel: give KERNEL (a name such as box:3, or a file) or --kernel-file")
    if is_name(kernel):
        return named(kernel, ndim, rate)
    if not Path(kernel).exists():
        raise CliError(f"kernel {kernel!r}: not a kernel name ({', '.join(NAMED)}) and no such file")
    return load_file(kernel)


def parse_scale(spec: str) -> tuple[float, float, str]:
    """ImageMagick's ``convolve:scale`` syntax ``FACTOR[!^][,ORIGIN_ADD][%]`` as (factor, origin add, flag '', '!' or '^')."""
    flag = "^" if "^" in spec else "!" if "!" in spec else ""
    percent = "%" in spec
    text = spec.replace("!", "").replace("^", "").replace("%", "").strip()
    head, _, tail = text.partition(",")
    try:
        factor = float(head) if head.strip() else 1.0
        add = float(tail) if tail.strip() else 0.0
    except ValueError:
        raise CliError(f"--scale {spec!r}: expected FACTOR[!^][,ORIGIN_ADD][%], e.g. '!', '2', '0.5!', '-1,100%'") from None
    if percent:
        factor, add = factor / 100.0, add / 100.0
    return factor, add, flag


def apply_scale(kernel: Array, spec: str) -> Array:
    """Scale a kernel as ImageMagick's ``-define convolve:scale=SPEC`` does.

    ``!`` first divides it by ``|sum|`` (by the sum of its positive values when it sums to 0);
    ``^`` divides its positive and its negative values separately by their sums' magnitudes. Then
    every value is multiplied by FACTOR, and ORIGIN_ADD is added to the centre value.
    """
    factor, add, flag = parse_scale(spec)
    if kernel.dtype.kind == "c":
        raise CliError("--scale: not for complex kernels")
    result = np.asarray(kernel, dtype=np.float64).copy()
    positive, negative = float(result[result > 0].sum()), float(-result[result < 0].sum())
    if flag:
        total = positive - negative
        pos_scale = positive if flag == "^" or abs(total) < 1e-12 else abs(total)
        neg_scale = negative if flag == "^" else pos_scale
        if pos_scale == 0 and neg_scale == 0:
            raise CliError("--scale: cannot normalise a kernel of zeros")
        result = np.where(result >= 0, result / (pos_scale or 1.0), result / (neg_scale or 1.0))
    result *= factor
    result[tuple(size // 2 for size in result.shape)] += add
    return result


def fit(kernel: Array, ndim: int, axes: Sequence[int]) -> Array:
    """Give a kernel with one dimension per convolved axis size-1 dimensions on the other axes of an ``ndim`` input.

    A kernel with ``ndim`` dimensions already is used as it is (e.g. ``(M, C)``: one column per channel).
    """
    if kernel.ndim == ndim:
        return kernel
    if kernel.ndim != len(axes):
        needs = f"{len(axes)}" if len(axes) == ndim else f"{len(axes)} (or {ndim}, one per input axis)"
        raise CliError(f"the kernel has {kernel.ndim} dimension(s); convolving axes {tuple(axes)} of a {ndim}-D input needs {needs}")
    shape = [1] * ndim
    for axis, size in zip(sorted(axes), kernel.shape):
        shape[axis] = size
    return kernel.reshape(shape)
