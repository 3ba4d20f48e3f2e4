"""Working-memory estimates of a request, from its tensors' headers only (before any decoding).

The estimates are deliberately conservative: inputs, the transform-size work arrays of the FFT
path (padded inputs, spectra, product) and the output. They only need the declared shapes and
dtypes, so malformed requests still get an estimate (the validation that follows refuses them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.engine.signal import overlap_add, planner
from convserve_server.engine.layers.transpose import sizes as transpose_sizes
from convserve_server.admission.weights import Entry
from convserve_server.admission.requests import METHODS, MODES

# Work arrays of the FFT path, in units of the full-size array of the working dtype: padded x,
# padded h, two spectra, the product, the inverse and the crop, plus the result and its encoded
# copy, and a margin for the call's fixed costs (plans, messages). Measured against the server's
# peak RSS for one call of 2e6 x 2e6: float64 about 7.2 arrays used, complex128 from float32
# inputs 7.1, float32 8.5; of 1e6 x 1e6 float64 7.8.
FFT_WORK_ARRAYS = 10
# Work arrays of an explicit direct call, in the same units: the output, an input converted to
# the working dtype, and the crop of a full-size result.
DIRECT_WORK_ARRAYS = 3
# Output-sized arrays of a ConvLayer call (see conv_layer_request_bytes).
LAYER_OUTPUT_ARRAYS = 5
# Below this many bytes the conservative (FFT) estimate is given without predicting the method
# (a prediction costs about 30 us; a small over-estimate costs nothing).
PREDICT_ABOVE = 64 << 20


def _shape(tensor: pb.Tensor) -> list[int]:
    """Declared shape with negative sizes clamped (validation reports them later)."""
    return [max(0, int(d)) for d in tensor.shape]


def _itemsize(tensor: pb.Tensor) -> int:
    dtype = codec.NUMPY_BY_DTYPE.get(tensor.dtype)
    return dtype.itemsize if dtype is not None else 1


def declared_bytes(tensor: pb.Tensor) -> int:
    """Bytes the tensor's header declares (whether its data is inline or streamed)."""
    return max(len(tensor.data), math.prod(_shape(tensor)) * _itemsize(tensor))


def signal_request_bytes(request: pb.SignalRequest) -> int:
    """Estimated peak bytes of a Convolve/Correlate request, for the method it will run.

    ``method=auto`` is resolved by the planner's own choice (:func:`planner.predict_method`,
    from the declared shapes and dtypes only), so a 3-tap kernel over a 512 MiB signal is
    estimated as the direct sum it runs, not as an FFT of the whole signal.
    """
    s1, s2 = _shape(request.in1), _shape(request.in2)
    received = declared_bytes(request.in1) + declared_bytes(request.in2)
    conservative = received + _fft_bytes(request, s1, s2, None)
    explicit = request.method in (pb.METHOD_DIRECT, pb.METHOD_OVERLAP_ADD)  # never charged the FFT's arrays
    if conservative <= PREDICT_ABOVE and not explicit:  # small: the largest method's estimate is cheaper to give
        return max(0, conservative)
    prediction = _prediction(request, s1, s2)
    if prediction is None:  # the call will be refused; estimate the largest method anyway
        return conservative
    full = math.prod(n + m - 1 for n, m in zip(prediction.x_shape, prediction.h_shape))
    work_itemsize = max(prediction.work_dtype.itemsize, 8 if prediction.work_dtype.kind == "c" else 4)
    output = math.prod(prediction.lengths) * _batch(prediction) * prediction.out_dtype.itemsize
    if prediction.method == "direct":  # no transforms: a 2.5 GB signal with a short kernel fits
        exact = all(d.kind in "biu" for d in (codec.NUMPY_BY_DTYPE[request.in1.dtype], codec.NUMPY_BY_DTYPE[request.in2.dtype]))
        arrays = DIRECT_WORK_ARRAYS + (1 if exact else 0)  # exact integers: an int64 accumulator too (measured 1.04-1.08x of 3)
        return max(0, received + arrays * full * work_itemsize)
    if prediction.method == "overlap_add":
        return max(0, received + _overlap_add_bytes(prediction, full, work_itemsize) + 2 * output)  # cast, encoded
    return max(0, received + _fft_bytes(request, s1, s2, prediction))


def _batch(prediction: Any) -> int:
    """Elements of the broadcast, not convolved axes."""
    return math.prod(max(a, b) for i, (a, b) in enumerate(zip(prediction.x_shape, prediction.h_shape)) if i not in prediction.axes)


