"""Cooperative cancellation: long loops of the engine call :func:`check` between blocks of work.

The server runs each request under :func:`scope` with a token it sets when the caller cancels or
the deadline passes; ``check`` then raises :class:`Cancelled` at the next block boundary, so the
work stops using CPU soon after. Outside a scope ``check`` costs one context-variable lookup.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """The request this work belongs to was cancelled or its deadline passed."""


_TOKEN: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("convserve_cancel", default=None)


@contextmanager
def scope(token: threading.Event) -> Iterator[None]:
    """Run the enclosed engine work under ``token``: once it is set, ``check`` raises."""
    reset = _TOKEN.set(token)
    try:
        yield
    finally:
        _TOKEN.reset(reset)


def check() -> None:
    """Raise :class:`Cancelled` if the current request was cancelled."""
    token = _TOKEN.get()
    if token is not None and token.is_set():
        raise Cancelled("the request was cancelled or its deadline passed")
