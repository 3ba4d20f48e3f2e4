"""The client's public value types: registered ``Weights``, a call's ``ComputeInfo`` and the ``ServerInfo``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt


@dataclass(frozen=True)
class Weights:
    """Weights stored on the server by ``register_weights``; pass it in place of ``weight``.

    Attributes
    ----------
    id : str
        The server's content id (hex SHA-256 of dtype, shape and bytes; the same on every replica).
    weight, bias : numpy.ndarray
        Kept so the client can register them again if the server evicted them.
    """

    id: str
    weight: npt.NDArray[Any] = field(repr=False)
    bias: npt.NDArray[Any] | None = field(repr=False, default=None)


@dataclass(frozen=True)
class ComputeInfo:
    """What the server did: the method that ran, its compute time and any warnings."""

    method: str
    compute_seconds: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ServerInfo:
    """The server's version, limits and capabilities."""

    version: str
    max_elements: int
    max_request_bytes: int
    max_output_bytes: int
    max_concurrent_requests: int
    dtypes: tuple[str, ...]
    methods: tuple[str, ...]
    fftw_threads: int
    wisdom: str
    workers: int
