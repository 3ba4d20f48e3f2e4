"""Request messages -> engine arguments: tensors decoded, enums mapped, options built.

Runs on a worker thread, after admission (:mod:`convserve_server.admission.requests` checked the
headers and options). Every malformed tensor or option is refused with INVALID_ARGUMENT naming the
field; sizes the engine would build beyond the limits are refused before any work
(:mod:`convserve_server.admission.limits`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission import limits
from convserve_server.admission.requests import (
    ACTIVATIONS,
    BOUNDARIES,
    METHODS,
    MODES,
    PADDING_MODES,
    POOL_KINDS,
    PRESETS,
    as_engine_error,
    enum_value,
    output_dtype,
)
from convserve_server.admission.weights import Entry
from convserve_server.errors import InvalidArgumentError
from convserve_server.settings import Settings

Arrays = Mapping[str, npt.NDArray[Any]]


def decode_tensor(tensor: pb.Tensor, name: str, settings: Settings) -> npt.NDArray[Any]:
    """Decode a tensor message (INVALID_ARGUMENT naming ``name`` when malformed)."""
    try:
        codec.check_declared(tensor.dtype, tensor.shape, name)
        limits.check_elements(tensor.shape, name, settings)
        return codec.decode(tensor, name)
    except ValueError as exc:
        raise as_engine_error(exc, name) from None


def decode_field(message: Any, name: str, settings: Settings, arrays: Arrays | None = None) -> npt.NDArray[Any]:
    """Decode a required tensor field of any message, or take it from ``arrays`` (assembled from chunks)."""
    if arrays is not None and name in arrays:
        return arrays[name]
    if not message.HasField(name):
        raise InvalidArgumentError(name, "is required")
    return decode_tensor(getattr(message, name), name, settings)


def signal_arguments(request: pb.SignalRequest, settings: Settings, arrays: Arrays | None = None) -> dict[str, Any]:
    """Engine keyword arguments of a Convolve/Correlate request (tensors from ``arrays`` when given)."""
    in1 = decode_field(request, "in1", settings, arrays)
    in2 = decode_field(request, "in2", settings, arrays)
    dtype = output_dtype(request.output_dtype)
    fill = complex(request.fill_value.real, request.fill_value.imag)
    if not all(math.isfinite(v) for v in (fill.real, fill.imag)):
        raise InvalidArgumentError("fill_value", f"must be finite; got {fill}")
    return {
        "in1": in1,
        "in2": in2,
        "mode": enum_value(request.mode, MODES, "mode"),
        "method": enum_value(request.method, METHODS, "method"),
        "axes": list(request.axes.values) if request.HasField("axes") else None,
        "boundary": enum_value(request.boundary, BOUNDARIES, "boundary"),
        "fill_value": fill if fill.imag else fill.real,
        "output_dtype": dtype,
    }


def _ints(values: Any, default: int) -> int | tuple[int, ...]:
    """A repeated int64 option: empty -> default, one value -> int, else a tuple."""
    items = tuple(int(v) for v in values)
    if not items:
        return default
    return items[0] if len(items) == 1 else items


def _weights(request: Any, settings: Settings, arrays: Arrays | None, entry: Entry | None) -> dict[str, Any]:
    """``weight``, ``bias`` and ``prepared``: from the registered ``entry``, or decoded from the request."""
    if entry is not None:
        return {"weight": entry.weight, "bias": entry.bias, "prepared": entry.prepared}
    return {
        "weight": decode_field(request, "weight", settings, arrays),
        "bias": decode_field(request, "bias", settings, arrays) if request.HasField("bias") else None,
        "prepared": None,
    }


def _pool(pool: pb.Pool) -> dict[str, Any]:
    """The engine's pool argument of a ConvLayer request's ``pool``."""
    if not pool.kernel_size:
        raise InvalidArgumentError("pool.kernel_size", "is required when pool is set")
    return {
        "kind": enum_value(pool.kind, POOL_KINDS, "pool.kind"),
        "kernel_size": _ints(pool.kernel_size, 1),
        "stride": _ints(pool.stride, 1) if pool.stride else None,  # 0 is refused
        "padding": _ints(pool.padding, 0),
    }


def conv_layer_arguments(request: pb.ConvLayerRequest, settings: Settings, arrays: Arrays | None = None, entry: Entry | None = None) -> dict[str, Any]:
    """Engine keyword arguments of a ConvLayer request (tensors from ``arrays`` when given,
    weight and bias from ``entry`` when the request names registered weights)."""
    arguments: dict[str, Any] = {
        "input": decode_field(request, "input", settings, arrays),
        **_weights(request, settings, arrays, entry),
        "stride": _ints(request.stride, 1),
        "dilation": _ints(request.dilation, 1),
        "groups": request.groups or 1,
        "padding_mode": enum_value(request.padding_mode, PADDING_MODES, "padding_mode"),
        "activation": enum_value(request.activation, ACTIVATIONS, "activation"),
        "pool": None,
    }
    padding = request.padding
    if padding.preset != pb.PADDING_PRESET_UNSPECIFIED:
        arguments["padding"] = enum_value(padding.preset, PRESETS, "padding.preset")
    else:
        arguments["padding"] = _ints(padding.sizes, 0)
    limits.check_padded_input(arguments, settings)
    if request.HasField("pool"):
        arguments["pool"] = _pool(request.pool)
    return arguments


def conv_transpose_arguments(request: pb.ConvTransposeRequest, settings: Settings, arrays: Arrays | None = None, entry: Entry | None = None) -> dict[str, Any]:
    """Engine keyword arguments of a ConvTranspose request (weight and bias from ``entry`` when registered).

    Raises
    ------
    LimitExceeded
        The output, or the padded input the engine builds, would pass the element or
        output-byte limits (checked from the shapes, before any work).
    """
    arguments: dict[str, Any] = {
        "input": decode_field(request, "input", settings, arrays),
        **_weights(request, settings, arrays, entry),
        "stride": _ints(request.stride, 1),
        "padding": _ints(request.padding, 0),
        "output_padding": _ints(request.output_padding, 0),
        "groups": request.groups or 1,
        "dilation": _ints(request.dilation, 1),
    }
    limits.check_transpose(arguments, settings)
    return arguments
