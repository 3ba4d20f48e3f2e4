"""Admission estimates from headers alone: what the call will run, never negative, after geometry checks."""

from __future__ import annotations

import numpy as np
import pytest
from convserve.v1 import convserve_pb2 as pb
from convserve_server.admission import estimates
from convserve_server.transport import decode
from convserve_server.engine import conv_layer
from convserve_server.engine import convolve
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.settings import Settings

from tests.server import rpc_entries
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

GIB = 1 << 30
DEFAULT_BUDGET = 4 * GIB


def _request(n: int, m: int, method: int, dtype: int = pb.DTYPE_FLOAT32) -> pb.SignalRequest:
    return pb.SignalRequest(in1=pb.Tensor(dtype=dtype, shape=[n]), in2=pb.Tensor(dtype=dtype, shape=[m]), method=method)


def test_direct_needs_a_few_output_sized_arrays_not_the_fft_work_arrays() -> None:
    n = 671_088_640  # 2.5 GB of float32
    direct = rpc_entries.estimate(_request(n, 1, pb.METHOD_DIRECT))
    inputs = 4 * (n + 1)
    assert inputs < direct <= inputs + estimates.DIRECT_WORK_ARRAYS * 4 * (n + 1)  # float32 stays float32
    assert rpc_entries.estimate(_request(n, 1, pb.METHOD_FFT)) >= inputs + estimates.FFT_WORK_ARRAYS * 4 * n  # single precision work


def test_auto_is_estimated_as_what_it_runs() -> None:
    n = (512 << 20) // 4  # a 512 MiB float32 signal and a 3-tap kernel: auto runs the direct sum
    x, h = np.ones(1000, np.float32), np.ones(3, np.float32)
    assert convolve(x, h, return_info=True)[1].method == "direct"
    direct = rpc_entries.estimate(_request(n, 3, pb.METHOD_DIRECT))
    for method in (pb.METHOD_AUTO, pb.METHOD_UNSPECIFIED):
        auto = rpc_entries.estimate(_request(n, 3, method))
        assert auto == direct and auto < DEFAULT_BUDGET  # was 7.5 GiB: refused as needing 8 GB
    assert rpc_entries.estimate(_request(n, 3, pb.METHOD_FFT)) > DEFAULT_BUDGET


def test_auto_with_a_long_kernel_is_estimated_as_a_transform() -> None:
    n, m = 1 << 22, 1 << 14
    auto = rpc_entries.estimate(_request(n, m, pb.METHOD_AUTO))
    assert auto > rpc_entries.estimate(_request(n, m, pb.METHOD_DIRECT)) // 2
    assert auto >= 4 * (n + m) + 3 * 4 * (n + m - 1)


def test_estimates_grow_with_the_full_output() -> None:
    small, large = rpc_entries.estimate(_request(1000, 10, pb.METHOD_DIRECT)), rpc_entries.estimate(_request(1000, 1000, pb.METHOD_DIRECT))
    assert large > small


def _layer(**fields: object) -> pb.ConvLayerRequest:
    request = pb.ConvLayerRequest(
        input=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 2, 16, 16], data=b"\0" * 2048),
        weight=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 2, 3, 3], data=b"\0" * 216),
    )
    for name, value in fields.items():
        target = request
        *path, last = name.split("__")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, list):
            getattr(target, last).extend(value)
        else:
            setattr(target, last, value)
    return request


def _transpose(**fields: list[int]) -> pb.ConvTransposeRequest:
    request = pb.ConvTransposeRequest(
        input=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 2, 8], data=b"\0" * 64), weight=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 3, 3], data=b"\0" * 72)
    )
    for name, value in fields.items():
        getattr(request, name).extend(value)
    return request


INVALID_GEOMETRY = {
    "negative padding": (_layer(padding__sizes=[-5]), "padding"),
    "zero stride": (_layer(stride=[0]), "stride"),
    "negative stride": (_layer(stride=[1, -1]), "stride"),
    "zero dilation": (_layer(dilation=[0]), "dilation"),
    "negative groups": (_layer(groups=-2), "groups"),
    "pool stride 0": (_layer(pool__kind=pb.POOL_KIND_MAX, pool__kernel_size=[2], pool__stride=[0]), "pool.stride"),
    "pool kernel 0": (_layer(pool__kind=pb.POOL_KIND_MAX, pool__kernel_size=[0]), "pool.kernel_size"),
    "pool negative padding": (_layer(pool__kind=pb.POOL_KIND_MAX, pool__kernel_size=[2], pool__padding=[-1]), "pool.padding"),
    "pool padding over half": (_layer(pool__kind=pb.POOL_KIND_MAX, pool__kernel_size=[2], pool__padding=[2]), "pool.padding"),
    "transpose negative padding": (_transpose(padding=[-3]), "padding"),
    "transpose zero stride": (_transpose(stride=[0]), "stride"),
    "transpose negative output_padding": (_transpose(output_padding=[-1]), "output_padding"),
    "transpose output_padding >= stride": (_transpose(stride=[2], output_padding=[2]), "output_padding"),
}


