"""The admission estimate of one call covers the server's real peak memory for it.

Each case runs once on a fresh server, and the growth of the server's peak RSS (VmHWM) over that
call is compared with what admission reserves for the same request (``rpc_entries.estimate``, the RPC table's estimate of its
headers). Before, an FFT with a complex128 ``output_dtype`` from float32 inputs used 1.98x its
estimate, a float64 FFT 1.17x, and shared-memory calls were estimated without their options.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.server import rpc_entries
from tests.conftest import start_server, stop_server

N = 1_000_000
F32, F64 = np.ones(N, np.float32), np.ones(N)
CASES: dict[str, dict[str, Any]] = {
    "float64 fft": dict(x=F64, h=F64, method="fft", output_dtype=None, boundary="fill", shared=False),
    "float32 fft": dict(x=F32, h=F32, method="fft", output_dtype=None, boundary="fill", shared=False),
    "float32 fft, complex128 output": dict(x=F32, h=F32, method="fft", output_dtype="complex128", boundary="fill", shared=False),
    "float64 auto, wrap": dict(x=F64, h=F64, method="auto", output_dtype=None, boundary="wrap", shared=False),
    "int64 direct (exact), 3 taps on 64 MiB": dict(
        x=np.arange(8_000_000, dtype=np.int64) % 7, h=np.ones(3, np.int64), method="direct", output_dtype=None, boundary="fill", shared=False
    ),
    "shared memory: float32 fft, complex128 output, wrap": dict(x=F32, h=F32, method="fft", output_dtype="complex128", boundary="wrap", shared=True),
}


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def _headers(client: convserve.Client, case: dict[str, Any]) -> pb.SignalRequest:
    """The request's headers as admission sees them (tensors without data)."""
    prepared = client._signal_request(case["x"], case["h"], "full", case["method"], None, case["boundary"], 0, case["output_dtype"])
    header = pb.SignalRequest()
    header.CopyFrom(prepared.shared.options if prepared.shared is not None else prepared.request)
    for name, array in (("in1", case["x"]), ("in2", case["h"])):
        getattr(header, name).CopyFrom(pb.Tensor(dtype=codec.dtype_code(array.dtype, name), shape=array.shape))
    if prepared.regions is not None:
        client._end_shared(prepared.regions, True)
    return header


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_estimate_covers_the_real_peak(name: str) -> None:
    case = CASES[name]
    server = start_server("--allow-shared-memory")
    try:
        with convserve.Client(server.target, shared_memory=case["shared"], shared_memory_threshold=0) as client:
            client.convolve(np.ones(10), np.ones(3))  # libraries loaded
            estimate = rpc_entries.estimate(_headers(client, case))
            before = _peak_kib(server.process.pid)
            result = client.convolve(case["x"], case["h"], method=case["method"], output_dtype=case["output_dtype"], boundary=case["boundary"])
            growth = (_peak_kib(server.process.pid) - before) * 1024
        assert result.shape == (case["x"].size + case["h"].size - 1,)
        assert growth <= estimate, f"{name}: peak RSS grew {growth / 2**20:.0f} MiB, estimated {estimate / 2**20:.0f} MiB"
    finally:
        assert stop_server(server) == 0


def test_an_unknown_option_is_invalid_argument_before_any_estimate() -> None:
    """A 6 MiB direct call with an unknown mode was estimated as the largest method and refused as
    never fitting a 64 MiB budget (RESOURCE_EXHAUSTED, pushback -1) instead of INVALID_ARGUMENT."""
    server = start_server("--memory-budget-bytes", str(64 * 2**20))
    try:
        signal = np.ones(6 * 2**20 // 8)
        with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 2**30)]) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            for field, value in (("mode", 99), ("method", 99), ("boundary", 99), ("output_dtype", 99)):
                request = pb.SignalRequest(in1=codec.encode(signal), in2=codec.encode(np.ones(3)), method=pb.METHOD_DIRECT)
                setattr(request, field, value)
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Convolve(request, timeout=30)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, raised.value.details())
                assert raised.value.details().startswith(field), raised.value.details()
    finally:
        assert stop_server(server) == 0


def test_geometry_is_judged_before_its_size() -> None:
    """An empty ConvTranspose output was INVALID_ARGUMENT with padding 10 but RESOURCE_EXHAUSTED
    ("needs an estimated 63999360002033 bytes") with padding 10**6; an unknown padding_mode with a
    huge padding was RESOURCE_EXHAUSTED too."""
    server = start_server()
    try:
        x = codec.encode(np.ones((1, 2, 8, 8), np.float32))
        w = codec.encode(np.ones((2, 2, 3, 3), np.float32))
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ConvolutionServiceStub(channel)
            for padding in (10, 10**6, 2**40):
                with pytest.raises(grpc.RpcError) as raised:
                    stub.ConvTranspose(pb.ConvTransposeRequest(input=x, weight=w, padding=[padding]), timeout=30)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (padding, raised.value.details())
                assert "empty" in raised.value.details()
            with pytest.raises(grpc.RpcError) as raised:
                stub.ConvLayer(pb.ConvLayerRequest(input=x, weight=w, padding_mode=9, padding=pb.Padding(sizes=[2**40])), timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
            assert raised.value.details().startswith("padding_mode")
    finally:
        assert stop_server(server) == 0


LAYERS = {
    "1x1 to 128 float64 channels (the output dominates)": (np.ones((1, 1, 256, 256)), np.ones((128, 1, 1, 1)), 1),
    "8x8 stride 4 (the estimate ignored the stride)": (np.ones((1, 16, 1024, 1024), np.float32), np.ones((16, 16, 8, 8), np.float32), 4),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_layer_estimate_covers_its_peak_and_a_strided_layer_fits(name: str) -> None:
    """A 1x1 layer to many channels used 1.99x its estimate; a strided layer was refused as never
    fitting (33.75 GiB estimated for a call that needs 564 MiB)."""
    x, w, stride = LAYERS[name]
    server = start_server("--memory-budget-bytes", str(2**30))
    try:
        header = pb.ConvLayerRequest(
            input=pb.Tensor(dtype=codec.dtype_code(x.dtype, "input"), shape=x.shape),
            weight=pb.Tensor(dtype=codec.dtype_code(w.dtype, "weight"), shape=w.shape),
            stride=[stride],
        )
        estimate = rpc_entries.estimate(header)
        assert estimate < 2**30
        with convserve.Client(server.target) as client:
            client.conv_layer(np.ones((1, 1, 8, 8)), np.ones((1, 1, 3, 3)))  # libraries loaded
            before = _peak_kib(server.process.pid)
            out = client.conv_layer(x, w, stride=stride)  # admitted under a 1 GiB budget
            growth = (_peak_kib(server.process.pid) - before) * 1024
        assert out.shape[:2] == (1, w.shape[0])
        assert growth <= estimate, f"{name}: peak RSS grew {growth / 2**20:.0f} MiB, estimated {estimate / 2**20:.0f} MiB"
    finally:
        assert stop_server(server) == 0
