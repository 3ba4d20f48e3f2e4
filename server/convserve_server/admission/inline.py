"""Which calls run inline on the event loop: those whose work is tiny, judged from the headers.

Handing a call to a worker thread and back costs about 100 us of CPU on this kind of machine,
more than the compute of a small call (a 6-element convolution takes 10 us). A Convolve or
Correlate call whose multiply-adds, counted from the declared shapes, are at most
:data:`INLINE_WORK` runs inline: still admitted by the pool (count and memory) and still counted
in the metrics. Anything larger, or anything the headers cannot bound cheaply, goes to the pool.
Layers never run inline: the smallest ConvLayer still takes 150-250 us in the engine (measured
here: a 1x1x8x8 input with 2 3x3 filters, 0.23 ms), more than a call on the event loop may take.
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
