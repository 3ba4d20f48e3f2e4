"""Unary calls: check the headers, admit by the estimate, compute on the worker pool, encode.

On the event loop a call only checks its tensors' headers (cheap), estimates its working memory
and asks the pool for admission; decoding, planning and compute run on a worker, and the result is
encoded back on the event loop. A call whose work is tiny (:mod:`..admission.inline`) is admitted
the same way and computed right on the event loop: the hop to a worker would cost more.
"""

from __future__ import annotations

from typing import Any

import grpc
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission import limits, requests
from convserve_server.admission.weights import Entry, WeightsRegistry
from convserve_server.admission.workers import WorkerPool
from convserve_server.settings import Settings
from convserve_server.transport import compute, encode
from convserve_server.transport.calls import CallRecord
from convserve_server.transport.rpcs import RpcSpec


def registered(request: Any, weights: WeightsRegistry) -> Entry | None:
    """The registered weights a request names (None: inline weights); NotFound when unknown or evicted."""
    weights_id = requests.registered_id(request)
    return weights.get(weights_id) if weights_id else None


async def serve(spec: RpcSpec, request: Any, context: grpc.aio.ServicerContext, settings: Settings, pool: WorkerPool, weights: WeightsRegistry) -> Any:
    """Admit and run ``spec.compute`` on the pool; encode its result; map any failure to a status."""
    assert spec.compute is not None
    record = CallRecord(spec.name, context, spec.received(request))
    async with record.guard():
        spec.check_headers(request, settings)
        entry = registered(request, weights)
        nbytes = spec.estimated(request, entry)
        result, info = await pool.run(spec.compute, request, None, entry, settings, nbytes=nbytes, inline=spec.inline(request, entry))
    response = spec.respond(result, encode.compute_info(info))
    record.ok(info.method, result.nbytes)
    return response


async def register_weights(
    spec: RpcSpec, request: pb.RegisterWeightsRequest, context: grpc.aio.ServicerContext, settings: Settings, pool: WorkerPool, weights: WeightsRegistry
) -> pb.RegisterWeightsResponse:
    """Check, then decode, hash and store the weights on the pool; answer their id."""
    record = CallRecord(spec.name, context, len(request.weight.data) + len(request.bias.data))
    async with record.guard():
        spec.check_headers(request, settings)
        size = spec.estimated(request)
        limits.check_weights(size, weights.limit_bytes)
        entry = await pool.run(compute.register, request, weights, settings, nbytes=size)
    record.ok("", 0)
    return pb.RegisterWeightsResponse(weights_id=entry.id)
