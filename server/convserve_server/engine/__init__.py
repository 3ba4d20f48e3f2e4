"""The convserve engine: a plain numpy-in, numpy-out library (no gRPC).

``convolve`` and ``correlate`` follow ``scipy.signal``; ``conv_layer`` follows
``torch.nn.Conv1d/2d/3d`` with optional ReLU and pooling; ``conv_transpose`` follows
``torch.nn.functional.conv_transpose1d/2d/3d``.
"""

from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.transpose import conv_transpose
from convserve_server.engine.errors import EngineError, InvalidArgumentError, OutOfRangeError
from convserve_server.engine.info import CallInfo
from convserve_server.engine.signal.convolution import convolve, correlate

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
