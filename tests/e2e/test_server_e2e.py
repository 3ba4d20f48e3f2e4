"""End to end over a real server in another process, on a free loopback port."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import scipy.signal as ss
from grpc_health.v1 import health_pb2, health_pb2_grpc

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer
from tests.engine.layers.test_conv_layer import ref_conv, ref_pool

RNG = np.random.default_rng(7)


def test_convolve_1d_signal(client: convserve.Client) -> None:
    x, h = RNG.standard_normal(10_000), RNG.standard_normal(31)
    result, info = client.convolve(x, h, return_info=True)
    np.testing.assert_allclose(result, ss.convolve(x, h), rtol=0, atol=1e-12 * np.abs(result).max())
    assert info.method in ("direct", "fft", "overlap_add") and info.compute_seconds > 0


def test_correlate_complex(client: convserve.Client) -> None:
    x = RNG.standard_normal(300) + 1j * RNG.standard_normal(300)
    h = RNG.standard_normal(20) + 1j * RNG.standard_normal(20)
    for mode in ("full", "same", "valid"):
        result = client.correlate(x, h, mode)
        np.testing.assert_allclose(result, ss.correlate(x, h, mode), atol=1e-10)
        assert result.dtype == np.complex128


def test_large_float32_image_with_7x7_kernel(client: convserve.Client) -> None:
    image = RNG.random((4096, 4096), dtype=np.float32)
    kernel = RNG.random((7, 7), dtype=np.float32)
    result = client.convolve(image, kernel, mode="same")
    assert result.dtype == np.float32 and result.shape == image.shape
    # Compare a band of rows with a float64 reference (the full reference takes too long).
    band = ss.convolve(image[:64].astype(np.float64), kernel.astype(np.float64), "same")[:61]
    assert np.max(np.abs(result[:61] - band)) <= 1e-5 * np.abs(band).max()


def test_uint8_image_axes_and_boundary(client: convserve.Client) -> None:
    image = RNG.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    box = np.ones((3, 3), np.uint8)
    result = client.convolve(image, box, mode="same", axes=(0, 1), boundary="edge", output_dtype="uint16")
    padded = np.pad(image.astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    expected = sum(padded[i : i + 40, j : j + 30] for i in range(3) for j in range(3))
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, expected)


def test_out_of_range_is_refused(client: convserve.Client) -> None:
    with pytest.raises(convserve.OutOfRangeError) as raised:
        client.convolve(np.array([200, 100], np.uint8), np.array([2, 2], np.uint8))
    assert raised.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert "uint16" in raised.value.details or "int16" in raised.value.details


def test_conv_layer(client: convserve.Client) -> None:
    x = RNG.standard_normal((2, 4, 9, 11)).astype(np.float32)
    w = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    result, info = client.conv_layer(x, w, b, stride=2, padding=1, groups=2, activation="relu", pool={"kind": "max", "kernel_size": 2}, return_info=True)
    conv = np.maximum(ref_conv(x, w, b, (2, 2), [(1, 1), (1, 1)], (1, 1), 2, "zeros"), 0)
    expected = ref_pool(conv, "max", (2, 2), (2, 2), (0, 0))
    assert result.dtype == np.float32 and result.shape == expected.shape
    assert np.max(np.abs(result - expected)) <= 1e-5 * np.abs(expected).max()
    assert info.method


def test_server_info(client: convserve.Client) -> None:
    info = client.server_info()
    assert info.version == convserve.__version__
    assert "uint8" in info.dtypes and "complex128" in info.dtypes and len(info.dtypes) == 14
    assert set(info.methods) == {"auto", "direct", "fft", "overlap_add"}
    assert info.max_elements == 2**24 and info.workers >= 1


def test_health_is_serving(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _tensor(array: np.ndarray) -> pb.Tensor:
    return codec.encode(array)


GOOD_IN1 = _tensor(np.ones((8, 8)))
GOOD_IN2 = _tensor(np.ones((3, 3)))


def _signal(**fields: object) -> pb.SignalRequest:
    request = pb.SignalRequest(in1=GOOD_IN1, in2=GOOD_IN2)
    for name, value in fields.items():
        if name == "axes":
            request.axes.values.extend(value)  # type: ignore[arg-type]
        elif isinstance(value, pb.Tensor):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


BAD_SIGNAL_REQUESTS = {
    "wrong byte count": (_signal(in1=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[4], data=b"\0" * 31)), "in1"),
    "unknown dtype": (_signal(in2=pb.Tensor(dtype=77, shape=[1], data=b"\0")), "in2"),
    "negative dimension": (_signal(in1=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[3, -2], data=b"")), "in1"),
    "overflowing dimensions": (_signal(in1=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2**62, 2**62, 2**62], data=b"")), "in1"),
    "valid mode shapes": (_signal(in1=_tensor(np.ones((3, 5))), in2=_tensor(np.ones((5, 3))), mode=pb.MODE_VALID), "in2"),
    "axes out of range": (_signal(axes=[5]), "axes"),
    "unknown mode": (_signal(mode=42), "mode"),
    "unknown method": (_signal(method=42), "method"),
    "unknown boundary": (_signal(boundary=42), "boundary"),
    "unknown output dtype": (_signal(output_dtype=42), "output_dtype"),
    "missing in2": (pb.SignalRequest(in1=GOOD_IN1), "in2"),
    "dimensionality mismatch": (_signal(in2=_tensor(np.ones(3))), "in2"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNAL_REQUESTS))
@pytest.mark.parametrize("rpc", ["Convolve", "Correlate"])
def test_bad_signal_requests_are_invalid_argument(server: RunningServer, case: str, rpc: str) -> None:
    request, field = BAD_SIGNAL_REQUESTS[case]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            getattr(stub, rpc)(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field), raised.value.details()
    error = convserve.errors.from_rpc_error(raised.value)
    assert isinstance(error, convserve.InvalidArgumentError) and isinstance(error, ValueError)
    assert error.field_violations and error.field_violations[0][0].startswith(field)


def _layer(**fields: object) -> pb.ConvLayerRequest:
    request = pb.ConvLayerRequest(input=_tensor(np.ones((1, 4, 6, 6), np.float32)), weight=_tensor(np.ones((2, 4, 3, 3), np.float32)))
    for name, value in fields.items():
        if isinstance(value, pb.Tensor):
            getattr(request, name).CopyFrom(value)
        elif isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


BAD_LAYER_REQUESTS = {
    "channel mismatch": (_layer(weight=_tensor(np.ones((2, 3, 3, 3), np.float32))), "weight"),
    "integer input": (_layer(input=_tensor(np.ones((1, 4, 6, 6), np.int32))), "input"),
    "unknown padding mode": (_layer(padding_mode=9), "padding_mode"),
    "zero stride": (_layer(stride=[0]), "stride"),
    "bad groups": (_layer(groups=3), "groups"),
    "wrong bias length": (_layer(bias=_tensor(np.ones(5, np.float32))), "bias"),
    "unknown activation": (_layer(activation=9), "activation"),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYER_REQUESTS))
def test_bad_layer_requests_are_invalid_argument(server: RunningServer, case: str) -> None:
    request, field = BAD_LAYER_REQUESTS[case]
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.ConvolutionServiceStub(channel).ConvLayer(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field), raised.value.details()


def test_client_side_validation_raises_value_errors(client: convserve.Client) -> None:
    with pytest.raises(ValueError):
        client.convolve([1, 2], [1], mode="middle")
    with pytest.raises(ValueError):
        client.conv_layer(np.ones((1, 1, 4)), np.ones((1, 1, 2)), groups=0)


def test_too_large_result_is_resource_exhausted_without_retry(client: convserve.Client) -> None:
    with pytest.raises(convserve.ResourceExhaustedError) as raised:
        client.convolve(np.ones(2**23, np.float32), np.ones(2**23 + 2, np.float32), method="fft")
    assert raised.value.retry_pushback_ms == -1


def test_server_keeps_serving_after_errors(client: convserve.Client) -> None:
    np.testing.assert_allclose(client.convolve([1.0, 2.0], [1.0, 1.0]), [1.0, 3.0, 2.0])


def test_request_id_in_trailing_metadata(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        _, call = stub.Convolve.with_call(pb.SignalRequest(in1=GOOD_IN1, in2=GOOD_IN2), timeout=10)
    assert any(key == "x-request-id" and len(value) == 16 for key, value in call.trailing_metadata())
