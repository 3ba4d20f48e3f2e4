"""Client-side mapping of the Python arguments onto request messages (no I/O).

Argument names and forms follow ``scipy.signal`` and ``torch.nn.functional``; every value is
checked here so that a bad argument fails at once, with the same ValueError-derived exception
the server would send.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from convserve import codec
from convserve.errors import InvalidArgumentError
from convserve.v1 import convserve_pb2 as pb

MODES: dict[str, Any] = {"full": pb.MODE_FULL, "same": pb.MODE_SAME, "valid": pb.MODE_VALID, "circular": pb.MODE_CIRCULAR}
METHODS: dict[str, Any] = {"auto": pb.METHOD_AUTO, "direct": pb.METHOD_DIRECT, "fft": pb.METHOD_FFT, "overlap_add": pb.METHOD_OVERLAP_ADD}
BOUNDARIES: dict[str, Any] = {
    "fill": pb.BOUNDARY_FILL,
    "wrap": pb.BOUNDARY_WRAP,
    "symmetric": pb.BOUNDARY_SYMMETRIC,
    "reflect": pb.BOUNDARY_REFLECT,
    "edge": pb.BOUNDARY_EDGE,
    # aliases (names of numpy.pad, torch, scipy.signal.convolve2d, scipy.ndimage), each with one meaning only; the README maps them all
    "constant": pb.BOUNDARY_FILL,
    "circular": pb.BOUNDARY_WRAP,
    "symm": pb.BOUNDARY_SYMMETRIC,
    "mirror": pb.BOUNDARY_REFLECT,
    "nearest": pb.BOUNDARY_EDGE,
}
PADDING_MODES: dict[str, Any] = {
    "zeros": pb.PADDING_MODE_ZEROS,
    "reflect": pb.PADDING_MODE_REFLECT,
    "replicate": pb.PADDING_MODE_REPLICATE,
    "circular": pb.PADDING_MODE_CIRCULAR,
}
POOL_KINDS: dict[str, Any] = {"max": pb.POOL_KIND_MAX, "avg": pb.POOL_KIND_AVG}


def invalid(field: str, message: str) -> InvalidArgumentError:
    """An InvalidArgumentError for one field."""
    return InvalidArgumentError(f"{field}: {message}", field_violations=((field, message),))


def enum_value(value: Any, table: Mapping[str, Any], field: str) -> Any:
    """Look a string option up in ``table`` (case-insensitive)."""
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    raise invalid(field, f"expected one of {', '.join(table)}; got {value!r}")


def int_list(value: Any, field: str, minimum: int) -> list[int]:
    """An int or a sequence of ints, each at least ``minimum``, as a list."""
    items = [value] if isinstance(value, (int, np.integer)) else value
    try:
        result = [int(v) for v in items]
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items)
    except TypeError:
        ok = False
    if not ok or not result:
        raise invalid(field, f"expected an int or a non-empty sequence of ints; got {value!r}")
    if any(v < minimum for v in result):
        raise invalid(field, f"every value must be >= {minimum}; got {value!r}")
    return result


def as_array(value: npt.ArrayLike, field: str) -> npt.NDArray[Any]:
    """An array of a supported dtype (array-likes converted as numpy does)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise invalid(field, f"cannot be converted to an array: {exc}") from exc
    codec.dtype_code(array.dtype, f"{field}.dtype")
    return array


def signal_request(
    in1: npt.ArrayLike | None,
    in2: npt.ArrayLike | None,
    mode: str,
    method: str,
    axes: int | Sequence[int] | None,
    boundary: str,
    fill_value: complex,
    output_dtype: npt.DTypeLike | None,
) -> pb.SignalRequest:
    """Build the request of Convolve and Correlate."""
    request = pb.SignalRequest(
        mode=enum_value(mode, MODES, "mode"),
        method=enum_value(method, METHODS, "method"),
        boundary=enum_value(boundary, BOUNDARIES, "boundary"),
    )
    if in1 is not None:  # None: the tensors travel in chunks
        codec.encode_into(request.in1, in1, "in1")
    if in2 is not None:
        codec.encode_into(request.in2, in2, "in2")
    if axes is not None:
        request.axes.SetInParent()
        request.axes.values.extend(int_list(axes, "axes", minimum=-(2**62)) if not _empty(axes) else [])
    try:
        fill = complex(fill_value)
    except (TypeError, ValueError) as exc:
        raise invalid("fill_value", f"expected a number; got {fill_value!r}") from exc
    if fill != 0:
        request.fill_value.real, request.fill_value.imag = fill.real, fill.imag
    if output_dtype is not None:
        request.output_dtype = codec.dtype_code(output_dtype, "output_dtype")
    return request


