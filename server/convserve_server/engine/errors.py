"""Exceptions raised by the engine; the server maps each to one gRPC status (``transport/status.py``)."""

from __future__ import annotations


# Longest description an error carries: values echoed from a request (a list of 100,000 strides,
# an axes list) are cut, so an error message stays small whatever the request held.
MAX_MESSAGE = 1000


def bounded_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters, ending in '...' when cut."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidArgumentError(EngineError, ValueError):
    """An argument is malformed or inconsistent (maps to INVALID_ARGUMENT).

    Parameters
    ----------
    field : str
        The request field at fault, e.g. ``"in2"``, ``"axes"`` or ``"stride"``.
    message : str
        What was expected and what came.
    """

    def __init__(self, field: str, message: str) -> None:
        message = bounded_message(message)
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class OutOfRangeError(EngineError, ArithmeticError):
    """An integer result would not fit the output dtype (maps to OUT_OF_RANGE).

    Parameters
    ----------
    message : str
        What would overflow.
    suggested_dtype : str
        A dtype name that would hold the result (e.g. ``"int64"`` or ``"float64"``).
    """

    def __init__(self, message: str, suggested_dtype: str) -> None:
        super().__init__(f"{message}; use output_dtype={suggested_dtype!r}")
        self.suggested_dtype = suggested_dtype
