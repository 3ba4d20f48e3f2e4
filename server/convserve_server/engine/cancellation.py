"""Cooperative cancellation: long loops of the engine call :func:`check` between blocks of work.

The server runs each request under :func:`scope` with a token it sets when the caller cancels or
the deadline passes; ``check`` then raises :class:`Cancelled` at the next block boundary, so the
work stops using CPU soon after. Outside a scope ``check`` costs one context-variable lookup.

Work that cannot call ``check`` (one long ONNX Runtime run) registers a callback with
:func:`on_cancel`: one shared watcher thread polls the registered tokens every
:data:`POLL_SECONDS` and calls the callback (e.g. ``RunOptions.terminate = True``) once the
token is set, while the work is still inside the ``with`` block.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How often the watcher looks at the registered tokens (a cancel takes effect within this).
POLL_SECONDS = 0.005


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


def current() -> threading.Event | None:
    """The token of the request this thread is working for (None outside a scope)."""
    return _TOKEN.get()


_WATCHED: dict[int, tuple[threading.Event, Callable[[], None]]] = {}
_CONDITION = threading.Condition()
_IDS = itertools.count()
_WATCHER: threading.Thread | None = None


def _watch() -> None:
    """The watcher thread: fire the callbacks of set tokens; sleep while nothing is registered."""
    while True:
        with _CONDITION:
            while not _WATCHED:
                _CONDITION.wait()
            fired = [key for key, (token, _) in _WATCHED.items() if token.is_set()]
            callbacks = [_WATCHED.pop(key)[1] for key in fired]
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a failing callback must not stop the watcher
                logging.getLogger(__name__).debug("a cancellation callback failed", exc_info=True)
        with _CONDITION:
            _CONDITION.wait(POLL_SECONDS)


@contextmanager
def on_cancel(callback: Callable[[], None], token: threading.Event | None = None) -> Iterator[None]:
    """Call ``callback`` (once, from the watcher thread) if ``token`` (default: the current
    request's) is set while the enclosed work runs. Without a token this does nothing."""
    global _WATCHER
    token = token if token is not None else _TOKEN.get()
    if token is None:
        yield
        return
    key = next(_IDS)
    with _CONDITION:
        if _WATCHER is None:
            _WATCHER = threading.Thread(target=_watch, name="convserve-cancel-watcher", daemon=True)
            _WATCHER.start()
        _WATCHED[key] = (token, callback)
        _CONDITION.notify_all()
    try:
        yield
    finally:
        with _CONDITION:
            _WATCHED.pop(key, None)
