"""The one server of ``convserve.compat`` and ``convserve.dask``: named once, one client per process."""

from __future__ import annotations

import os
import threading
from typing import Any

from convserve import _environment
from convserve._base import DEFAULT_TARGET
from convserve.client import Client

ENVIRONMENT = _environment.TARGET_VARIABLE

_lock = threading.Lock()
_target: str | None = None
_options: dict[str, Any] = {}
_client: tuple[int, Client] | None = None  # (pid, client): a forked child opens its own


def configure(target: str | None = None, **client_options: Any) -> None:
    """Name the server that ``convserve.compat`` and ``convserve.dask`` talk to.

    Parameters
    ----------
    target : str, optional
        ``host:port``, or ``ipv4:h1:p1,h2:p2`` for replicas. None: back to ``CONVSERVE_TARGET``,
        else ``127.0.0.1:50051``.
    **client_options
        Keyword arguments of :class:`convserve.Client` (timeout, token, TLS files, retry, ...).

    Examples
    --------
    >>> import convserve.compat                                   # doctest: +SKIP
    >>> convserve.compat.configure("127.0.0.1:50051", timeout=30)  # doctest: +SKIP
    """
    global _target, _options, _client
    with _lock:
        old, _client = _client, None
        _target, _options = target, dict(client_options)
    if old is not None and old[0] == os.getpid():
        old[1].close()


def settings() -> tuple[str, dict[str, Any]]:
    """The configured target and client options: :func:`configure`'s, else ``CONVSERVE_TARGET``, else the default."""
    with _lock:
        target = _target or _environment.target(DEFAULT_TARGET)
        return target, dict(_options)


def default_client() -> Client:
    """This process's client of the configured server (opened at first use)."""
    global _client
    target, options = settings()
    with _lock:
        if _client is None or _client[0] != os.getpid() or _client[1].target != target:
            _client = (os.getpid(), Client(target, **options))
        return _client[1]
