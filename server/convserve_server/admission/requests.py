"""What a request message says, checked from the message alone, before any estimate or decoding.

The proto enum tables (wire value -> engine name), and the checks admission relies on: each
tensor header's dtype, shape and byte count (no data is read), the options' enum values and a
layer's geometry. Every refusal is INVALID_ARGUMENT naming the field, except a tensor beyond the
element limit (:mod:`.limits`). Which checks a request type gets is the RPC table's business
(``convserve_server.transport.rpcs``); the functions here each know one message type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Mapping

from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission.limits import MAX_ECHO, bounded, check_elements
from convserve_server.errors import InvalidArgumentError, NotFound
from convserve_server.settings import Settings

MODES = {pb.MODE_UNSPECIFIED: "full", pb.MODE_FULL: "full", pb.MODE_SAME: "same", pb.MODE_VALID: "valid", pb.MODE_CIRCULAR: "circular"}
METHODS = {pb.METHOD_UNSPECIFIED: "auto", pb.METHOD_AUTO: "auto", pb.METHOD_DIRECT: "direct", pb.METHOD_FFT: "fft", pb.METHOD_OVERLAP_ADD: "overlap_add"}
BOUNDARIES = {
    pb.BOUNDARY_UNSPECIFIED: "fill",
    pb.BOUNDARY_FILL: "fill",
    pb.BOUNDARY_WRAP: "wrap",
    pb.BOUNDARY_SYMMETRIC: "symmetric",
    pb.BOUNDARY_REFLECT: "reflect",
    pb.BOUNDARY_EDGE: "edge",
}
PADDING_MODES = {
    pb.PADDING_MODE_UNSPECIFIED: "zeros",
    pb.PADDING_MODE_ZEROS: "zeros",
    pb.PADDING_MODE_REFLECT: "reflect",
    pb.PADDING_MODE_REPLICATE: "replicate",
    pb.PADDING_MODE_CIRCULAR: "circular",
}
ACTIVATIONS = {pb.ACTIVATION_UNSPECIFIED: None, pb.ACTIVATION_NONE: None, pb.ACTIVATION_RELU: "relu"}
POOL_KINDS = {pb.POOL_KIND_MAX: "max", pb.POOL_KIND_AVG: "avg"}
PRESETS = {pb.PADDING_PRESET_SAME: "same", pb.PADDING_PRESET_VALID: "valid"}


def enum_value(value: int, table: Mapping[Any, Any], field: str) -> Any:
    """Map a wire enum value, refusing values this server does not know."""
    if value not in table:
        raise InvalidArgumentError(field, f"unknown value {value}")
    return table[value]


def as_engine_error(exc: ValueError, name: str) -> InvalidArgumentError:
    """The engine's InvalidArgumentError for a codec error (a convserve.InvalidArgumentError)."""
    violations = getattr(exc, "field_violations", ())
    field, text = violations[0] if violations else (name, str(exc))
    return InvalidArgumentError(field, text)


def check_tensors(request: Any, fields: Iterable[str], settings: Settings) -> None:
    """Validate the dtype, shape and byte count of each present tensor named in ``fields`` (no data is read).

    Raises
    ------
    InvalidArgumentError
        A malformed tensor header.
    LimitExceeded
        A tensor beyond ``max_elements``.
    """
    for name in fields:
        if request.HasField(name):
            tensor = getattr(request, name)
            try:
                codec.check_header(tensor, name)
            except ValueError as exc:
                raise as_engine_error(exc, name) from None
            check_elements(tensor.shape, name, settings)


def check_declared(tensor: pb.Tensor, name: str, settings: Settings) -> None:
    """Validate a tensor's declared dtype and shape (its bytes are elsewhere)."""
    try:
        codec.check_declared(tensor.dtype, tensor.shape, name)
    except ValueError as exc:
        raise as_engine_error(exc, name) from None
    check_elements(tensor.shape, name, settings)


