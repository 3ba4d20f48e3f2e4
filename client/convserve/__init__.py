"""convserve: the thin client of the convserve convolution service.

Depends only on grpcio, protobuf and numpy. ``convserve.Client`` computes
``scipy.signal.convolve``/``correlate`` and ``torch.nn.ConvNd`` layers on a server.
"""

from convserve._base import BaseClient
from convserve._retry import RetryPolicy
from convserve._tiles import TiledComputeInfo
from convserve._types import ComputeInfo, ServerInfo, Weights
from convserve.aio import AsyncClient
from convserve.client import Client
from convserve.errors import (
    CancelledError,
    ConvserveError,
    DeadlineExceededError,
    FailedPreconditionError,
    GradientNotComputedWarning,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ProxyError,
    ProxyUnavailableError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

from convserve._version import __version__

__all__ = [
    "AsyncClient",
    "RetryPolicy",
    "BaseClient",
    "CancelledError",
    "Client",
    "ComputeInfo",
    "ConvserveError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GradientNotComputedWarning",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ProxyError",
    "ProxyUnavailableError",
    "ResourceExhaustedError",
    "ServerInfo",
    "TiledComputeInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "Weights",
    "__version__",
]
