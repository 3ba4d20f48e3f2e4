"""Remembered recipes: a repeated small call runs as one compiled call, skipping the layers.

A call whose signature (shapes, dtypes, options, the request's thread share and the cost model in
force) was planned before as one compiled call (one image filtered by OpenCV in one call, one
short-kernel signal by ``numpy.convolve``, one short real signal by FFT) keeps a :class:`Recipe`.
The next call with that signature runs the recipe: the same compiled call the full path makes,
with the same arguments, so the result is bit-identical. A direct recipe then makes one pass over
its result while it is still in cache; the full path's direct methods warn exactly when their
result holds NaN or Inf, so a finite result is the full path's answer, and any other goes through
the full path, which warns. An FFT recipe first repeats the planner's proof from the inputs
(:func:`.finite_bound.finite_bound` with the transform's growth). Measured here on a 512^2
float32 image with a 3x3 kernel, just after another contender's call: the full path took
``cv2.filter2D`` + 59-67 us, a recipe + 18-30 us.

Only float inputs already in their working dtype, with the default zero boundary, qualify; every
check that needs no values ran when the recipe was made (a bad signature never makes one).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation, config, resources
from convserve_server.engine.signal import cost_model, direct_fast, fft_product, opencv_bands
from convserve_server.engine.signal import separable as separable_kernels
from convserve_server.engine.signal.finite_bound import finite_bound, sum_of_squares, transform_growth
from convserve_server.engine.signal.planner import SignalPlan

# One short signal by FFT: up to this many outputs, where the planner is a large part of the call
# (measured here on 1e3 samples by 1025 taps just after another contender's call: 57 us planned, 45 by recipe).
FFT_MAX_OUTPUTS = 1 << 14
_ONE_AXIS = (0,)
# Signatures remembered; the table is emptied when full (each entry is a few hundred bytes).
MAX_RECIPES = 1024
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Recipe:
    """How to compute a call of one signature in one compiled call.

    Attributes
    ----------
    kind : str
        ``"opencv"`` (one 2-D image, ``cv2.filter2D``), ``"numpy"`` (one signal, ``numpy.convolve``)
        or ``"fft"`` (one short real signal by FFT, :func:`.fft_product.linear_region`).
    flip : bool
        Whether the kernel is flipped before the call (OpenCV correlates; correlate's kernel for numpy).
    anchor : tuple of int
        OpenCV's anchor (column, row).
    start, stop : int
        The slice of numpy's full convolution returned (``numpy`` recipes).
    numpy_mode : str
        The mode passed to ``numpy.convolve``.
    ddepth : int
        OpenCV's output depth.
    separable_check : bool
        Whether each call must find the kernel not separable (2-D kernels of 5x5 and up).
    backend : str
        The FFT backend (``fft`` recipes).
    """

    kind: str
    flip: bool
    anchor: tuple[int, int]
    start: int
    stop: int
    numpy_mode: str
    ddepth: int
    separable_check: bool
    backend: str = ""


_RECIPES: dict[tuple[Any, ...], Recipe] = {}
# The last small kernel of each ``opencv`` recipe: its bytes and :func:`_opencv_kernel`'s verdict.
_KERNELS: dict[tuple[Any, ...], tuple[bytes, npt.NDArray[Any] | None]] = {}
KERNEL_MEMO_BYTES = 4096
_LOCK = threading.Lock()
_share = resources.current_share
_LOADS = cost_model.LOADS
if direct_fast.cv2 is not None:
    _filter2d, _BORDER_CONSTANT = direct_fast.cv2.filter2D, direct_fast.cv2.BORDER_CONSTANT


def attempt(
    in1: Any, in2: Any, mode: Any, method: Any, axes: Any, boundary: Any, fill_value: Any, output_dtype: Any, correlate: bool
) -> tuple[tuple[Any, ...] | None, npt.NDArray[Any] | None, str]:
    """``(key, result, method)``: the call's recipe key (None when it cannot have a recipe: not two
    arrays, a non-default option), the result by its recipe (None when there is none, or when the
    inputs prove nothing: the full path runs, then :func:`learn`) and the method it names. One
    function, few lookups: on a small call each step costs about a microsecond when the
    interpreter's data is out of cache."""
    if type(in1) is not np.ndarray or type(in2) is not np.ndarray or axes is not None or output_dtype is not None or fill_value.__class__ is not int:
        return None, None, ""
    if mode.__class__ is not str or method.__class__ is not str or boundary.__class__ is not str or boundary != "fill" or fill_value != 0:
        return None, None, ""
    key = (in1.shape, in1.dtype, in2.shape, in2.dtype, mode, method, correlate, _share(), _LOADS[0])
    recipe = _RECIPES.get(key)
    if recipe is None or not (in1.flags.c_contiguous and in2.flags.c_contiguous):
        return key, None, ""
    if recipe.kind == "numpy":
        cancellation.check()
        return key, _finite_or_none(_numpy(in1, in2, recipe)), "direct"
    if recipe.kind == "fft":
        if not finite_bound(in1, in2, in1.dtype, transform_growth(in1, in2, _ONE_AXIS)):  # the planner's own proof
            return key, None, ""
        cancellation.check()
        return key, fft_product.linear_region(in1, in2, _ONE_AXIS, (recipe.start,), (recipe.stop - recipe.start,), in1.dtype, recipe.backend), "fft"
    kernel = _opencv_kernel(key, in2, recipe)
    if kernel is None:
        return key, None, ""  # a rank-1 kernel runs as two 1-D passes on the full path
    cancellation.check()
    result = _filter2d(in1, recipe.ddepth, kernel, anchor=recipe.anchor, borderType=_BORDER_CONSTANT)
    return key, _finite_or_none(result), "direct"


