"""Request messages -> engine arguments, and engine results -> response messages.

Every enum, tensor and list is checked here (INVALID_ARGUMENT naming the field) before any work.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.engine.layers.transpose import sizes as transpose_sizes
from convserve_server.engine.errors import InvalidArgumentError, bounded_message
from convserve_server.engine.info import CallInfo
from convserve_server.admission.workers import LimitExceeded
from convserve_server.settings import Settings
from convserve_server.transport.status import NotFound
from convserve_server.admission.weights import Entry

_MODES = {pb.MODE_UNSPECIFIED: "full", pb.MODE_FULL: "full", pb.MODE_SAME: "same", pb.MODE_VALID: "valid", pb.MODE_CIRCULAR: "circular"}
_METHODS = {pb.METHOD_UNSPECIFIED: "auto", pb.METHOD_AUTO: "auto", pb.METHOD_DIRECT: "direct", pb.METHOD_FFT: "fft", pb.METHOD_OVERLAP_ADD: "overlap_add"}
_BOUNDARIES = {
    pb.BOUNDARY_UNSPECIFIED: "fill",
    pb.BOUNDARY_FILL: "fill",
    pb.BOUNDARY_WRAP: "wrap",
    pb.BOUNDARY_SYMMETRIC: "symmetric",
    pb.BOUNDARY_REFLECT: "reflect",
    pb.BOUNDARY_EDGE: "edge",
}
_PADDING_MODES = {
    pb.PADDING_MODE_UNSPECIFIED: "zeros",
    pb.PADDING_MODE_ZEROS: "zeros",
    pb.PADDING_MODE_REFLECT: "reflect",
    pb.PADDING_MODE_REPLICATE: "replicate",
    pb.PADDING_MODE_CIRCULAR: "circular",
}
_ACTIVATIONS = {pb.ACTIVATION_UNSPECIFIED: None, pb.ACTIVATION_NONE: None, pb.ACTIVATION_RELU: "relu"}
_POOL_KINDS = {pb.POOL_KIND_MAX: "max", pb.POOL_KIND_AVG: "avg"}
_PRESETS = {pb.PADDING_PRESET_SAME: "same", pb.PADDING_PRESET_VALID: "valid"}


def _enum(value: int, table: Mapping[Any, Any], field: str) -> Any:
    """Map a wire enum value, refusing values this server does not know."""
    if value not in table:
        raise InvalidArgumentError(field, f"unknown value {value}")
    return table[value]


def as_engine_error(exc: ValueError, name: str) -> InvalidArgumentError:
    """The engine's InvalidArgumentError for a codec error (a convserve.InvalidArgumentError)."""
    violations = getattr(exc, "field_violations", ())
    field, text = violations[0] if violations else (name, str(exc))
    return InvalidArgumentError(field, text)


