"""Argument checks shared by the convolution layer, the transposed convolution and the pooling (torch's rules).

Each check raises :class:`~convserve_server.engine.errors.InvalidArgumentError` naming the argument, before any work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.errors import InvalidArgumentError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_int(value: object) -> bool:
    """Return True for a Python or numpy integer (bool excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_tuple(value: object, nd: int, field: str, name: str, minimum: int) -> tuple[int, ...]:
    """Normalise an int, or a sequence of ``nd`` ints, to a tuple of ``nd`` ints.

    Parameters
    ----------
    value : object
        The argument as given.
    nd : int
        Number of spatial dimensions.
    field : str
        Field named in the error.
    name : str
        How the argument is called in the message.
    minimum : int
        Smallest allowed value (1: positive, 0: non-negative).

    Raises
    ------
    InvalidArgumentError
        Not an int / sequence of ints, wrong length or a value below ``minimum``.
    """
    expected = f"an int or a tuple of {nd} ints (one per spatial dimension)"
    if is_int(value):
        items: tuple[int, ...] = (int(value),) * nd  # type: ignore[call-overload]
    elif isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        seq = list(value)
        if len(seq) != nd:
            raise InvalidArgumentError(field, f"{name} must be {expected}, got {len(seq)} values: {value!r}")
        if not all(is_int(v) for v in seq):
            raise InvalidArgumentError(field, f"{name} must be {expected}, got {value!r}")
        items = tuple(int(v) for v in seq)
    else:
        raise InvalidArgumentError(field, f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if any(v < minimum for v in items):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise InvalidArgumentError(field, f"{name} must be {what}, got {value!r}")
    return items


def float_array(value: object, field: str) -> NDArray[Any]:
    """``np.asarray(value)``, required to be float32 or float64."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(field, f"expected a float32 or float64 array, got an unconvertible {type(value).__name__}: {exc}") from exc
    if arr.dtype not in FLOAT_DTYPES:
        raise InvalidArgumentError(field, f"dtype must be float32 or float64 (as torch's conv layers), got {arr.dtype}")
    return arr


def input_and_weight(input: Any, weight: Any, layout: str, operation: str) -> tuple[NDArray[Any], NDArray[Any], int, bool]:
    """Check an input and a weight of 1 to 3 spatial dimensions.

    Parameters
    ----------
    input, weight : array_like
        The layer's input (batched or not) and filters.
    layout : str
        The weight's layout for messages, e.g. ``"(C_out, C_in/groups, *kernel)"``.
    operation : str
        The operation for messages, e.g. ``"convolution"``.

    Returns
    -------
    (x, w, nd, batched)
        The arrays, the number of spatial dimensions and whether ``x`` has a batch axis.
    """
    x = float_array(input, "input")
    w = float_array(weight, "weight")
    if w.ndim not in (3, 4, 5):
        raise InvalidArgumentError("weight", f"expected a 3-D, 4-D or 5-D weight {layout}, got shape {w.shape}")
    nd = w.ndim - 2
    if x.ndim not in (nd + 1, nd + 2):
        raise InvalidArgumentError(
            "input",
            f"expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input for a {nd}-D {operation} "
            f"with weight of shape {w.shape}, got {x.ndim}-D input of shape {x.shape}",
        )
    if x.dtype != w.dtype:
        raise InvalidArgumentError("weight", f"input and weight must have the same dtype, got input {x.dtype} and weight {w.dtype}")
    if 0 in x.shape:
        raise InvalidArgumentError("input", f"every dimension must be non-empty, got shape {x.shape}")
    if 0 in w.shape:
        raise InvalidArgumentError("weight", f"every dimension must be non-empty, got shape {w.shape}")
    return x, w, nd, x.ndim == nd + 2


def groups_count(groups: Any, c_in: int) -> int:
    """A positive int dividing ``C_in``."""
    if not is_int(groups) or groups < 1:
        raise InvalidArgumentError("groups", f"expected a positive int, got {groups!r}")
    groups = int(groups)
    if c_in % groups:
        raise InvalidArgumentError("groups", f"C_in ({c_in}) must be divisible by groups ({groups})")
    return groups


def bias_vector(bias: Any, dtype: np.dtype[Any], c_out: int) -> NDArray[Any] | None:
    """None, or a ``(C_out,)`` vector of ``dtype`` (an ndarray must already have it)."""
    if bias is None:
        return None
    b = float_array(bias, "bias")
    if isinstance(bias, np.ndarray) and b.dtype != dtype:
        raise InvalidArgumentError("bias", f"bias must have the input's dtype {dtype}, got {b.dtype}")
    b = b.astype(dtype, copy=False)
    if b.shape != (c_out,):
        raise InvalidArgumentError("bias", f"expected shape (C_out,) = ({c_out},), got {b.shape}")
    return b
