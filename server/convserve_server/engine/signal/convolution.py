"""Convolve and Correlate: scipy.signal semantics plus axes, boundaries and circular mode.

The planner validates and decides; this module runs the chosen engine and casts the result.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine.fft import rival
from convserve_server.engine.signal import direct, fft_product, integers, overlap_add, recipes
from convserve_server.engine.info import NONFINITE_WARNING, CallInfo, FiniteCheck, has_nonfinite, nonfinite_warnings  # noqa: F401 (re-exported)
from convserve_server.engine.signal.planner import SignalPlan, plan_signal_call


def convolve(
    in1: npt.ArrayLike,
    in2: npt.ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: Any = None,
    boundary: str = "fill",
    fill_value: Any = 0,
    output_dtype: Any = None,
    return_info: bool = False,
) -> Any:
    """Convolve two N-dimensional arrays, as ``scipy.signal.convolve`` does.

    Parameters
    ----------
    in1, in2 : array_like
        The signal and the kernel (any supported dtype, array-likes accepted).
    mode : {"full", "same", "valid", "circular"}
        Output size, as scipy; ``circular`` is cyclic convolution with in1's shape.
    method : {"auto", "direct", "fft", "overlap_add"}
        How to compute; ``auto`` picks the fastest by a cost model.
    axes : int or sequence of int, optional
        Axes to convolve over (default: all); the others broadcast.
    boundary : {"fill", "wrap", "symmetric", "reflect", "edge"} or an alias
        How in1 is extended beyond its edges (``full`` and ``same`` modes).
    fill_value : scalar
        The constant for ``boundary="fill"``.
    output_dtype : dtype, optional
        Result type; default scipy's (``numpy.result_type`` of the inputs).
    return_info : bool
        Also return a :class:`CallInfo`.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, CallInfo)
        The result, and what ran when ``return_info`` is true.

    Raises
    ------
    InvalidArgumentError
        On a bad argument (a ValueError).
    OutOfRangeError
        When an integer result would not fit the output dtype.
    """
    return _call(in1, in2, mode, method, axes, boundary, fill_value, output_dtype, False, return_info)


def correlate(
    in1: npt.ArrayLike,
    in2: npt.ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: Any = None,
    boundary: str = "fill",
    fill_value: Any = 0,
    output_dtype: Any = None,
    return_info: bool = False,
) -> Any:
    """Cross-correlate two N-dimensional arrays, as ``scipy.signal.correlate`` does.

    The arguments, result and errors are those of :func:`convolve`; in2 is conjugated for
    complex data.
    """
    return _call(in1, in2, mode, method, axes, boundary, fill_value, output_dtype, True, return_info)


def _call(in1: Any, in2: Any, mode: Any, method: Any, axes: Any, boundary: Any, fill_value: Any, output_dtype: Any, correlate: bool, return_info: bool) -> Any:
    """A remembered recipe when one applies (:mod:`.recipes`), else plan and run (and remember)."""
    started = time.perf_counter()
    key, result, recipe_method = recipes.attempt(in1, in2, mode, method, axes, boundary, fill_value, output_dtype, correlate)
    if result is not None:
        return (result, CallInfo(method=recipe_method, compute_seconds=time.perf_counter() - started)) if return_info else result
    plan = plan_signal_call(in1, in2, mode, method, axes, boundary, fill_value, output_dtype, correlate=correlate)
    finished = _finish(plan, return_info)
    recipes.learn(key, in1, in2, plan, correlate)
    return finished


def _finish(plan: SignalPlan, return_info: bool) -> Any:
    """Run a plan, time it, and package the result."""
    if not return_info:
        return execute(plan)
    started = time.perf_counter()
    result = execute(plan)
    return result, CallInfo(method=plan.method, compute_seconds=time.perf_counter() - started, warnings=tuple(plan.warnings))


def execute(plan: SignalPlan) -> npt.NDArray[Any]:
    """Compute a planned call and return the result in its output dtype and shape.

    A float or complex result holding NaN or Inf adds :data:`NONFINITE_WARNING` to
    ``plan.warnings`` (unless the planner already warned about NaN), on every method. A method
    that checked its result while computing it (OpenCV's bands) saves the pass over it.
    """
    checked = FiniteCheck(nonfinite=False if plan.result_finite else None)  # reset by _compute if the result is cast
    with np.errstate(invalid="ignore", over="ignore"):  # reported as a call warning instead
        result = _compute(plan, checked)
        if any("NaN" in note for note in plan.warnings):
            return result
        nonfinite = checked.nonfinite if checked.nonfinite is not None else has_nonfinite(result, guarded=False)
        if nonfinite:
            plan.warnings.append(NONFINITE_WARNING)
    return result


def _compute(plan: SignalPlan, checked: FiniteCheck) -> npt.NDArray[Any]:
    """Run the planned method and cast the result to its output dtype and shape (``checked``: see :class:`FiniteCheck`)."""
    exact_fft = plan.exact_integer and plan.method != "direct"
    if exact_fft:
        with rival.fftw_pinned():  # the exactness bound is FFTW's
            return _compute_methods(plan, checked, np.dtype(np.float64), exact_fft)
    return _compute_methods(plan, checked, plan.work_dtype, exact_fft)


def _compute_methods(plan: SignalPlan, checked: FiniteCheck, work: np.dtype[Any], exact_fft: bool) -> npt.NDArray[Any]:
    """:func:`_compute` in ``work`` (float64 for exact integers on an FFT)."""
    if plan.mode == "circular":
        if plan.method == "direct":
            raw = _direct_circular(plan, work)
        else:
            raw = fft_product.circular(plan.x, plan.h, plan.axes, work, plan.fft_backend)
    elif plan.method == "direct":
        raw = direct.linear_region(plan.x, plan.h, plan.axes, plan.starts, plan.lengths, work, checked)
    elif plan.method == "overlap_add":
        raw = overlap_add.linear_region(plan.x, plan.h, plan.axes, plan.starts, plan.lengths, work, plan.fft_backend)
    else:
        raw = fft_product.linear_region(plan.x, plan.h, plan.axes, plan.starts, plan.lengths, work, plan.fft_backend)
    if raw.dtype != plan.out_dtype:  # a cast may overflow: the verdict was for the uncast values
        checked.nonfinite = None
    return _cast(raw, plan, exact_fft).reshape(plan.output_shape)


def _direct_circular(plan: SignalPlan, work: np.dtype[Any]) -> npt.NDArray[Any]:
    """Cyclic convolution by the direct engine: wrap-extend in1 on the left, then a linear window."""
    pad = [(0, 0)] * plan.x.ndim
    for axis in plan.axes:
        pad[axis] = (plan.h.shape[axis] - 1, 0)
    wrapped = np.pad(plan.x, pad, mode="wrap")
    starts = [plan.h.shape[a] - 1 for a in plan.axes]
    return direct.linear_region(wrapped, plan.h, plan.axes, starts, plan.lengths, work)


def _cast(raw: npt.NDArray[Any], plan: SignalPlan, from_fft: bool) -> npt.NDArray[Any]:
    """Cast to the output dtype; integers are rounded (FFT) and range-checked, never wrapped."""
    out = plan.out_dtype
    if not plan.exact_integer:
        return np.ascontiguousarray(raw, dtype=out)
    exact = np.rint(raw).astype(np.int64) if from_fft else raw
    if out.kind == "b":
        return np.ascontiguousarray(exact != 0)
    integers.check_range(exact, out)
    return np.ascontiguousarray(exact, dtype=out)
