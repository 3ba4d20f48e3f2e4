"""Admission estimates from headers alone: conservative for FFT methods, proportionate for direct."""

from __future__ import annotations

from convserve.v1 import convserve_pb2 as pb

from convserve_server import cost


def _request(n: int, m: int, method: int) -> pb.SignalRequest:
    return pb.SignalRequest(in1=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[n]), in2=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[m]),
                            method=method)


def test_direct_needs_a_few_output_sized_arrays_not_the_fft_work_arrays() -> None:
    n = 671_088_640  # 2.5 GB of float32
    direct = cost.estimate(_request(n, 1, pb.METHOD_DIRECT))
    inputs = 4 * (n + 1)
    assert inputs < direct <= inputs + cost.DIRECT_WORK_ARRAYS * 4 * (n + 1)  # float32 stays float32
    for method in (pb.METHOD_AUTO, pb.METHOD_FFT, pb.METHOD_OVERLAP_ADD, pb.METHOD_UNSPECIFIED):
        assert cost.estimate(_request(n, 1, method)) >= inputs + cost.FFT_WORK_ARRAYS * 8 * n


def test_estimates_grow_with_the_full_output() -> None:
    small, large = cost.estimate(_request(1000, 10, pb.METHOD_DIRECT)), cost.estimate(_request(1000, 1000, pb.METHOD_DIRECT))
    assert large > small
