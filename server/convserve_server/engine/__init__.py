"""The convserve engine: a plain numpy-in, numpy-out library (no gRPC).

``convolve`` and ``correlate`` follow ``scipy.signal``; ``conv_layer`` follows
``torch.nn.Conv1d/2d/3d`` with optional ReLU and pooling; ``conv_transpose`` follows
``torch.nn.functional.conv_transpose1d/2d/3d``.
"""

from .conv_layer import conv_layer
from .conv_transpose import conv_transpose
from .errors import EngineError, InvalidArgumentError, OutOfRangeError
from .info import CallInfo
from .signal import convolve, correlate

__all__ = [
    "CallInfo",
    "EngineError",
    "InvalidArgumentError",
    "OutOfRangeError",
    "conv_layer",
    "conv_transpose",
    "convolve",
    "correlate",
]