def _opencv_kernel(key: tuple[Any, ...], h: npt.NDArray[Any], recipe: Recipe) -> npt.NDArray[Any] | None:
    """The kernel OpenCV takes for an ``opencv`` recipe (flipped for a convolution), or None for a separable kernel.

    Kept with the kernel's bytes for the recipe's last small kernel, so a repeated kernel costs one
    ``tobytes`` and one comparison instead of the separability lookup and a flipped copy (measured
    here on a 7x7 kernel just after another contender's call: 3 us against 30).
    """
    raw = h.tobytes() if h.nbytes <= KERNEL_MEMO_BYTES else None
    last = _KERNELS.get(key)
    if raw is not None and last is not None and last[0] == raw:
        return last[1]
    kernel: npt.NDArray[Any] | None = None
    if not (recipe.separable_check and separable_kernels.factors(h, h.dtype) is not None):
        kernel = np.ascontiguousarray(h[::-1, ::-1]) if recipe.flip else h
    if raw is not None:
        _KERNELS[key] = (raw, None if kernel is None else kernel.copy() if kernel is h else kernel)  # its own copy: the caller may change h
    return kernel


def _numpy(x: npt.NDArray[Any], h: npt.NDArray[Any], recipe: Recipe) -> npt.NDArray[Any]:
    """A ``numpy`` recipe's result: ``numpy.convolve`` and the recipe's slice of it."""
    kernel = h[::-1] if recipe.flip else h
    if recipe.numpy_mode == "valid":
        return np.convolve(x, kernel, "valid")
    full = np.convolve(x, kernel)
    return full if recipe.start == 0 and recipe.stop == full.shape[0] else full[recipe.start : recipe.stop]


