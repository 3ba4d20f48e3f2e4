"""The computations that run on the worker threads: decode the request, compute, check the result's size.

Each takes the request (or a chunked call's header), the arrays assembled from its chunks (None
for a unary call), the registered weights it names (None: inline weights) and the settings, and
returns the result and the engine's CallInfo. The RPC table (:mod:`.rpcs`) names which one an
RPC runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy.typing as npt
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission import limits
from convserve_server.admission.weights import Entry, WeightsRegistry
from convserve_server.engine import conv_layer, conv_transpose
from convserve_server.engine.info import CallInfo
from convserve_server.engine.signal.convolution import execute
from convserve_server.engine.signal.planner import plan_signal_call
from convserve_server.settings import Settings
from convserve_server.transport import decode
from convserve_server.transport.decode import Arrays

Result = tuple[npt.NDArray[Any], CallInfo]


def signal(request: pb.SignalRequest, arrays: Arrays | None, settings: Settings, correlate: bool) -> Result:
    """Plan, check the result's size, then run a Convolve or Correlate call."""
    plan = plan_signal_call(**decode.signal_arguments(request, settings, arrays), correlate=correlate)
    limits.check_result(plan.output_shape, plan.out_dtype, settings)
    started = time.perf_counter()
    result = execute(plan)
    return result, CallInfo(plan.method, time.perf_counter() - started, tuple(plan.warnings))


def convolve(request: pb.SignalRequest, arrays: Arrays | None, entry: Entry | None, settings: Settings) -> Result:
    """Compute a Convolve call."""
    return signal(request, arrays, settings, correlate=False)


def correlate(request: pb.SignalRequest, arrays: Arrays | None, entry: Entry | None, settings: Settings) -> Result:
    """Compute a Correlate call."""
    return signal(request, arrays, settings, correlate=True)


def layer(request: pb.ConvLayerRequest, arrays: Arrays | None, entry: Entry | None, settings: Settings) -> Result:
    """Compute a ConvLayer call (its output's size is checked once it exists, before it is encoded)."""
    output, info = conv_layer(**decode.conv_layer_arguments(request, settings, arrays, entry), return_info=True)
    limits.check_result(output.shape, output.dtype, settings)
    return output, info


def transpose(request: pb.ConvTransposeRequest, arrays: Arrays | None, entry: Entry | None, settings: Settings) -> Result:
    """Compute a ConvTranspose call (its output's size was checked from the shapes before any work, by decode; checked again on the result)."""
    output, info = conv_transpose(**decode.conv_transpose_arguments(request, settings, arrays, entry), return_info=True)
    limits.check_result(output.shape, output.dtype, settings)
    return output, info


def register(request: pb.RegisterWeightsRequest, registry: WeightsRegistry, settings: Settings) -> Entry:
    """Decode, hash and store a RegisterWeights request's tensors."""
    weight = decode.decode_field(request, "weight", settings)
    bias = decode.decode_field(request, "bias", settings) if request.HasField("bias") else None
    return registry.register(weight, bias)