@pytest.mark.parametrize("case", sorted(INVALID_GEOMETRY))
def test_invalid_geometry_is_refused_before_the_estimate(case: str) -> None:
    request, field = INVALID_GEOMETRY[case]
    with pytest.raises(InvalidArgumentError) as error:
        rpc_entries.check_headers(request, Settings())
    assert error.value.field == field
    assert rpc_entries.estimate(request) >= 0


def test_pool_stride_zero_is_an_error_in_the_engine_too() -> None:
    x, w = np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32)
    request = _layer(pool__kind=pb.POOL_KIND_MAX, pool__kernel_size=[2], pool__stride=[0])
    with pytest.raises(InvalidArgumentError):
        conv_layer(x, w, **{k: v for k, v in decode.conv_layer_arguments(request, Settings()).items() if k not in ("input", "weight", "bias", "prepared")})


def test_valid_geometry_passes() -> None:
    rpc_entries.check_headers(_layer(stride=[2], padding__sizes=[1], dilation=[1, 2], groups=1), Settings())
    rpc_entries.check_headers(_layer(pool__kind=pb.POOL_KIND_AVG, pool__kernel_size=[2], pool__stride=[1], pool__padding=[1]), Settings())
    rpc_entries.check_headers(_transpose(stride=[2], output_padding=[1], dilation=[1]), Settings())
    rpc_entries.check_headers(_transpose(stride=[1], output_padding=[1], dilation=[2]), Settings())


small = st.integers(-4, 12)
dims = st.lists(st.integers(0, 9), min_size=0, max_size=5)
values = st.lists(small, max_size=3)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=dims,
    w=dims,
    stride=values,
    padding=values,
    dilation=values,
    output_padding=values,
    groups=st.integers(-2, 3),
    preset=st.sampled_from([0, 1, 2]),
    kind=st.sampled_from(["layer", "transpose", "signal"]),
    method=st.integers(0, 5),
    mode=st.integers(0, 5),
)
def test_every_estimate_is_non_negative(
    x: list[int],
    w: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    output_padding: list[int],
    groups: int,
    preset: int,
    kind: str,
    method: int,
    mode: int,
) -> None:
    if kind == "layer":
        request: object = pb.ConvLayerRequest(
            input=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=x),
            weight=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=w),
            stride=stride,
            dilation=dilation,
            groups=groups,
            padding=pb.Padding(sizes=padding, preset=preset),
        )
    elif kind == "transpose":
        request = pb.ConvTransposeRequest(
            input=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=x),
            weight=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=w),
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
        )
    else:
        request = pb.SignalRequest(in1=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=x), in2=pb.Tensor(dtype=pb.DTYPE_INT16, shape=w), method=method, mode=mode)
    assert rpc_entries.estimate(request) >= 0


@hsettings(max_examples=150, deadline=None)
@given(
    n=st.lists(st.integers(1, 3000), min_size=1, max_size=2),
    m=st.lists(st.integers(1, 200), min_size=1, max_size=2),
    dtype=st.sampled_from(["float32", "float64", "complex64", "uint8", "int16"]),
    mode=st.sampled_from(["full", "same", "valid", "circular"]),
    boundary=st.sampled_from(["fill", "edge"]),
)
def test_the_prediction_from_headers_is_the_planners_choice(n: list[int], m: list[int], dtype: str, mode: str, boundary: str) -> None:
    from convserve_server.engine.signal.planner import plan_signal_call, predict_method

    shape1, shape2 = tuple(n), tuple(m[: len(n)]) + (1,) * max(0, len(n) - len(m))
    if np.prod(shape1) > 300_000 or np.prod(shape2) > 2_000:
        return
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, shape1).astype(dtype)
    h = rng.integers(1, 3, shape2).astype(dtype) + (rng.random(shape2) if dtype.startswith(("float", "complex")) else 0)
    h = h.astype(dtype)
    try:
        plan = plan_signal_call(x, h, mode, "auto", None, boundary, 0, None, correlate=False)
    except InvalidArgumentError:
        return
    predicted = predict_method(shape1, shape2, x.dtype, h.dtype, mode, "auto", None, boundary != "fill", None)
    assert predicted.out_dtype == plan.out_dtype
    if plan.method == "direct" and predicted.method != "direct":
        return  # data (exactness, a separable kernel) made direct cheaper: less memory than predicted
    assert predicted.method == plan.method, (shape1, shape2, dtype, mode, boundary)
