"""After all the fuzzing: both fuzzed servers are alive, SERVING and still compute right.

This file sorts after every ``test_fuzz_*.py`` of this folder, so that pytest runs it last; its
fixtures are package-scoped (``conftest.py``), so these are the server instances the fuzz files used.
"""

from __future__ import annotations

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer


def test_server_still_serves_after_fuzzing(server: RunningServer, shared_server: RunningServer, stub: pb_grpc.ConvolutionServiceStub) -> None:
    for running in (server, shared_server):
        assert running.process.poll() is None, "a server process died during the fuzzing"
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = pb.SignalRequest(in1=codec.encode(np.ones(3)), in2=codec.encode(np.ones(2)))
    result = codec.decode(stub.Convolve(request, timeout=10).result)
    np.testing.assert_array_equal(result, [1, 2, 2, 1])