def conv_layer_request(
    input: npt.ArrayLike | None,
    weight: npt.ArrayLike | None,
    bias: npt.ArrayLike | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int] | str,
    dilation: int | Sequence[int],
    groups: int,
    padding_mode: str,
    activation: str | None,
    pool: Mapping[str, Any] | None,
) -> pb.ConvLayerRequest:
    """Build the request of ConvLayer."""
    request = pb.ConvLayerRequest(
        stride=int_list(stride, "stride", minimum=1),
        dilation=int_list(dilation, "dilation", minimum=1),
        padding_mode=enum_value(padding_mode, PADDING_MODES, "padding_mode"),
    )
    for name, value in (("input", input), ("weight", weight), ("bias", bias)):
        if value is not None:  # None: absent (bias) or travelling in chunks
            codec.encode_into(getattr(request, name), value, name)
    if isinstance(padding, str):
        presets: dict[str, Any] = {"same": pb.PADDING_PRESET_SAME, "valid": pb.PADDING_PRESET_VALID}
        request.padding.preset = enum_value(padding, presets, "padding")
    else:
        request.padding.sizes.extend(int_list(padding, "padding", minimum=0))
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise invalid("groups", f"expected a positive int; got {groups!r}")
    request.groups = int(groups)
    if activation is None:
        request.activation = pb.ACTIVATION_NONE
    else:
        request.activation = enum_value(activation, {"relu": pb.ACTIVATION_RELU, "none": pb.ACTIVATION_NONE}, "activation")
    if pool is not None:
        request.pool.CopyFrom(_pool(pool))
    return request


def conv_transpose_request(
    input: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    bias: npt.ArrayLike | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int],
    groups: int,
    dilation: int | Sequence[int],
) -> pb.ConvTransposeRequest:
    """Build the request of ConvTranspose (``weight`` None: registered weights)."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise invalid("groups", f"expected a positive int; got {groups!r}")
    request = pb.ConvTransposeRequest(
        stride=int_list(stride, "stride", minimum=1),
        padding=int_list(padding, "padding", minimum=0),
        output_padding=int_list(output_padding, "output_padding", minimum=0),
        dilation=int_list(dilation, "dilation", minimum=1),
        groups=int(groups),
    )
    for name, value in (("input", input), ("weight", weight), ("bias", bias)):
        if value is not None:
            codec.encode_into(getattr(request, name), value, name)
    return request


def _pool(pool: Mapping[str, Any]) -> pb.Pool:
    """The Pool message of a ``{"kind", "kernel_size", "stride", "padding"}`` mapping."""
    if not isinstance(pool, Mapping):
        raise invalid("pool", f"expected None or a dict with kind and kernel_size; got {pool!r}")
    unknown = set(pool) - {"kind", "kernel_size", "stride", "padding"}
    if unknown:
        raise invalid("pool", f"unknown keys {sorted(unknown)}; expected kind, kernel_size, stride, padding")
    if "kind" not in pool or "kernel_size" not in pool:
        raise invalid("pool", "needs 'kind' ('max' or 'avg') and 'kernel_size'")
    message = pb.Pool(
        kind=enum_value(pool["kind"], POOL_KINDS, "pool.kind"),
        kernel_size=int_list(pool["kernel_size"], "pool.kernel_size", minimum=1),
    )
    if pool.get("stride") is not None:
        message.stride.extend(int_list(pool["stride"], "pool.stride", minimum=1))
    if pool.get("padding") is not None:
        message.padding.extend(int_list(pool["padding"], "pool.padding", minimum=0))
    return message


def _empty(axes: Any) -> bool:
    """Whether ``axes`` is an empty sequence (sent as is so the server reports it)."""
    return not isinstance(axes, (int, np.integer)) and hasattr(axes, "__len__") and len(axes) == 0
