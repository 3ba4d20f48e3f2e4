"""The RPC table: for each RPC, its request message, tensor fields, checks, estimate and compute.

This is the one place that knows which request type is which: the servicer routes each RPC to
the handler of its transport (unary, chunked, shared memory, stream) with its entry here, and
the handlers ask the entry what to check, estimate, compute and answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission import estimates, inline, requests
from convserve_server.admission.weights import Entry
from convserve_server.settings import Settings
from convserve_server.transport import compute, encode


@dataclass(frozen=True)
class RpcSpec:
    """One RPC's entry of the table.

    Attributes
    ----------
    name
        The RPC's name, as metrics and logs record it.
    message
        The request message type (a chunked call's header, a stream's config).
    tensor_fields
        The message's tensor fields.
    check
        Options and geometry checks of the message alone (INVALID_ARGUMENT), before the estimate.
    estimate
        Working-memory estimate from the headers, given the registered weights the request names.
    compute
        What runs on a worker thread (see :mod:`.compute`); None when the RPC's module runs it itself.
    result_field
        The response's tensor field (also the chunked result's field name).
    response
        The response message type of a unary call (``result_field`` and ``info``).
    inline
        Whether a unary call's work is tiny enough to run on the event loop (:mod:`..admission.inline`).
    """

    name: str
    message: type
    tensor_fields: tuple[str, ...]
    check: Callable[[Any], None]
    estimate: Callable[[Any, Entry | None], int]
    compute: Callable[..., Any] | None = None
    result_field: str = "result"
    response: type | None = None
    inline: Callable[[Any, Entry | None], bool] = lambda request, entry: False

    def check_headers(self, request: Any, settings: Settings, only: Iterable[str] | None = None) -> None:
        """Check the request's options and geometry, then each present tensor's header (or only those named).

        Raises InvalidArgumentError (malformed) or LimitExceeded (a tensor beyond max_elements).
        """
        self.check(request)
        requests.check_tensors(request, self.tensor_fields if only is None else only, settings)

    def received(self, request: Any) -> int:
        """Bytes of tensor data the request message carries inline."""
        return sum(len(getattr(request, name).data) for name in self.tensor_fields)

    def estimated(self, request: Any, entry: Entry | None = None) -> int:
        """The request's working-memory estimate; never negative."""
        return max(0, self.estimate(request, entry))

    def respond(self, result: npt.NDArray[Any], info: pb.ComputeInfo) -> Any:
        """The unary response carrying the ``result`` array (encoded straight into it) and ``info``."""
        assert self.response is not None, f"{self.name} has no unary response"
        response = self.response(info=info)
        encode.result_into(getattr(response, self.result_field), result)
        return response


def _signal_bytes(request: pb.SignalRequest, entry: Entry | None) -> int:
    return estimates.signal_request_bytes(request)


def _no_bytes(request: Any, entry: Entry | None) -> int:
    return 0


_SIGNAL = RpcSpec("", pb.SignalRequest, ("in1", "in2"), requests.check_signal, _signal_bytes, response=pb.SignalResponse, inline=inline.signal_work)
_LAYER = RpcSpec(
    "", pb.ConvLayerRequest, ("input", "weight", "bias"), requests.check_layer, estimates.conv_layer_request_bytes, None, "output", pb.ConvLayerResponse
)

CONVOLVE = dataclasses.replace(_SIGNAL, name="Convolve", compute=compute.convolve)
CORRELATE = dataclasses.replace(_SIGNAL, name="Correlate", compute=compute.correlate)
CONV_LAYER = dataclasses.replace(_LAYER, name="ConvLayer", compute=compute.layer)
CONV_TRANSPOSE = dataclasses.replace(
    _LAYER,
    name="ConvTranspose",
    message=pb.ConvTransposeRequest,
    check=requests.check_transpose,
    estimate=estimates.conv_transpose_request_bytes,
    compute=compute.transpose,
)
# Runs compute.register itself (its result is an entry of the registry, not a tensor).
REGISTER_WEIGHTS = RpcSpec("RegisterWeights", pb.RegisterWeightsRequest, ("weight", "bias"), requests.check_nothing, estimates.register_request_bytes)
CONVOLVE_CHUNKED = dataclasses.replace(CONVOLVE, name="ConvolveChunked")
CORRELATE_CHUNKED = dataclasses.replace(CORRELATE, name="CorrelateChunked")
CONV_LAYER_CHUNKED = dataclasses.replace(CONV_LAYER, name="ConvLayerChunked")
# The shared-memory RPCs check and estimate the SignalRequest their options and shared headers
# declare; their own module reads the regions, computes and writes the result.
CONVOLVE_SHARED = dataclasses.replace(CONVOLVE, name="ConvolveShared", compute=None, response=None)
CORRELATE_SHARED = dataclasses.replace(CORRELATE, name="CorrelateShared", compute=None, response=None)
CONVOLVE_STREAM = RpcSpec("ConvolveStream", pb.StreamConfig, ("kernel",), requests.check_nothing, _no_bytes)
