"""Which calls run inline on the event loop: those whose work is tiny, judged from the headers.

Handing a call to a worker thread and back costs about 100 us of CPU on this kind of machine,
more than the compute of a small call (a 6-element convolution takes 10 us). A call whose
multiply-adds, counted from the declared shapes, are at most :data:`INLINE_WORK` runs inline:
still admitted by the pool (count and memory) and still counted in the metrics. Anything larger,
or anything the headers cannot bound cheaply, goes to the pool.
"""

from __future__ import annotations

import math

from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission.weights import Entry

# At most this many multiply-adds (about 20 us of numpy or OpenCV work, plus the plan's checks).
INLINE_WORK = 1 << 14
# The engine's direct method on more than one dimension makes one pass per kernel tap: a kernel
# of more taps than this is not tiny whatever the product says.
INLINE_TAPS = 64


def _size(tensor: pb.Tensor) -> int:
    return math.prod(max(0, int(d)) for d in tensor.shape)


def signal_work(request: pb.SignalRequest, entry: Entry | None = None) -> bool:
    """Whether a Convolve/Correlate request is tiny enough to run inline."""
    n1, n2 = _size(request.in1), _size(request.in2)
    if n1 * n2 > INLINE_WORK:
        return False
    return len(request.in1.shape) <= 1 or min(n1, n2) <= INLINE_TAPS


def layer_work(request: pb.ConvLayerRequest, entry: Entry | None = None) -> bool:
    """Whether a ConvLayer request is tiny enough to run inline (inline weights, no pooling).

    The work is counted over the padded input, so that a large padding of a small input (a large
    output) is never taken for tiny work.
    """
    if entry is not None or request.HasField("pool"):
        return False
    shape = [max(0, int(d)) for d in request.input.shape]
    weight = [max(0, int(d)) for d in request.weight.shape]
    nd = len(weight) - 2
    if nd < 1 or len(shape) not in (nd + 1, nd + 2):
        return False
    spatial, kernel = shape[-nd:], weight[2:]
    if request.padding.preset != pb.PADDING_PRESET_UNSPECIFIED:
        pads = [0 if request.padding.preset == pb.PADDING_PRESET_VALID else k for k in kernel]
    else:
        sizes = [max(0, int(p)) for p in request.padding.sizes] or [0]
        pads = sizes * nd if len(sizes) == 1 else sizes
    if len(pads) != nd or any(d > 1 for d in request.dilation):
        return False
    batch = shape[0] if len(shape) == nd + 2 else 1
    padded = math.prod(s + 2 * p for s, p in zip(spatial, pads))
    return batch * math.prod(weight) * padded <= INLINE_WORK
