"""Signal convolution with ``scipy.signal`` semantics: options, the planner and its cost model, the
direct, FFT-product and overlap-add methods, exact integers and streaming. Built on :mod:`..fft`."""

from convserve_server.engine.signal.convolution import convolve, correlate

__all__ = ["convolve", "correlate"]