def _prediction(request: pb.SignalRequest, s1: list[int], s2: list[int]) -> Any:
    """The planner's prediction for the request's headers, or None when they are invalid."""
    d1, d2 = codec.NUMPY_BY_DTYPE.get(request.in1.dtype), codec.NUMPY_BY_DTYPE.get(request.in2.dtype)
    if d1 is None or d2 is None or 0 in s1 or 0 in s2:
        return None
    output_dtype = codec.NUMPY_BY_DTYPE.get(request.output_dtype) if request.output_dtype else None
    fill = complex(request.fill_value.real, request.fill_value.imag)
    extends = request.boundary not in (pb.BOUNDARY_UNSPECIFIED, pb.BOUNDARY_FILL) or fill != 0
    try:
        return planner.predict_method(
            tuple(s1),
            tuple(s2),
            d1,
            d2,
            MODES.get(request.mode, "?"),
            METHODS.get(request.method, "?"),
            list(request.axes.values) if request.HasField("axes") else None,
            extends,
            output_dtype,
        )
    except (ValueError, TypeError, OverflowError):
        return None


def _fft_bytes(request: pb.SignalRequest, s1: list[int], s2: list[int], prediction: Any) -> int:
    """Work arrays of the whole-array FFT path (the old conservative formula)."""
    if prediction is not None:
        x_shape, h_shape = list(prediction.x_shape), list(prediction.h_shape)
    else:
        ndim = max(len(s1), len(s2), 1)
        x_shape, h_shape = [1] * (ndim - len(s1)) + s1, [1] * (ndim - len(s2)) + s2
    full = math.prod(a + b - 1 if a and b else 0 for a, b in zip(x_shape, h_shape))
    return FFT_WORK_ARRAYS * full * _fft_itemsize(request)


def _fft_itemsize(request: pb.SignalRequest) -> int:
    """Bytes per element of the FFT path's work arrays: the result's precision, complex when the
    inputs or the requested output are (a complex128 output from float32 inputs transforms in
    complex128), halved when everything is single precision."""
    kinds = [codec.NUMPY_BY_DTYPE.get(code) for code in (request.in1.dtype, request.in2.dtype, request.output_dtype) if code]
    known = [d for d in kinds if d is not None]
    complex_data = any(d.kind == "c" for d in known)
    single = bool(known) and all(d.itemsize <= (8 if d.kind == "c" else 4) for d in known)
    return (16 if complex_data else 8) // (2 if single else 1)


def _overlap_add_bytes(prediction: Any, full: int, work_itemsize: int) -> int:
    """Overlap-add: the accumulator, the crop and cast copies, and one group of block transforms
    (x's blocks and spectra, the product and its inverse: four buffers of at most GROUP_BYTES)."""
    return 3 * full * work_itemsize + 4 * min(overlap_add.GROUP_BYTES, 2 * full * work_itemsize)


def _registered(entry: Entry | None, request: Any) -> tuple[pb.Tensor, pb.Tensor]:
    """Headers (no data) of the weight and bias: the registered entry's, or the request's own."""
    if entry is None:
        return request.weight, request.bias

    def header(array: npt.NDArray[Any] | None) -> pb.Tensor:
        if array is None:
            return pb.Tensor()
        return pb.Tensor(dtype=codec.dtype_code(np.dtype(array.dtype), "weight"), shape=array.shape)

    return header(entry.weight), header(entry.bias)


def conv_layer_request_bytes(request: pb.ConvLayerRequest, entry: Entry | None = None) -> int:
    """Estimated peak bytes of a ConvLayer request (input, padded input, im2col columns, output).

    With registered weights (``entry``) their shape comes from the cache, not the request.
    """
    weight, bias = _registered(entry, request)
    x, w = _shape(request.input), _shape(weight)
    received = declared_bytes(request.input) + declared_bytes(weight) + declared_bytes(bias)
    itemsize = 8  # float64 accumulation may be used for small layers
    if len(x) < 2 or len(w) < 3:
        return received
    spatial = x[-(len(w) - 2) :]
    pads = [max(0, int(p)) for p in request.padding.sizes] or [0]  # negative: refused by requests.check_layer
    if len(pads) == 1:
        pads = pads * len(spatial)
    if request.padding.preset == pb.PADDING_PRESET_SAME:
        pads = [k for k in w[2:]]
    padded = math.prod(s + 2 * p for s, p in zip(spatial, pads + [0] * len(spatial)))
    batch_channels = math.prod(x[: len(x) - len(spatial)])
    kernel = math.prod(w[2:])
    out_channels = w[0]
    batch = math.prod(x[: len(x) - len(spatial) - 1]) if len(x) > len(spatial) + 1 else 1
    positions = _layer_positions(request, spatial, pads, w[2:], padded)
    columns = batch_channels * kernel * positions
    output = batch * out_channels * positions
    # The output about five times over: the result, a layout copy, its cast, the encoded bytes and the
    # message (measured: a 1x1 conv to 128 float64 channels peaked at 4.0 outputs).
    return max(0, received + itemsize * (batch_channels * padded + columns + LAYER_OUTPUT_ARRAYS * output))


