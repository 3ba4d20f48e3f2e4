"""The pure part of a Convolve/Correlate call: validated shapes, dtypes and the method to run.

``plan_signal_call`` reads the inputs' shapes and dtypes (and, for exactness and NaN checks,
their values) and returns a :class:`SignalPlan`; nothing is computed yet. Every bad argument is
found here, before any work starts. ``auto`` is a pure function of shapes, dtypes and options
(and the kernel's separability): the method of least predicted time by :mod:`convserve_server.engine.signal.cost_model`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.fft import plans
from convserve_server.engine.fft.sizes import fast_length
from convserve_server.engine.info import any_nonfinite
from convserve_server.engine.signal import cost_model, direct_fast, integers, signature
from convserve_server.engine.signal import separable as separable_kernels
from convserve_server.engine.signal.finite_bound import finite_bound, transform_growth
from convserve_server.engine.signal.options import METHODS, MODES, as_input, choose, normalize_axes, normalize_output_dtype
from convserve_server.engine.signal.signature import float_work_dtype, output_window


@dataclass
class SignalPlan:
    """Everything needed to compute one call, decided before any work."""

    x: npt.NDArray[Any]  # in1, boundary-extended when the boundary needs it
    h: npt.NDArray[Any]  # in2 broadcast to x's ndim, flipped and conjugated for correlate
    axes: tuple[int, ...]
    mode: str
    starts: list[int]  # per axis: first full-convolution index of the output
    lengths: list[int]  # per axis: output length
    out_dtype: np.dtype[Any]
    work_dtype: np.dtype[Any]
    method: str
    exact_integer: bool
    output_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    fft_backend: str = "fftw"  # who transforms when the method is an FFT: "fftw" or "ducc0"
    result_finite: bool = False  # the inputs proved every value the FFT computes finite: no pass over the result


def plan_signal_call(
    in1: npt.ArrayLike,
    in2: npt.ArrayLike,
    mode: str,
    method: str,
    axes: Any,
    boundary: str,
    fill_value: Any,
    output_dtype: Any,
    correlate: bool,
) -> SignalPlan:
    """Validate a call and decide how to compute it (see ``engine.convolve`` for the arguments).

    The checks that need only the call's signature (shapes, dtypes, options) run once per
    signature (:func:`signature.call_shape`, memoised); those that need the values (integer
    bounds, NaN/Inf, the kernel's separability) run on every call.
    """
    x = in1 if type(in1) is np.ndarray else as_input(in1, "in1")
    h = in2 if type(in2) is np.ndarray else as_input(in2, "in2")
    key = (x.shape, x.dtype, h.shape, h.dtype, mode, method, tuple(axes) if type(axes) is list else axes, boundary, fill_value, output_dtype)
    try:
        call = signature.call_shape(*key)
    except TypeError:  # an unhashable option: checked without the memo
        call = signature.call_shape.__wrapped__(*key)
    if call.scalar:
        x, h = x.reshape(1), h.reshape(1)
    if h.shape != call.h_shape:
        h = h.reshape(call.h_shape)
    conv_axes = call.axes
    if correlate:
        h = np.flip(h, axis=conv_axes)
        if h.dtype.kind == "c":
            h = np.conj(h)
    if call.extends:
        x = _extend(x, conv_axes, [h.shape[a] for a in conv_axes], call.boundary, call.fill)
    plan_warnings: list[str] = []
    bound = 0.0
    work: np.dtype[Any]
    if call.exact:
        bound = integers.worst_case_bound(x, h)
        work = integers.accumulator_for(bound, call.out_dtype, x.dtype.kind in "bu" and h.dtype.kind in "bu")
    else:
        assert call.work_dtype is not None
        work = call.work_dtype
    lengths = list(call.lengths)
    proof = [False]
    if call.method == "auto" and not call.exact:  # the common case: one lookup for the method and the backend
        chosen, backend = _auto_float(key, x, h, conv_axes, lengths, call.mode, work, plan_warnings, proof)
    else:
        chosen = _choose_method(call.method, call.mode, x, h, conv_axes, lengths, call.exact, bound, work, plan_warnings, proof)
        backend = choose_backend(chosen, call.mode, x.shape, h.shape, conv_axes, call.exact, work)
    return SignalPlan(
        x=x,
        h=h,
        axes=conv_axes,
        mode=call.mode,
        starts=list(call.starts),
        lengths=lengths,
        out_dtype=call.out_dtype,
        work_dtype=work,
        method=chosen,
        exact_integer=call.exact,
        output_shape=call.output_shape,
        warnings=plan_warnings,
        fft_backend=backend,
        result_finite=proof[0] and chosen != "direct",
    )


_PAD_MODE = {"fill": "constant", "wrap": "wrap", "symmetric": "symmetric", "reflect": "reflect", "edge": "edge"}


def _extend(x: npt.NDArray[Any], axes: tuple[int, ...], sizes_h: list[int], boundary: str, fill: complex | float) -> npt.NDArray[Any]:
    """Extend ``x`` by M-1 samples on both sides of each convolved axis, as numpy.pad names it."""
    pad = [(0, 0)] * x.ndim
    for axis, m in zip(axes, sizes_h):
        pad[axis] = (m - 1, m - 1)
    if boundary == "fill":
        dtype = np.result_type(x.dtype, np.asarray(fill).dtype) if fill != 0 else x.dtype
        return np.pad(x.astype(dtype, copy=False), pad, mode="constant", constant_values=fill)
    return np.pad(x, pad, mode=_PAD_MODE[boundary])  # type: ignore[call-overload]


def _choose_method(
    method: str,
    mode: str,
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: tuple[int, ...],
    lengths: list[int],
    exact: bool,
    bound: float,
    work: np.dtype[Any],
    notes: list[str],
    proof: list[bool] | None = None,
) -> str:
    """Resolve ``auto`` with the cost model and keep integer results exact and NaN local (``proof``: see :func:`_finite`)."""
    if (
        exact
        and method in ("fft", "overlap_add", "auto")
        and not integers.fft_is_exact(x, h, math.prod(fast_length(x.shape[a] + h.shape[a] - 1) for a in axes))
    ):
        if method != "auto":
            notes.append(f"method '{method}' cannot give exact integers at this range; ran 'direct' instead")
        return "direct"
    if method != "auto":
        if method != "direct" and not (exact or _finite(x, h, work, axes, proof)):
            notes.append(f"an input holds NaN or Inf; method '{method}' spreads it over the output (use 'direct' to keep it local)")
        if method == "overlap_add" and mode == "circular":
            notes.append("overlap-add does not apply to circular mode; ran 'fft'")
            return "fft"
        return method
    chosen = fastest(mode, x.shape, h, axes, lengths, exact, bound < direct_fast.EXACT_FLOAT64, work)
    if chosen != "direct" and not (exact or _finite(x, h, work, axes, proof)):
        notes.append("an input holds NaN or Inf; ran 'direct' to keep it local")
        return "direct"
    return chosen


# (signature, separable, token) -> (method, backend) of ``auto`` for float calls; cleared when full.
_AUTO: dict[tuple[Any, ...], tuple[str, str]] = {}


def _auto_float(
    key: tuple[Any, ...],
    x: npt.NDArray[Any],
    h: npt.NDArray[Any],
    axes: tuple[int, ...],
    lengths: list[int],
    mode: str,
    work: np.dtype[Any],
    notes: list[str],
    proof: list[bool] | None = None,
) -> tuple[str, str]:
    """``auto``'s method and FFT backend for a float call: memoised by signature, the kernel's
    separability, the thread share and the constants; then the NaN rule on the values (``proof``: see :func:`_finite`)."""
    memo: tuple[Any, ...] | None = (key, _separable(x.shape, h, axes, work), _memo_token())
    try:
        decided = _AUTO.get(memo)  # type: ignore[arg-type]
    except TypeError:  # an unhashable option: decided without the memo
        memo, decided = None, None
    if decided is None:
        method = fastest(mode, x.shape, h, axes, lengths, False, True, work)
        decided = (method, choose_backend(method, mode, x.shape, h.shape, axes, False, work))
        if memo is not None:
            if len(_AUTO) >= signature.MAX_SIGNATURES:
                _AUTO.clear()
            _AUTO[memo] = decided
    if decided[0] != "direct" and not _finite(x, h, work, axes, proof):
        notes.append("an input holds NaN or Inf; ran 'direct' to keep it local")
        return "direct", "fftw"
    return decided


def _separable(x_shape: tuple[int, ...], h: npt.NDArray[Any] | tuple[int, ...], axes: tuple[int, ...], fft_work: np.dtype[Any]) -> bool:
    """Whether the cost model must count ``h`` as separable (a 2-D float kernel of 5x5 or more, the smaller operand, of rank 1)."""
    if not isinstance(h, np.ndarray) or len(axes) != 2 or fft_work.kind != "f":
        return False
    h_shape = h.shape
    if min(h_shape[a] for a in axes) < separable_kernels.SEPARABLE_MIN_SIDE or math.prod(h_shape[a] for a in axes) > math.prod(x_shape[a] for a in axes):
        return False
    return separable_kernels.is_separable(np.squeeze(h), fft_work)


def _finite(x: npt.NDArray[Any], h: npt.NDArray[Any], work: np.dtype[Any] | None = None, axes: tuple[int, ...] = (), proof: list[bool] | None = None) -> bool:
    """Whether both inputs are free of NaN and Inf (checked only when an FFT would run; one cheap pass each).

    With ``proof``, the pass is :func:`.finite_bound.finite_bound` with a transform's growth
    (every value an FFT of these inputs computes is at most ``sum|x| * sum|h|`` times its length,
    before the 1/L scaling); when it proves nothing can overflow, ``proof[0]`` becomes True and
    the result needs no pass of its own. Finite but huge inputs take the plain check.
    """
    if proof is not None and work is not None and work.kind in "fc":
        if finite_bound(x, h, work, transform_growth(x, h, axes)):
            proof[0] = True
            return True
    return not any_nonfinite(h, x)


def _memo_token() -> tuple[Any, ...]:
    """What the cost model's choices depend on besides the call: the threads a transform may use
    (the setting and the request's share) and the constants in force."""
    return (plans.max_threads(), tuple(cost_model.constants().values()))


def fastest(
    mode: str,
    x_shape: tuple[int, ...],
    h: npt.NDArray[Any] | tuple[int, ...],
    axes: tuple[int, ...],
    lengths: list[int],
    exact: bool,
    integer_ok: bool,
    work: np.dtype[Any],
) -> str:
    """The method of least predicted time (``auto``'s choice before the exactness and NaN rules).

    ``h`` is the aligned kernel, or only its shape (see :func:`predict_method`). The kernel's
    values matter only through its separability (checked here); the prediction is memoised.
    """
    h_shape = tuple(h.shape) if isinstance(h, np.ndarray) else tuple(h)
    fft_work = np.dtype(np.float64) if exact else work
    separable = _separable(tuple(x_shape), h, axes, fft_work)
    return _fastest(mode, tuple(x_shape), h_shape, tuple(axes), tuple(lengths), exact, integer_ok, fft_work, separable, _memo_token())


@functools.lru_cache(maxsize=signature.MAX_SIGNATURES)
def _fastest(
    mode: str,
    x_shape: tuple[int, ...],
    h_shape: tuple[int, ...],
    axes: tuple[int, ...],
    lengths: tuple[int, ...],
    exact: bool,
    integer_ok: bool,
    fft_work: np.dtype[Any],
    separable: bool,
    token: tuple[Any, ...],
) -> str:
    """:func:`fastest` for shapes only (``token``: :func:`_memo_token`, so new constants or threads predict afresh)."""
    sizes = [(x_shape[a], h_shape[a]) for a in axes]
    batch = math.prod(max(x_shape[a], h_shape[a]) for a in range(len(x_shape)) if a not in axes)
    c = cost_model.constants()
    fft_backend = cost_model.fft_backend(batch, sizes, fft_work, exact, c)
    predicted = {
        "direct": cost_model.direct_cost(x_shape, h_shape, axes, lengths, batch, fft_work, integer_ok, c, separable),
        "fft": cost_model.fft_cost(batch, sizes, fft_work, c, fft_backend),
    }
    if mode != "circular" and len(sizes) == 1:  # measured: blocking one axis of an image loses to a whole FFT
        oa_backend = cost_model.overlap_add_backend(batch, sizes, fft_work, exact, c)
        predicted["overlap_add"] = cost_model.overlap_add_cost(batch, sizes, fft_work, c, oa_backend)
    return min(predicted, key=lambda name: predicted[name])


def choose_backend(method: str, mode: str, x_shape: tuple[int, ...], h_shape: tuple[int, ...], axes: tuple[int, ...], exact: bool, work: np.dtype[Any]) -> str:
    """The FFT backend of least predicted time for ``method`` (FFTW for exact integers and for ``direct``; memoised)."""
    if method == "direct" or exact:
        return "fftw"
    return _backend(method, mode, tuple(x_shape), tuple(h_shape), tuple(axes), work, _memo_token())


@functools.lru_cache(maxsize=signature.MAX_SIGNATURES)
def _backend(
    method: str, mode: str, x_shape: tuple[int, ...], h_shape: tuple[int, ...], axes: tuple[int, ...], work: np.dtype[Any], token: tuple[Any, ...]
) -> str:
    """:func:`choose_backend` for a float call (``token``: :func:`_memo_token`)."""
    sizes = [(x_shape[a], h_shape[a]) for a in axes]
    batch = math.prod(max(x_shape[a], h_shape[a]) for a in range(len(x_shape)) if a not in axes)
    c = cost_model.constants()
    if method == "overlap_add" and mode != "circular":
        return cost_model.overlap_add_backend(batch, sizes, work, False, c)
    if mode == "circular":
        sizes = [(n, 1) for n, _ in sizes]  # circular transforms at in1's length exactly
    return cost_model.fft_backend(batch, sizes, work, False, c)


@dataclass
class Prediction:
    """What a call will run, predicted from its declared shapes and dtypes (no data)."""

    method: str
    work_dtype: np.dtype[Any]  # the transforms' or sums' dtype (float64 for exact integers on an FFT)
    out_dtype: np.dtype[Any]
    x_shape: tuple[int, ...]  # in1 after boundary extension, in2 aligned to its dimensions
    h_shape: tuple[int, ...]
    axes: tuple[int, ...]
    lengths: list[int]


def predict_method(
    shape1: tuple[int, ...],
    shape2: tuple[int, ...],
    dtype1: np.dtype[Any],
    dtype2: np.dtype[Any],
    mode: str,
    method: str,
    axes: Any,
    extends: bool,
    output_dtype: Any,
) -> Prediction:
    """The method a call of these shapes and dtypes will run, for a memory estimate from headers.

    The same rules as :func:`plan_signal_call` and the same cost model, with what needs the data
    taken the conservative way: the kernel counts as not separable, integers as exact in float64
    sums only when the dtypes' worst case is below 2^53. The data-dependent rules (inexact FFT
    for integers, NaN) only ever switch to ``direct``, which needs less memory than predicted.
    ``extends``: the boundary extends in1 (a boundary other than zero fill, full/same modes).

    Raises
    ------
    InvalidArgumentError
        When the shapes or options are invalid (the call itself will be refused too).
    """
    mode = choose(mode, MODES, "mode")
    method = choose(method, METHODS, "method")
    ndim = max(len(shape1), len(shape2), 1)
    x_shape = tuple(shape1) or (1,)
    conv_axes = normalize_axes(axes, len(x_shape))
    h_shape = tuple(shape2) or (1,)
    if len(h_shape) != len(x_shape):
        if axes is not None and len(h_shape) == len(conv_axes):
            aligned = [1] * len(x_shape)
            for axis, size in zip(conv_axes, h_shape):
                aligned[axis] = size
            h_shape = tuple(aligned)
        else:
            raise InvalidArgumentError("in2", f"has {len(h_shape)} dimensions; in1 has {ndim}")
    natural = np.result_type(dtype1, dtype2)
    out_dtype = normalize_output_dtype(output_dtype, natural)
    sizes_h = [h_shape[a] for a in conv_axes]
    _, lengths = output_window(mode, [x_shape[a] for a in conv_axes], sizes_h)
    if extends and mode in ("full", "same"):
        x_shape = tuple(n + 2 * (sizes_h[conv_axes.index(i)] - 1) if i in conv_axes else n for i, n in enumerate(x_shape))
    exact = out_dtype.kind in "biu"
    complex_work = out_dtype.kind == "c" or natural.kind == "c"
    work: np.dtype[Any]
    if exact:
        worst = _dtype_max(dtype1) * _dtype_max(dtype2) * math.prod(min(x_shape[a], h_shape[a]) for a in conv_axes)
        integer_ok = worst < direct_fast.EXACT_FLOAT64
        work = np.dtype(np.int64)
    else:
        integer_ok = True
        work = float_work_dtype(np.dtype(dtype1), np.dtype(dtype2), out_dtype, complex_work)
    if method == "auto":
        chosen = fastest(mode, x_shape, h_shape, conv_axes, lengths, exact, integer_ok, work)
    else:
        chosen = "fft" if method == "overlap_add" and mode == "circular" else method
    if exact and chosen != "direct":
        work = np.dtype(np.float64)
    return Prediction(chosen, work, out_dtype, x_shape, h_shape, conv_axes, lengths)


def _dtype_max(dtype: np.dtype[Any]) -> float:
    """Largest magnitude of an integer or bool dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    info = np.iinfo(dtype)
    return float(max(abs(int(info.min)), int(info.max)))