def _tensor(message: Any, name: str, settings: Settings, arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> npt.NDArray[Any]:
    """Decode a required tensor field, or take it from ``arrays`` (assembled from chunks)."""
    if arrays is not None and name in arrays:
        return arrays[name]
    if not message.HasField(name):
        raise InvalidArgumentError(name, "is required")
    return decode_tensor(getattr(message, name), name, settings)


def tensor_fields(request: Any) -> tuple[str, ...]:
    """Names of the tensor fields of a compute request."""
    if isinstance(request, pb.SignalRequest):
        return ("in1", "in2")
    if isinstance(request, pb.StreamConfig):
        return ("kernel",)
    if isinstance(request, pb.RegisterWeightsRequest):
        return ("weight", "bias")
    return ("input", "weight", "bias")


def registered_id(request: Any) -> str:
    """The ``weights_id`` a ConvLayer/ConvTranspose request names ('' for inline weights).

    Raises
    ------
    InvalidArgumentError
        Both ``weights_id`` and ``weight`` (or ``bias``) are set.
    """
    weights_id: str = getattr(request, "weights_id", "")
    if weights_id and (request.HasField("weight") or request.HasField("bias")):
        raise InvalidArgumentError("weights_id", "give either weight (and bias) or weights_id, not both; registered weights carry their own bias")
    if len(weights_id) > MAX_ECHO:  # ids are 64 hex digits: this one was never registered
        raise NotFound(
            f"weights_id {bounded(weights_id)!r} ({len(weights_id)} characters) is not registered on "
            "this server; registered ids are 64 hex digits, as RegisterWeights returns them"
        )
    return weights_id


# Longest caller-chosen text (an id, a name) echoed in an error message.
MAX_ECHO = 80


def bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_ECHO` characters with '...' when longer (for echoing in error messages)."""
    return bounded_message(text, MAX_ECHO)


def check_headers(request: Any, settings: Settings, only: list[str] | None = None) -> None:
    """Validate every present tensor's (or only those named) dtype, shape and byte count (no data is
    read), and the request's geometry (:func:`check_geometry`): everything the estimate relies on.

    Raises
    ------
    InvalidArgumentError
        A malformed tensor header or invalid geometry.
    LimitExceeded
        A tensor beyond ``max_elements``.
    """
    check_geometry(request)
    check_options(request)
    for name in tensor_fields(request) if only is None else only:
        if request.HasField(name):
            tensor = getattr(request, name)
            try:
                codec.check_header(tensor, name)
            except ValueError as exc:
                raise as_engine_error(exc, name) from None
            check_limits(tensor.shape, name, settings)


def _at_least(values: Any, field: str, minimum: int, what: str) -> tuple[int, ...]:
    """The repeated option's values, each at least ``minimum`` (else INVALID_ARGUMENT naming ``field``)."""
    items = tuple(int(v) for v in values)
    bad = [v for v in items if v < minimum]
    if bad:
        raise InvalidArgumentError(field, f"must be {what}; got {bounded(str(list(items)))}")
    return items


def check_options(request: Any) -> None:
    """Refuse unknown enum values (a Convolve/Correlate request's mode, method, boundary and
    output_dtype; a ConvLayer's padding_mode and activation) before any estimate: a bad option is
    INVALID_ARGUMENT, never a size refusal."""
    if isinstance(request, pb.ConvLayerRequest):
        _enum(request.padding_mode, _PADDING_MODES, "padding_mode")
        _enum(request.activation, _ACTIVATIONS, "activation")
        return
    if not isinstance(request, pb.SignalRequest):
        return
    _enum(request.mode, _MODES, "mode")
    _enum(request.method, _METHODS, "method")
    _enum(request.boundary, _BOUNDARIES, "boundary")
    if request.output_dtype != pb.DTYPE_UNSPECIFIED and request.output_dtype not in codec.NUMPY_BY_DTYPE:
        raise InvalidArgumentError("output_dtype", f"unknown value {request.output_dtype}")


def check_geometry(request: Any) -> None:
    """Refuse invalid ConvLayer / ConvTranspose geometry from the message alone, before any estimate.

    Strides and dilations are at least 1, paddings and output paddings at least 0, groups not
    negative (0 means 1); a pool's kernel_size and stride (when given) are at least 1, as torch
    refuses a pool stride of 0, and its padding at most half its kernel; a transposed
    convolution's output_padding is smaller than its stride or its dilation (torch's rule).
    """
    if not isinstance(request, (pb.ConvLayerRequest, pb.ConvTransposeRequest)):
        return
    stride = _at_least(request.stride, "stride", 1, "at least 1")
    dilation = _at_least(request.dilation, "dilation", 1, "at least 1")
    if request.groups < 0:
        raise InvalidArgumentError("groups", f"must be positive (0 or unset means 1); got {request.groups}")
    if isinstance(request, pb.ConvLayerRequest):
        _at_least(request.padding.sizes, "padding", 0, "non-negative")
        if request.HasField("pool"):
            kernel = _at_least(request.pool.kernel_size, "pool.kernel_size", 1, "at least 1")
            _at_least(request.pool.stride, "pool.stride", 1, "at least 1 (a pool stride of 0 is an error, as in torch)")
            pads = _at_least(request.pool.padding, "pool.padding", 0, "non-negative")
            if kernel and pads and len(kernel) in (1, len(pads)) and len(pads) in (1, len(kernel)):
                pairs = zip(pads * len(kernel) if len(pads) == 1 else pads, kernel * len(pads) if len(kernel) == 1 else kernel)
                if any(2 * p > k for p, k in pairs):
                    raise InvalidArgumentError("pool.padding", f"must be at most half of kernel_size {list(kernel)}; got {list(pads)}")
        return
    _at_least(request.padding, "padding", 0, "non-negative")
    extras = _at_least(request.output_padding, "output_padding", 0, "non-negative")
    if extras:
        n = max(len(extras), len(stride), len(dilation))

        def spread(values: tuple[int, ...]) -> tuple[int, ...]:
            return (values or (1,)) * n if len(values) <= 1 else values

        if all(len(v) == n for v in (spread(extras), spread(stride), spread(dilation))):
            for op, st, d in zip(spread(extras), spread(stride), spread(dilation)):
                if op >= st and op >= d:
                    raise InvalidArgumentError(
                        "output_padding",
                        f"must be smaller than either stride or dilation (as torch); got "
                        f"output_padding {list(extras)}, stride {list(stride) or [1]}, dilation {list(dilation) or [1]}",
                    )


def check_declared(tensor: pb.Tensor, name: str, settings: Settings) -> None:
    """Validate a tensor's declared dtype and shape (its bytes are elsewhere)."""
    try:
        codec.check_declared(tensor.dtype, tensor.shape, name)
    except ValueError as exc:
        raise as_engine_error(exc, name) from None
    check_limits(tensor.shape, name, settings)


def check_limits(shape: Any, name: str, settings: Settings | int) -> None:
    """Refuse a well-formed tensor with more elements than ``max_elements`` (``settings`` or the number).

    Raises
    ------
    LimitExceeded
        RESOURCE_EXHAUSTED with pushback -1: the request can never fit, retrying is futile
        (section 6 of issue 10; a malformed shape stays INVALID_ARGUMENT, checked first).
    """
    limit = settings if isinstance(settings, int) else settings.max_elements
    count = math.prod(int(d) for d in shape)
    if count > limit:
        raise LimitExceeded(f"{bounded(name)}: {count} elements exceed the limit of {limit} (max_elements); send a smaller tensor or raise --max-elements")


def decode_field(message: Any, name: str, settings: Settings) -> npt.NDArray[Any]:
    """Decode a required tensor field of any message."""
    return _tensor(message, name, settings)


def decode_tensor(tensor: pb.Tensor, name: str, settings: Settings) -> npt.NDArray[Any]:
    """Decode a tensor message (INVALID_ARGUMENT naming ``name`` when malformed)."""
    try:
        codec.check_declared(tensor.dtype, tensor.shape, name)
        check_limits(tensor.shape, name, settings)
        return codec.decode(tensor, name)
    except ValueError as exc:
        raise as_engine_error(exc, name) from None


def signal_arguments(request: pb.SignalRequest, settings: Settings, arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> dict[str, Any]:
    """Engine keyword arguments of a Convolve/Correlate request (tensors from ``arrays`` when given)."""
    in1 = _tensor(request, "in1", settings, arrays)
    in2 = _tensor(request, "in2", settings, arrays)
    output_dtype = None
    if request.output_dtype != pb.DTYPE_UNSPECIFIED:
        if request.output_dtype not in codec.NUMPY_BY_DTYPE:
            raise InvalidArgumentError("output_dtype", f"unknown value {request.output_dtype}")
        output_dtype = codec.NUMPY_BY_DTYPE[request.output_dtype].newbyteorder("=")
    fill = complex(request.fill_value.real, request.fill_value.imag)
    if not all(math.isfinite(v) for v in (fill.real, fill.imag)):
        raise InvalidArgumentError("fill_value", f"must be finite; got {fill}")
    return {
        "in1": in1,
        "in2": in2,
        "mode": _enum(request.mode, _MODES, "mode"),
        "method": _enum(request.method, _METHODS, "method"),
        "axes": list(request.axes.values) if request.HasField("axes") else None,
        "boundary": _enum(request.boundary, _BOUNDARIES, "boundary"),
        "fill_value": fill if fill.imag else fill.real,
        "output_dtype": output_dtype,
    }


def _ints(values: Any, field: str, default: int) -> int | tuple[int, ...]:
    """A repeated int64 option: empty -> default, one value -> int, else a tuple."""
    items = tuple(int(v) for v in values)
    if not items:
        return default
    return items[0] if len(items) == 1 else items


def _weights(request: Any, settings: Settings, arrays: Mapping[str, npt.NDArray[Any]] | None, entry: Entry | None) -> dict[str, Any]:
    """``weight``, ``bias`` and ``prepared``: from the registered ``entry``, or decoded from the request."""
    if entry is not None:
        return {"weight": entry.weight, "bias": entry.bias, "prepared": entry.prepared}
    return {
        "weight": _tensor(request, "weight", settings, arrays),
        "bias": _tensor(request, "bias", settings, arrays) if request.HasField("bias") else None,
        "prepared": None,
    }


def conv_layer_arguments(
    request: pb.ConvLayerRequest, settings: Settings, arrays: Mapping[str, npt.NDArray[Any]] | None = None, entry: Entry | None = None
) -> dict[str, Any]:
    """Engine keyword arguments of a ConvLayer request (tensors from ``arrays`` when given,
    weight and bias from ``entry`` when the request names registered weights)."""
    arguments: dict[str, Any] = {
        "input": _tensor(request, "input", settings, arrays),
        **_weights(request, settings, arrays, entry),
        "stride": _ints(request.stride, "stride", 1),
        "dilation": _ints(request.dilation, "dilation", 1),
        "groups": request.groups or 1,
        "padding_mode": _enum(request.padding_mode, _PADDING_MODES, "padding_mode"),
        "activation": _enum(request.activation, _ACTIVATIONS, "activation"),
        "pool": None,
    }
    padding = request.padding
    if padding.preset != pb.PADDING_PRESET_UNSPECIFIED:
        arguments["padding"] = _enum(padding.preset, _PRESETS, "padding.preset")
    else:
        arguments["padding"] = _ints(padding.sizes, "padding", 0)
    _check_padded_size(arguments, settings)
    if request.HasField("pool"):
        pool = request.pool
        if not pool.kernel_size:
            raise InvalidArgumentError("pool.kernel_size", "is required when pool is set")
        arguments["pool"] = {
            "kind": _enum(pool.kind, _POOL_KINDS, "pool.kind"),
            "kernel_size": _ints(pool.kernel_size, "pool.kernel_size", 1),
            "stride": _ints(pool.stride, "pool.stride", 1) if pool.stride else None,  # 0 is refused
            "padding": _ints(pool.padding, "pool.padding", 0),
        }
    return arguments


def _check_padded_size(arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse explicit padding that would make the padded input larger than the element limit."""
    padding = arguments["padding"]
    if isinstance(padding, str):
        return
    shape = arguments["input"].shape
    spatial = shape[2:] if len(shape) > 2 else shape[1:]
    pads = (padding,) * len(spatial) if isinstance(padding, int) else padding
    if len(pads) != len(spatial):
        return  # the engine reports the length mismatch
    padded = math.prod(shape[: len(shape) - len(spatial)]) * math.prod(s + 2 * p for s, p in zip(spatial, pads))
    if padded > settings.max_elements:
        raise LimitExceeded(f"padding: the padded input would hold {padded} elements; the limit is {settings.max_elements} (max_elements)")


def conv_transpose_arguments(request: pb.ConvTransposeRequest, settings: Settings, entry: Entry | None = None) -> dict[str, Any]:
    """Engine keyword arguments of a ConvTranspose request (weight and bias from ``entry`` when registered).

    Raises
    ------
    LimitExceeded
        The output, or the padded input the engine builds, would pass the element or
        output-byte limits (checked from the shapes, before any work).
    """
    arguments: dict[str, Any] = {
        "input": _tensor(request, "input", settings),
        **_weights(request, settings, None, entry),
        "stride": _ints(request.stride, "stride", 1),
        "padding": _ints(request.padding, "padding", 0),
        "output_padding": _ints(request.output_padding, "output_padding", 0),
        "groups": request.groups or 1,
        "dilation": _ints(request.dilation, "dilation", 1),
    }
    _check_transpose_size(arguments, settings)
    return arguments


def _per_dim(value: int | tuple[int, ...], nd: int, minimum: int) -> tuple[int, ...] | None:
    """One value per spatial dimension, or None when malformed (the engine then says why)."""
    values = (value,) * nd if isinstance(value, int) else value
    return values if len(values) == nd and min(values) >= minimum else None


def _check_transpose_size(arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse a transposed convolution whose output or upsampled input would pass the limits."""
    x, w = arguments["input"], arguments["weight"]
    if w.ndim not in (3, 4, 5) or x.ndim not in (w.ndim - 1, w.ndim):
        return
    nd = w.ndim - 2
    per_dim = [_per_dim(arguments[name], nd, low) for name, low in (("stride", 1), ("padding", 0), ("output_padding", 0), ("dilation", 1))]
    if any(p is None for p in per_dim) or not isinstance(arguments["groups"], int) or arguments["groups"] < 1:
        return
    stride, padding, output_padding, dilation = (p for p in per_dim if p is not None)
    shape, upsampled = transpose_sizes(x.shape, w.shape, arguments["groups"], stride, padding, output_padding, dilation)
    if min(shape) < 1:
        return
    count, itemsize = math.prod(shape), x.dtype.itemsize
    if count > settings.max_elements or count * itemsize > settings.max_output_bytes:
        raise LimitExceeded(
            f"the result {list(shape)} of {x.dtype.name} ({count * itemsize} bytes, {count} elements) exceeds the "
            f"limit of {settings.max_output_bytes} bytes / {settings.max_elements} elements"
        )
    if upsampled > settings.max_elements:
        raise LimitExceeded(f"the padded input of one output phase would hold {upsampled} elements; the limit is {settings.max_elements} (max_elements)")


def compute_info(info: CallInfo) -> pb.ComputeInfo:
    """The ComputeInfo message of an engine CallInfo."""
    return pb.ComputeInfo(method=info.method, compute_seconds=info.compute_seconds, warnings=list(info.warnings))


def result_tensor(array: npt.NDArray[Any]) -> pb.Tensor:
    """Encode a result array."""
    return codec.encode(np.asarray(array), "result")
