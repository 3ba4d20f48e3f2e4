"""The one server of ``convserve.compat`` and ``convserve.dask``: named once, one client per process.

A client replaced by :func:`configure` (or by a changed ``CONVSERVE_TARGET``) is closed once the
calls in flight on it are done: calls of other threads finish on the client they started on.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterator
from typing import Any

from convserve import _environment
from convserve._base import DEFAULT_TARGET
from convserve.client import Client

ENVIRONMENT = _environment.TARGET_VARIABLE

_lock = threading.Lock()
_target: str | None = None
_options: dict[str, Any] = {}
_client: tuple[int, Client] | None = None  # (pid, client): a forked child opens its own
_users: dict[int, int] = {}  # id(client) -> calls in flight on it
_retired: dict[int, Client] = {}  # replaced clients with calls still in flight: closed by the last one


def configure(target: str | None = None, **client_options: Any) -> None:
    """Name the server that ``convserve.compat`` and ``convserve.dask`` talk to.

    Parameters
    ----------
    target : str, optional
        ``host:port``, or ``ipv4:h1:p1,h2:p2`` for replicas. None: back to ``CONVSERVE_TARGET``,
        else ``127.0.0.1:50051``.
    **client_options
        Keyword arguments of :class:`convserve.Client` (timeout, token, TLS files, retry, ...).

    Raises
    ------
    TypeError
        An option :class:`convserve.Client` does not take (a misspelt ``timout=``): nothing is changed.

    Examples
    --------
    >>> import convserve.compat                                   # doctest: +SKIP
    >>> convserve.compat.configure("127.0.0.1:50051", timeout=30)  # doctest: +SKIP
    """
    global _target, _options, _client
    try:
        inspect.signature(Client).bind(target or DEFAULT_TARGET, **client_options)
    except TypeError as exc:
        raise TypeError(f"convserve.compat.configure: {exc}; the options are convserve.Client's") from None
    with _lock:
        old, _client = _client, None
        _target, _options = target, dict(client_options)
        _retire(old)


def settings() -> tuple[str, dict[str, Any]]:
    """The configured target and client options: :func:`configure`'s, else ``CONVSERVE_TARGET``, else the default."""
    with _lock:
        target = _target or _environment.target(DEFAULT_TARGET)
        return target, dict(_options)


def default_client() -> Client:
    """This process's client of the configured server (opened at first use).

    A client replaced by :func:`configure` or a changed ``CONVSERVE_TARGET`` is closed once the calls
    of ``convserve.compat`` in flight on it are done.
    """
    global _client
    target, options = settings()
    with _lock:
        if _client is None or _client[0] != os.getpid() or _client[1].target != target:
            _retire(_client)
            _client = (os.getpid(), Client(target, **options))
        return _client[1]


@contextlib.contextmanager
def lease() -> Iterator[Client]:
    """The default client, kept open until the ``with`` block ends even if it is replaced meanwhile."""
    while True:
        client = default_client()
        with _lock:
            if _client is not None and _client[1] is client:  # not replaced between the two locks
                _users[id(client)] = _users.get(id(client), 0) + 1
                break
    try:
        yield client
    finally:
        with _lock:
            left = _users[id(client)] - 1
            if left:
                _users[id(client)] = left
            else:
                del _users[id(client)]
                finished = _retired.pop(id(client), None)
                if finished is not None:
                    finished.close()


def _retire(old: tuple[int, Client] | None) -> None:
    """Close a replaced client now, or when its last call in flight ends (under ``_lock``)."""
    if old is None or old[0] != os.getpid():
        return  # a parent's client: the parent closes it
    if _users.get(id(old[1])):
        _retired[id(old[1])] = old[1]
    else:
        old[1].close()