def _layer_positions(request: pb.ConvLayerRequest, spatial: list[int], pads: list[int], kernel: list[int], padded: int) -> int:
    """Output positions of a strided layer (``padded`` at stride 1: the FFT path's work is padded-sized)."""
    nd = len(spatial)
    stride, dilation = _per_dim(request.stride, nd, 1), _per_dim(request.dilation, nd, 1)
    if all(st == 1 for st in stride):
        return padded
    sizes = [s + 2 * p for s, p in zip(spatial, pads + [0] * nd)]
    return math.prod(max(1, (n - d * (k - 1) - 1) // st + 1) for n, k, d, st in zip(sizes, kernel, dilation, stride))


def _per_dim(values: Any, nd: int, default: int) -> tuple[int, ...]:
    """A repeated option as one value per spatial dimension (clamped to sane values)."""
    items = [int(v) for v in values] or [default]
    if len(items) == 1:
        items = items * nd
    return tuple(max(default, v) for v in (items + [default] * nd)[:nd])


def conv_transpose_request_bytes(request: pb.ConvTransposeRequest, entry: Entry | None = None) -> int:
    """Estimated peak bytes of a ConvTranspose request: input, the largest phase's padded input
    and im2col columns, and the output twice (registered weights: their shape comes from the cache)."""
    weight, bias = _registered(entry, request)
    x, w = _shape(request.input), _shape(weight)
    received = declared_bytes(request.input) + declared_bytes(weight) + declared_bytes(bias)
    nd = len(w) - 2
    if nd < 1 or len(x) < nd + 1 or w[0] == 0:
        return received
    stride, dilation = _per_dim(request.stride, nd, 1), _per_dim(request.dilation, nd, 1)
    padding, output_padding = _per_dim(request.padding, nd, 0), _per_dim(request.output_padding, nd, 0)
    output, upsampled = transpose_sizes(tuple(x), tuple(w), max(1, request.groups), stride, padding, output_padding, dilation)
    if min(output[-nd:], default=0) <= 0:  # an empty output: validation refuses it (INVALID_ARGUMENT)
        return received
    # The largest phase: about 1 / stride of the outputs and of the taps on each axis.
    positions = math.prod(-(-max(0, o) // st) for o, st in zip(output[-nd:], stride))
    taps = math.prod(min(k, -(-k * math.gcd(d, st) // st)) for k, d, st in zip(w[2:], dilation, stride))
    lead = math.prod(x[:-nd])  # N * C_in
    columns = lead * taps * positions
    itemsize = 8  # float64 accumulation may be used for small layers
    return max(0, received + itemsize * (max(0, upsampled) + max(0, columns) + 2 * math.prod(max(0, o) for o in output)))


def register_request_bytes(request: pb.RegisterWeightsRequest, entry: Entry | None = None) -> int:
    """Bytes of a RegisterWeights request's weight and bias (what the worker decodes and hashes)."""
    return declared_bytes(request.weight) + (declared_bytes(request.bias) if request.HasField("bias") else 0)


# -- streams (ConvolveStream): the state a stream keeps and the work of one block --------------

# What a stream may have in flight before its first block says how large its blocks are.
FIRST_BLOCK_ALLOWANCE = 1 << 20
F64 = 8
C128 = 16


def state_bytes(taps: int, block: int, channels: int, exact: bool) -> int:
    """Bytes the convolver keeps between blocks for ``channels`` channels (after its first block).

    UPOLS: the kernel's partition spectra and the frequency delay line, (C, P, B+1) complex each,
    plus the previous and pending internal blocks. Exact integers: the per-channel kernel and the
    carried history.
    """
    if exact:
        return 2 * channels * taps * F64
    partitions = -(-taps // block)
    return 2 * channels * partitions * (block + 1) * C128 + 2 * channels * block * F64


def carried_bytes(samples: int, taps: int, block: int, channels: int, exact: bool) -> int:
    """Bytes a block of ``samples`` can leave held after its push (the arrays its carried samples view)."""
    if exact:
        return channels * (samples + taps) * F64
    return 2 * channels * (samples + block) * F64


def block_work_bytes(samples: int, taps: int, block: int, channels: int, exact: bool, first: bool) -> int:
    """Working memory of one push of ``samples`` samples of ``channels`` channels (the compute reservation).

    UPOLS: the float64 copy, the grown pending array, the output pieces (each a view of a 2B
    inverse transform) and their join, one copy of the delay line (``np.roll``), the cast, the
    channels-last copy and the encoded message. Exact: the extended history, its float64 and
    accumulator copies, the kernel in the accumulator, the outputs and their casts. The first
    block also sets the kernel spectra up (padded kernel and its transform).
    """
    n, c = samples, channels
    if exact:
        return c * F64 * (3 * taps + 10 * n + 64)
    partitions = -(-taps // block)
    delay_line = c * partitions * (block + 1) * C128
    work = delay_line + c * F64 * (7 * n + 13 * block)
    if first:
        work += 3 * c * partitions * 2 * block * F64
    return work
