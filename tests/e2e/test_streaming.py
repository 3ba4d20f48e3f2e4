"""Streaming convolution: any block sizes give the one-shot full convolution (engine and over gRPC)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve_server.engine import InvalidArgumentError, OutOfRangeError
from convserve_server.engine.signal.streaming import StreamConvolver

from tests.conftest import RunningServer


def split(signal: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut ``signal`` into blocks of the given sizes (cycled), the last one whatever is left."""
    blocks, start, i = [], 0, 0
    while start < len(signal):
        size = sizes[i % len(sizes)]
        blocks.append(signal[start : start + size])
        start += size
        i += 1
    return blocks


def reference(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """One-shot full convolution per channel, in float64 / int64."""
    wide = np.int64 if signal.dtype.kind in "iu" else np.float64
    if len(signal) == 0:
        return np.zeros(signal.shape, wide)
    if signal.ndim == 1:
        return np.convolve(signal.astype(wide), kernel.reshape(-1).astype(wide))
    h = np.broadcast_to(kernel.reshape(kernel.shape[0], -1), (kernel.shape[0], signal.shape[1]))
    return np.stack([np.convolve(signal[:, c].astype(wide), h[:, c].astype(wide)) for c in range(signal.shape[1])], 1)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(0, 3000),
    taps=st.integers(1, 1500),
    channels=st.sampled_from([None, 1, 2]),
    sizes=st.lists(st.integers(0, 900), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_engine_blocks_of_any_size_equal_one_shot(length: int, taps: int, channels: int | None, sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((length,) if channels is None else (length, channels))
    kernel = rng.standard_normal(taps)
    convolver = StreamConvolver(kernel)
    blocks = split(signal, [max(1, s) for s in sizes])
    if not blocks:
        blocks = [signal]
    out = [convolver.push(b) for b in blocks] + [convolver.close()]
    result = np.concatenate([o for o in out if o.size] or [np.zeros((0,) if channels is None else (0, channels))])
    expected = reference(signal, kernel)
    assert result.shape == expected.shape
    assert np.max(np.abs(result - expected), initial=0) <= 1e-10 * max(1.0, np.abs(expected).max(initial=0))


def test_engine_integers_are_exact_and_overflow_is_refused() -> None:
    rng = np.random.default_rng(1)
    signal = rng.integers(-1000, 1000, 5000).astype(np.int32)
    kernel = rng.integers(-50, 50, 700).astype(np.int32)
    convolver = StreamConvolver(kernel, output_dtype="int64")
    out = np.concatenate([convolver.push(b) for b in split(signal, [333, 1, 1024])] + [convolver.close()])
    np.testing.assert_array_equal(out, reference(signal, kernel))
    tiny = StreamConvolver(np.full(10, 100, np.int8))
    with pytest.raises(OutOfRangeError):
        tiny.push(np.full(20, 100, np.int8))


def test_engine_refuses_changing_blocks() -> None:
    convolver = StreamConvolver(np.ones(3))
    convolver.push(np.ones((10, 2)))
    with pytest.raises(InvalidArgumentError):
        convolver.push(np.ones((10, 3)))
    with pytest.raises(InvalidArgumentError):
        convolver.push(np.ones(10, np.float32))


def test_echo_over_a_live_stream(client: convserve.Client) -> None:
    rate = 8000
    audio = np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate).reshape(-1, 1).repeat(2, 1)  # stereo
    kernel = np.zeros(rate // 4 + 1)
    kernel[0], kernel[-1] = 1.0, 0.5  # the seeds' echo: the sound, then half of it 250 ms later
    blocks = split(audio, [1024])
    out = list(client.convolve_stream(iter(blocks), kernel))
    result = np.concatenate(out)
    assert result.shape == (len(audio) + len(kernel) - 1, 2)
    np.testing.assert_allclose(result, reference(audio, kernel), atol=1e-9)
    assert len(out) >= len(blocks) // 2  # output flows while the signal is still coming


def test_per_channel_kernel_and_integers(client: convserve.Client) -> None:
    rng = np.random.default_rng(3)
    signal = rng.integers(0, 256, (3000, 2)).astype(np.uint8)
    kernel = rng.integers(0, 4, (40, 2)).astype(np.uint8)
    result = np.concatenate(list(client.convolve_stream(split(signal, [100, 7, 999]), kernel, output_dtype="int32")))
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, reference(signal, kernel))


def test_async_stream(server: RunningServer) -> None:
    signal = np.random.default_rng(4).standard_normal(20_000).astype(np.float32)
    kernel = np.random.default_rng(5).standard_normal(4800).astype(np.float32)

    async def blocks() -> AsyncIterator[np.ndarray]:
        for block in split(signal, [512, 2048]):
            yield block

    async def run() -> np.ndarray:
        async with convserve.AsyncClient(server.target) as client:
            return np.concatenate([b async for b in client.convolve_stream(blocks(), kernel)])

    result = asyncio.run(run())
    assert result.dtype == np.float32
    expected = reference(signal, kernel)
    assert np.max(np.abs(result - expected)) <= 1e-5 * np.abs(expected).max()


def _raw(server: RunningServer, messages: list[pb.StreamRequest]) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            list(pb_grpc.ConvolutionServiceStub(channel).ConvolveStream(iter(messages), timeout=10))
    return raised.value


def test_malformed_streams(server: RunningServer) -> None:
    block = pb.StreamRequest(block=codec.encode(np.ones(4)))
    config = pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(np.ones(3))))
    cases: list[tuple[list[pb.StreamRequest], str]] = [
        ([block], "config"),
        ([config, config], "block"),
        ([pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(np.ones((2, 2, 2)))))], "kernel"),
        ([config, pb.StreamRequest(block=pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=b"12"))], "block"),
        ([config, block, pb.StreamRequest(block=codec.encode(np.ones(4, np.float32)))], "block"),
    ]
    for messages, field in cases:
        error = _raw(server, messages)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert error.details().startswith(field), error.details()


def test_stream_ends_with_the_tail_only_when_the_client_closes(client: convserve.Client) -> None:
    def blocks() -> Iterator[np.ndarray]:
        yield np.ones(5)

    out = list(client.convolve_stream(blocks(), np.ones(3)))
    np.testing.assert_allclose(np.concatenate(out), np.convolve(np.ones(5), np.ones(3)))


def test_stream_messages_carry_the_engine_warnings(server: RunningServer) -> None:
    block = np.ones(4096)
    block[100] = np.nan
    messages = [
        pb.StreamRequest(config=pb.StreamConfig(kernel=codec.encode(np.ones(3)))),
        pb.StreamRequest(block=codec.encode(np.ones(4096))),
        pb.StreamRequest(block=codec.encode(block)),
    ]
    with grpc.insecure_channel(server.target) as channel:
        replies = list(pb_grpc.ConvolutionServiceStub(channel).ConvolveStream(iter(messages), timeout=30))
    warnings = [w for reply in replies for w in reply.warnings]
    assert warnings and any("NaN" in w for w in warnings), warnings
    assert sum(codec.decode(r.block, "block").shape[0] for r in replies) == 2 * 4096 + 2


def test_stream_warnings_reach_the_caller_as_runtime_warnings(client: convserve.Client) -> None:
    blocks = [np.ones(8), np.array([1.0, np.nan, 1.0]), np.ones(8)]
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        out = np.concatenate(list(client.convolve_stream(iter(blocks), np.ones(3))))
    assert out.shape == (21,) and np.isnan(out).any()