def _finite_or_none(result: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """``result`` when it is all finite, else None: the full path then runs again and warns.

    The full path's direct methods warn exactly when their result holds NaN or Inf (the planner
    looks at the inputs only before an FFT), so a finite result needs no warning. One pass over
    the result just written, while it is still in cache: measured here just after another
    contender's call, a pass over the inputs first cost 40 us on 1e5 doubles by 3 taps, where
    this one costs 19.
    """
    return result if math.isfinite(sum_of_squares(result)) else None


def learn(recipe_key: tuple[Any, ...] | None, x: npt.NDArray[Any], h: npt.NDArray[Any], plan: SignalPlan, correlate: bool) -> None:
    """Remember a recipe for the key when the plan ran as one compiled call that a recipe repeats exactly."""
    if recipe_key is None:
        return
    recipe_key = recipe_key[:-1] + (_LOADS[0],)  # the constants the plan used (planning may have loaded them)
    if recipe_key in _RECIPES:
        return
    recipe = _recipe(x, h, plan, correlate)
    if recipe is None:
        return
    with _LOCK:
        if len(_RECIPES) >= MAX_RECIPES:
            _RECIPES.clear()
            _KERNELS.clear()
        _RECIPES[recipe_key] = recipe


def _recipe(x: npt.NDArray[Any], h: npt.NDArray[Any], plan: SignalPlan, correlate: bool) -> Recipe | None:
    """The recipe equivalent to ``plan``'s direct path (or its FFT for one short signal) for these inputs, or None."""
    dtype = x.dtype
    if _fft_recipe_fits(x, h, plan):
        start = plan.starts[0]
        return Recipe("fft", False, (0, 0), start, start + plan.lengths[0], "", 0, False, plan.fft_backend)
    if (
        direct_fast.cv2 is None
        or plan.method != "direct"
        or plan.exact_integer
        or plan.mode == "circular"
        or dtype not in _FLOATS
        or h.dtype != dtype
        or plan.work_dtype != dtype
        or plan.out_dtype != dtype
        or plan.x is not x
        or x.ndim != h.ndim
        or len(plan.axes) != x.ndim
        or plan.warnings
    ):
        return None
    taps = math.prod(h.shape)
    if taps > math.prod(x.shape):
        return None  # the direct path would swap the operands
    if x.ndim == 1:
        start, length = plan.starts[0], plan.lengths[0]
        if direct_fast.backend(1, 1, h.shape, dtype, True) != "numpy_1d" or x.shape[0] >= direct_fast.CONCURRENT_CHECK_MIN:
            return None  # OpenCV's row split, or the input pass beside numpy on the other core
        if length * taps > 2 * direct_fast.CHUNK_MACS:
            return None  # numpy in chunks, with cancellation checks between them
        if plan.mode == "valid":
            return Recipe("numpy", correlate, (0, 0), 0, length, "valid", 0, False)
        return Recipe("numpy", correlate, (0, 0), start, start + length, "full", 0, False)
    if x.ndim != 2 or not direct_fast.summed(h.shape, dtype == np.float32):
        return None
    if plan.lengths[0] * plan.lengths[1] * dtype.itemsize >= opencv_bands.MIN_SPLIT_BYTES:
        return None
    anchor, crop, after = direct_fast.placement(x.shape, h.shape, plan.starts, plan.lengths)
    if any(crop) or any(after) or list(plan.lengths) != list(x.shape):
        return None  # the output is not OpenCV's whole result
    separable_check = min(h.shape) >= separable_kernels.SEPARABLE_MIN_SIDE
    if separable_check and separable_kernels.factors(plan.h, dtype) is not None:  # the planner's own lookup
        return None
    ddepth = direct_fast.cv2.CV_64F if dtype == np.float64 else direct_fast.cv2.CV_32F
    return Recipe("opencv", not correlate, (anchor[1], anchor[0]), 0, 0, "", ddepth, separable_check)


def _fft_recipe_fits(x: npt.NDArray[Any], h: npt.NDArray[Any], plan: SignalPlan) -> bool:
    """Whether ``plan`` is an FFT of one short real signal by its kernel, as given: the recipe repeats
    :func:`.fft_product.linear_region` with the plan's arguments after the planner's finite proof."""
    return (
        plan.method == "fft"
        and plan.mode != "circular"
        and plan.result_finite
        and not plan.exact_integer
        and not plan.warnings
        and x.ndim == 1
        and h.ndim == 1
        and x.dtype in _FLOATS
        and h.dtype == x.dtype == plan.work_dtype == plan.out_dtype
        and plan.x is x
        and plan.h is h
        and plan.lengths[0] <= FFT_MAX_OUTPUTS
        and plan.output_shape == (plan.lengths[0],)
    )


def forget() -> None:
    """Drop every recipe (new engine settings)."""
    with _LOCK:
        _RECIPES.clear()
        _KERNELS.clear()


config.on_change(lambda _config: forget())
