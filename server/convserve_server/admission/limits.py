"""The one place that checks input and output sizes against the configured limits.

A tensor beyond ``max_elements``, a padded or upsampled input beyond it, a result beyond
``max_elements`` or ``max_output_bytes`` and weights beyond the weights cache are refused with
:class:`LimitExceeded` (RESOURCE_EXHAUSTED with pushback -1: the request can never fit, so
retrying is futile). A malformed shape stays INVALID_ARGUMENT: it is checked before these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convserve_server.engine.layers.transpose import sizes as transpose_sizes
from convserve_server.errors import LimitExceeded, bounded_message
from convserve_server.settings import Settings

# Longest caller-chosen text (an id, a name) echoed in an error message.
MAX_ECHO = 80


def bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_ECHO` characters with '...' when longer (for echoing in error messages)."""
    return bounded_message(text, MAX_ECHO)


def check_elements(shape: Any, name: str, settings: Settings | int) -> None:
    """Refuse a well-formed tensor with more elements than ``max_elements`` (``settings`` or the number).

    Raises
    ------
    LimitExceeded
        RESOURCE_EXHAUSTED with pushback -1: the request can never fit, retrying is futile
        (a malformed shape stays INVALID_ARGUMENT, checked first).
    """
    limit = settings if isinstance(settings, int) else settings.max_elements
    count = math.prod(int(d) for d in shape)
    if count > limit:
        raise LimitExceeded(f"{bounded(name)}: {count} elements exceed the limit of {limit} (max_elements); send a smaller tensor or raise --max-elements")


def check_result(shape: tuple[int, ...], dtype: np.dtype[Any], settings: Settings) -> None:
    """Refuse a result larger than ``max_elements`` or ``max_output_bytes``.

    Every call asks this as soon as it knows its result's shape: a signal call after planning
    and before computing, a transposed convolution from the shapes before any work, a layer
    call once its output exists (before it is encoded).
    """
    count = math.prod(shape)
    size = count * dtype.itemsize
    if count > settings.max_elements or size > settings.max_output_bytes:
        raise LimitExceeded(
            f"the result {list(shape)} of {dtype.name} ({size} bytes, {count} elements) exceeds the limit of "
            f"{settings.max_output_bytes} bytes / {settings.max_elements} elements"
        )


def check_weights(size: int, limit_bytes: int) -> None:
    """Refuse weights to register that the weights cache (``limit_bytes``) could never hold."""
    if size > limit_bytes:
        raise LimitExceeded(
            f"the weights take {size} bytes; the weights cache holds at most {limit_bytes} bytes (weights_cache_bytes): send them with each call instead"
        )


def check_padded_input(arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse a ConvLayer's explicit padding that would make the padded input larger than the element limit."""
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


def _per_dim(value: int | tuple[int, ...], nd: int, minimum: int) -> tuple[int, ...] | None:
    """One value per spatial dimension, or None when malformed (the engine then says why)."""
    values = (value,) * nd if isinstance(value, int) else value
    return values if len(values) == nd and min(values) >= minimum else None


def check_transpose(arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse a transposed convolution whose output or upsampled input would pass the limits (from the shapes)."""
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
    check_result(tuple(shape), x.dtype, settings)
    if upsampled > settings.max_elements:
        raise LimitExceeded(f"the padded input of one output phase would hold {upsampled} elements; the limit is {settings.max_elements} (max_elements)")
