"""CNN layers with ``torch.nn.functional.conv*d`` semantics: argument resolution, the path policy,
tiling, the fft / gemm / depthwise / onnx paths, pooling, the transposed convolution and the
prepared-forms cache. May use :mod:`..signal`'s FFT product; nothing below imports it."""

from convserve_server.engine.layers.conv_layer import conv_layer
from convserve_server.engine.layers.transpose import conv_transpose

__all__ = ["conv_layer", "conv_transpose"]
