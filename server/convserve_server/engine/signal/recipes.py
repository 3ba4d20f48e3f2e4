"""Remembered recipes: a repeated small direct call runs as one compiled call, skipping the layers.

A call whose signature (shapes, dtypes, options, the request's thread share and the cost model in
force) was planned before as one compiled call (one image filtered by OpenCV in one call, one
short-kernel signal by ``numpy.convolve``) keeps a :class:`Recipe`. The next call with that
signature runs the recipe: one pass over the inputs that proves the result finite
(:func:`.finite_bound.finite_bound`), then the same compiled call the full path makes, with the same
arguments, so the result is bit-identical. Whatever the recipe cannot prove (NaN, Inf, values that
might overflow, a kernel that has become separable) goes through the full path, which checks
and warns. Measured here on a 512^2 float32 image with a 3x3 kernel, just after another
contender's call: the full path took ``cv2.filter2D`` + 59-67 us, a recipe + 18-30 us.

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
from convserve_server.engine.signal import cost_model, direct_fast, opencv_bands
from convserve_server.engine.signal import separable as separable_kernels
from convserve_server.engine.signal.finite_bound import finite_bound
from convserve_server.engine.signal.planner import SignalPlan

# Signatures remembered; the table is emptied when full (each entry is a few hundred bytes).
MAX_RECIPES = 1024
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Recipe:
    """How to compute a call of one signature in one compiled call.

    Attributes
    ----------
    kind : str
        ``"opencv"`` (one 2-D image, ``cv2.filter2D``) or ``"numpy"`` (one signal, ``numpy.convolve``).
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
    """

    kind: str
    flip: bool
    anchor: tuple[int, int]
    start: int
    stop: int
    numpy_mode: str
    ddepth: int
    separable_check: bool


_RECIPES: dict[tuple[Any, ...], Recipe] = {}
_LOCK = threading.Lock()
_share = resources.current_share
_LOADS = cost_model.LOADS
if direct_fast.cv2 is not None:
    _filter2d, _BORDER_CONSTANT = direct_fast.cv2.filter2D, direct_fast.cv2.BORDER_CONSTANT


def attempt(
    in1: Any, in2: Any, mode: Any, method: Any, axes: Any, boundary: Any, fill_value: Any, output_dtype: Any, correlate: bool
) -> tuple[tuple[Any, ...] | None, npt.NDArray[Any] | None]:
    """``(key, result)``: the call's recipe key (None when it cannot have a recipe: not two arrays, a
    non-default option) and the result by its recipe (None when there is none, or when the inputs
    prove nothing: the full path runs, then :func:`learn`). One function, few lookups: on a small
    call each step costs about a microsecond when the interpreter's data is out of cache."""
    if type(in1) is not np.ndarray or type(in2) is not np.ndarray or axes is not None or output_dtype is not None or fill_value.__class__ is not int:
        return None, None
    if mode.__class__ is not str or method.__class__ is not str or boundary.__class__ is not str or boundary != "fill" or fill_value != 0:
        return None, None
    key = (in1.shape, in1.dtype, in2.shape, in2.dtype, mode, method, correlate, _share(), _LOADS[0])
    recipe = _RECIPES.get(key)
    if recipe is None or not (in1.flags.c_contiguous and in2.flags.c_contiguous):
        return key, None
    if not finite_bound(in1, in2, in1.dtype):  # NaN, Inf or possible overflow: the full path checks and warns
        return key, None
    cancellation.check()
    if recipe.kind == "numpy":
        kernel = in2[::-1] if recipe.flip else in2
        if recipe.numpy_mode == "valid":
            return key, np.convolve(in1, kernel, "valid")
        full = np.convolve(in1, kernel)
        return key, full if recipe.start == 0 and recipe.stop == full.shape[0] else full[recipe.start : recipe.stop]
    if recipe.separable_check and separable_kernels.factors(in2, in2.dtype) is not None:
        return key, None  # a rank-1 kernel runs as two 1-D passes on the full path
    kernel = np.ascontiguousarray(in2[::-1, ::-1]) if recipe.flip else in2
    return key, _filter2d(in1, recipe.ddepth, kernel, anchor=recipe.anchor, borderType=_BORDER_CONSTANT)


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
        _RECIPES[recipe_key] = recipe


def _recipe(x: npt.NDArray[Any], h: npt.NDArray[Any], plan: SignalPlan, correlate: bool) -> Recipe | None:
    """The recipe equivalent to ``plan``'s direct path for these inputs, or None."""
    dtype = x.dtype
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


def forget() -> None:
    """Drop every recipe (new engine settings)."""
    with _LOCK:
        _RECIPES.clear()


config.on_change(lambda _config: forget())