def registered_id(request: Any) -> str:
    """The ``weights_id`` a ConvLayer/ConvTranspose request names ('' for inline weights).

    Raises
    ------
    InvalidArgumentError
        Both ``weights_id`` and ``weight`` (or ``bias``) are set.
    NotFound
        An id longer than any registered one.
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


def output_dtype(code: int) -> Any:
    """The numpy dtype (native byte order) of a requested ``output_dtype``; None when unspecified."""
    if code == pb.DTYPE_UNSPECIFIED:
        return None
    if code not in codec.NUMPY_BY_DTYPE:
        raise InvalidArgumentError("output_dtype", f"unknown value {code}")
    return codec.NUMPY_BY_DTYPE[code].newbyteorder("=")


def _at_least(values: Any, field: str, minimum: int, what: str) -> tuple[int, ...]:
    """The repeated option's values, each at least ``minimum`` (else INVALID_ARGUMENT naming ``field``)."""
    items = tuple(int(v) for v in values)
    bad = [v for v in items if v < minimum]
    if bad:
        raise InvalidArgumentError(field, f"must be {what}; got {bounded(str(list(items)))}")
    return items


def check_signal(request: pb.SignalRequest) -> None:
    """Refuse unknown enum values of a Convolve/Correlate request (mode, method, boundary,
    output_dtype) before any estimate: a bad option is INVALID_ARGUMENT, never a size refusal."""
    enum_value(request.mode, MODES, "mode")
    enum_value(request.method, METHODS, "method")
    enum_value(request.boundary, BOUNDARIES, "boundary")
    if request.output_dtype != pb.DTYPE_UNSPECIFIED and request.output_dtype not in codec.NUMPY_BY_DTYPE:
        raise InvalidArgumentError("output_dtype", f"unknown value {request.output_dtype}")


def _check_strides(request: pb.ConvLayerRequest | pb.ConvTransposeRequest) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strides and dilations at least 1, groups not negative (0 means 1); returns (stride, dilation)."""
    stride = _at_least(request.stride, "stride", 1, "at least 1")
    dilation = _at_least(request.dilation, "dilation", 1, "at least 1")
    if request.groups < 0:
        raise InvalidArgumentError("groups", f"must be positive (0 or unset means 1); got {request.groups}")
    return stride, dilation


def check_layer(request: pb.ConvLayerRequest) -> None:
    """Refuse invalid ConvLayer geometry and unknown options from the message alone, before any estimate.

    Strides and dilations are at least 1, paddings at least 0, groups not negative (0 means 1);
    a pool's kernel_size and stride (when given) are at least 1, as torch refuses a pool stride
    of 0, and its padding at most half its kernel; padding_mode and activation are known values.
    """
    _check_strides(request)
    _at_least(request.padding.sizes, "padding", 0, "non-negative")
    if request.HasField("pool"):
        kernel = _at_least(request.pool.kernel_size, "pool.kernel_size", 1, "at least 1")
        _at_least(request.pool.stride, "pool.stride", 1, "at least 1 (a pool stride of 0 is an error, as in torch)")
        pads = _at_least(request.pool.padding, "pool.padding", 0, "non-negative")
        if kernel and pads and len(kernel) in (1, len(pads)) and len(pads) in (1, len(kernel)):
            pairs = zip(pads * len(kernel) if len(pads) == 1 else pads, kernel * len(pads) if len(kernel) == 1 else kernel)
            if any(2 * p > k for p, k in pairs):
                raise InvalidArgumentError("pool.padding", f"must be at most half of kernel_size {list(kernel)}; got {list(pads)}")
    enum_value(request.padding_mode, PADDING_MODES, "padding_mode")
    enum_value(request.activation, ACTIVATIONS, "activation")


def check_transpose(request: pb.ConvTransposeRequest) -> None:
    """Refuse invalid ConvTranspose geometry from the message alone, before any estimate.

    Strides and dilations are at least 1, paddings and output paddings at least 0, groups not
    negative (0 means 1); the output_padding is smaller than its stride or its dilation (torch's rule).
    """
    stride, dilation = _check_strides(request)
    _at_least(request.padding, "padding", 0, "non-negative")
    extras = _at_least(request.output_padding, "output_padding", 0, "non-negative")
    if not extras:
        return
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


def check_nothing(request: Any) -> None:
    """For a request type without options or geometry to check (RegisterWeights, a stream's config)."""
