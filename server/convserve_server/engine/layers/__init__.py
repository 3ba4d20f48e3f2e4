"""CNN layers with ``torch.nn.functional.conv*d`` semantics.

Argument resolution (``args``, ``planner``: a ``LayerPlan``), the path policy (``policy``) and the
``fft`` path's tiling (``tiling``), the ``fft`` / ``gemm`` / ``depthwise`` / ``onnx`` paths, max/avg
pooling (``pooling``: the spec and a reference; ``pooling_taps``: the fast tap-by-tap version),
the transposed convolution (``transpose``) and the prepared-forms cache (``prepared``).
``conv_layer`` runs a plan. These modules may use :mod:`convserve_server.engine.signal` (its FFT
product) and :mod:`convserve_server.engine.fft`; nothing in those imports the layers.
"""

from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.transpose import conv_transpose

__all__ = ["conv_layer", "conv_transpose"]
