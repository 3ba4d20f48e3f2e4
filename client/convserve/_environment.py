"""The client's one reader of the environment: the default server and token of the command line,
``convserve.compat`` and ``convserve.dask`` (a ``Client`` itself reads nothing from the environment)."""

from __future__ import annotations

import os

TARGET_VARIABLE = "CONVSERVE_TARGET"
TOKEN_VARIABLE = "CONVSERVE_TOKEN"


def target(default: str) -> str:
    """``$CONVSERVE_TARGET`` when set and not empty, else ``default``."""
    return os.environ.get(TARGET_VARIABLE) or default


def token() -> str | None:
    """``$CONVSERVE_TOKEN`` when set and not empty, else None."""
    return os.environ.get(TOKEN_VARIABLE) or None
