"""The convserve engine: a plain numpy-in, numpy-out library (no gRPC).

``convolve`` and ``correlate`` follow ``scipy.signal``; ``conv_layer`` follows
``torch.nn.Conv1d/2d/3d`` with optional ReLU and pooling; ``conv_transpose`` follows
``torch.nn.functional.conv_transpose1d/2d/3d``. Its knobs are one :class:`EngineConfig`, put in
force with :func:`configure` (the server does it once at start).
"""

from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.transpose import conv_transpose
from convserve_server.engine.config import EngineConfig, configure
from convserve_server.engine.errors import EngineError, InvalidArgumentError, OutOfRangeError
from convserve_server.engine.info import CallInfo
from convserve_server.engine.signal.convolution import convolve, correlate

__all__ = [
    "CallInfo",
    "EngineConfig",
    "EngineError",
    "InvalidArgumentError",
    "OutOfRangeError",
    "conv_layer",
    "configure",
    "conv_transpose",
    "convolve",
    "correlate",
]
