"""Request checks through a real server: size limits, geometry, narrowing, NaN warnings, echoed ids.

The session server allows 2**24 elements per tensor (conftest).
"""

from __future__ import annotations

import convserve
import grpc
import numpy as np
import pytest
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.conftest import RunningServer

LIMIT = 2**24


def _call(server: RunningServer, rpc: str, request: object) -> grpc.RpcError:
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            getattr(stub, rpc)(request, timeout=60)
    return raised.value


def _pushback(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")


def test_a_tensor_beyond_max_elements_is_resource_exhausted_never_retried(server: RunningServer) -> None:
    big = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[LIMIT + 1], data=bytes(LIMIT + 1))
    error = _call(server, "Convolve", pb.SignalRequest(in1=big, in2=codec.encode(np.ones(3, np.uint8))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert _pushback(error) == "-1" and "max_elements" in error.details()
    converted = convserve.errors.from_rpc_error(error)
    assert isinstance(converted, convserve.ResourceExhaustedError) and converted.retry_pushback_ms == -1


def test_padding_beyond_max_elements_is_resource_exhausted(server: RunningServer) -> None:
    request = pb.ConvLayerRequest(
        input=codec.encode(np.ones((1, 1, 10, 10), np.float32)), weight=codec.encode(np.ones((1, 1, 3, 3), np.float32)), padding=pb.Padding(sizes=[2100])
    )  # 4210^2 > 2^24 padded elements
    error = _call(server, "ConvLayer", request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert _pushback(error) == "-1"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"padding": pb.Padding(sizes=[-40])}, "padding"),
        ({"stride": [0]}, "stride"),
        ({"pool": pb.Pool(kind=pb.POOL_KIND_MAX, kernel_size=[2], stride=[0])}, "pool.stride"),
    ],
)
def test_invalid_geometry_is_invalid_argument(server: RunningServer, fields: dict[str, object], field: str) -> None:
    request = pb.ConvLayerRequest(input=codec.encode(np.ones((1, 1, 10, 10), np.float32)), weight=codec.encode(np.ones((1, 1, 3, 3), np.float32)), **fields)
    error = _call(server, "ConvLayer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), error.details()


def test_a_long_weights_id_is_not_echoed_whole(server: RunningServer) -> None:
    weights_id = "f" * 100_000
    request = pb.ConvLayerRequest(input=codec.encode(np.ones((1, 1, 10, 10), np.float32)), weights_id=weights_id)
    error = _call(server, "ConvLayer", request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details()) < 400 and "..." in error.details()


def test_narrowing_output_dtype_is_refused(client: convserve.Client) -> None:
    with pytest.raises(convserve.InvalidArgumentError) as error:
        client.convolve(np.full(10, 1e6), np.ones(3), output_dtype="float16")
    assert "output_dtype" in str(error.value) and "narrower" in str(error.value)
    assert client.convolve(np.ones(10, np.float32), np.ones(3, np.float32), output_dtype="float64").dtype == np.float64


@pytest.mark.parametrize("method", ["direct", "fft", "overlap_add", "auto"])
def test_nan_in_an_input_warns_on_every_method(client: convserve.Client, method: str) -> None:
    x = np.ones(2000)
    x[100] = np.nan
    _, info = client.convolve(x, np.ones(7), method=method, return_info=True)
    assert any("NaN or Inf" in text for text in info.warnings), info.warnings


def test_long_lists_are_not_echoed_whole(server: RunningServer) -> None:
    request = pb.ConvLayerRequest(
        input=codec.encode(np.ones((1, 1, 10, 10), np.float32)), weight=codec.encode(np.ones((1, 1, 3, 3), np.float32)), stride=[0] * 100_000
    )
    error = _call(server, "ConvLayer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(error.details()) < 1200
    signal = pb.SignalRequest(in1=codec.encode(np.ones((3, 3))), in2=codec.encode(np.ones((2, 2))), axes=pb.Axes(values=[0] * 100_000))
    error = _call(server, "Convolve", signal)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(error.details()) < 1200


@pytest.mark.parametrize(
    "shape,kernel",
    [((1100, 700), (3, 3)), ((300_000,), (3,)), ((600, 500), (15, 15))],
    ids=["2-D bands over threads", "long 1-D, inputs checked beside numpy", "OpenCV DFT path"],
)
def test_nan_inf_and_overflow_warn_on_the_fused_checks(client: convserve.Client, shape: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    import scipy.signal as ss

    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    h = rng.standard_normal(kernel).astype(np.float32)
    result, info = client.convolve(x, h, mode="same", method="direct", return_info=True)
    assert not info.warnings
    np.testing.assert_allclose(result, ss.convolve(x.astype(np.float64), h.astype(np.float64), "same"), atol=1e-4 * np.abs(result).max())
    for bad in (np.nan, np.inf):
        y = x.copy()
        y.flat[y.size // 2 + 3] = bad  # the middle: where two threads' rows meet
        result, info = client.convolve(y, h, mode="same", method="direct", return_info=True)
        assert any("NaN or Inf" in text for text in info.warnings), info.warnings
        assert 0 < (~np.isfinite(result)).sum() <= h.size
    huge = np.full(shape, 3e38, np.float32)  # finite, but the sums overflow float32
    result, info = client.convolve(huge, np.abs(h) + 1, mode="same", method="direct", return_info=True)
    assert any("NaN or Inf" in text for text in info.warnings) and not np.isfinite(result).all()


def test_concurrent_callers_of_the_banded_path_get_their_own_results_and_warnings(client: convserve.Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    images = [rng.standard_normal((1100, 700)).astype(np.float32) for _ in range(6)]
    for i in (1, 4):
        images[i][550, 10 * i] = np.nan
    h = rng.standard_normal((3, 3)).astype(np.float32)
    expected = [client.convolve(img, h, mode="same", method="direct") for img in images]
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda img: client.convolve(img, h, mode="same", method="direct", return_info=True), images * 2))
    for k, (result, info) in enumerate(outcomes):
        np.testing.assert_array_equal(result, expected[k % 6])
        assert any("NaN or Inf" in text for text in info.warnings) == (k % 6 in (1, 4))
