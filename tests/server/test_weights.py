"""Registered weights: the registry (ids, LRU by bytes, prepared forms) and RegisterWeights /
ConvLayer.weights_id / ConvTranspose end to end against real servers."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

import convserve
from convserve import codec
from convserve.errors import from_rpc_error
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.errors import LimitExceeded, NotFound
from convserve_server.settings import SettingsError, load
from convserve_server.transport.status import failure_for
from convserve_server.admission.weights import ENTRY_OVERHEAD_BYTES, PREPARED_OVERHEAD_BYTES, WeightsRegistry, weights_id

from tests.conftest import RunningServer, start_server, stop_server
from tests.engine.layers.test_conv_layer import ref_conv
from tests.engine.layers.test_conv_transpose import ref_conv_transpose

RNG = np.random.default_rng(5)


def expected_id(weight: np.ndarray, bias: np.ndarray | None) -> str:
    """The documented id, computed here from scratch."""
    text = b"convserve-weights-v1\n"
    text += f"weight:{weight.dtype.name}:{','.join(map(str, weight.shape))}\n".encode() + weight.astype(weight.dtype.newbyteorder("<")).tobytes()
    if bias is None:
        text += b"bias:none\n"
    else:
        text += f"bias:{bias.dtype.name}:{bias.shape[0]}\n".encode() + bias.astype(bias.dtype.newbyteorder("<")).tobytes()
    return hashlib.sha256(text).hexdigest()


def layer(c_out: int = 4, c_in: int = 3, k: int = 3, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    return RNG.standard_normal((c_out, c_in, k, k)).astype(dtype), RNG.standard_normal(c_out).astype(dtype)


# --------------------------------------------------------------------------- the registry


def test_id_is_the_documented_sha256() -> None:
    w, b = layer()
    assert weights_id(w, b) == expected_id(w, b)
    assert weights_id(w, None) == expected_id(w, None) != weights_id(w, b)
    assert weights_id(w.astype(">f8"), b.astype(">f8")) == weights_id(w, b)  # the values count, not the byte order
    assert weights_id(w.reshape(4, 3, 9, 1), b) != weights_id(w, b)  # same bytes, other shape
    assert weights_id(w.astype(np.float32), b.astype(np.float32)) != weights_id(w, b)


def test_register_twice_and_lru_by_bytes() -> None:
    (wa, ba), (wb, bb), (wc, bc) = layer(), layer(), layer()
    size = wa.nbytes + ba.nbytes + ENTRY_OVERHEAD_BYTES
    registry = WeightsRegistry(2 * size + 10)
    a = registry.register(wa, ba)
    assert registry.register(wa.copy(), ba.copy()) is a and len(registry) == 1
    assert not a.weight.flags.writeable and a.id == expected_id(wa, ba)
    b = registry.register(wb, bb)
    assert registry.get(a.id) is a  # a is now the most recently used
    registry.register(wc, bc)
    assert a.id in registry and b.id not in registry and registry.evictions == 1
    assert registry.total_bytes == 2 * size
    with pytest.raises(NotFound, match="register the weights again"):
        registry.get(b.id)
    with pytest.raises(LimitExceeded, match="weights_cache_bytes"):
        registry.register(*layer(c_out=40))
    assert wa.flags.writeable  # the caller's array is left alone


def test_prepared_forms_count_against_the_cache() -> None:
    (wa, ba), (wb, bb) = layer(), layer()
    size = wa.nbytes + ba.nbytes + ENTRY_OVERHEAD_BYTES
    small, packed = 80 + PREPARED_OVERHEAD_BYTES, 480 + PREPARED_OVERHEAD_BYTES
    registry = WeightsRegistry(2 * size + small + 10)
    a, b = registry.register(wa, ba), registry.register(wb, bb)
    b.prepared["small"] = np.zeros(10)  # fits
    assert registry.total_bytes == 2 * size + small and len(b.prepared) == 1
    b.prepared["packed"] = (np.zeros(50), np.zeros(10))  # needs room: a (least recently used) goes
    assert a.id not in registry and registry.total_bytes == size + small + packed
    b.prepared["huge"] = np.zeros(10_000)  # could never fit: not kept, b stays
    assert "huge" not in b.prepared and b.id in registry
    del b.prepared["packed"]
    assert registry.total_bytes == size + small and list(b.prepared) == ["small"]
    a.prepared["late"] = np.zeros(10)  # an evicted entry's store no longer counts
    assert registry.total_bytes == size + small


def test_objects_without_nbytes_count_as_the_weights() -> None:
    w, b = layer(64, 64)  # 295 KiB: more than the 64 KiB minimum
    registry = WeightsRegistry(10 << 20)
    entry = registry.register(w, b)
    before = registry.total_bytes
    entry.prepared["session"] = object()
    entry.prepared["meta"] = ("key", 3, None)
    assert registry.total_bytes - before == w.nbytes + b.nbytes + len("key") + 2 * PREPARED_OVERHEAD_BYTES


def test_invalid_weights_name_the_field() -> None:
    registry = WeightsRegistry(1 << 20)
    w, b = layer()
    for weight, bias, field in (
        (w.astype(np.int32), None, "weight"),
        (w[0, 0], None, "weight"),
        (w[:, :, :0], None, "weight"),
        (w, b.astype(np.float32), "bias"),
        (w, b.reshape(2, 2), "bias"),
    ):
        with pytest.raises(InvalidArgumentError) as raised:
            registry.register(weight, bias)
        assert raised.value.field == field


def test_concurrent_registration_keeps_the_books() -> None:
    weights = [layer() for _ in range(12)]
    registry = WeightsRegistry(5 * (weights[0][0].nbytes + weights[0][1].nbytes + ENTRY_OVERHEAD_BYTES))

    def work(offset: int) -> None:
        for i in range(60):
            entry = registry.register(*weights[(i + offset) % len(weights)])
            entry.prepared[i % 3] = np.zeros(5)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = [registry.peek(weights_id(w, b)) for w, b in weights]
    assert registry.total_bytes == sum(e.nbytes for e in listed if e is not None) <= registry.limit_bytes


def test_entries_are_bounded_by_count_and_charged_their_overhead() -> None:
    tiny = [np.full((1, 1, 1), i, np.float32) for i in range(50)]
    by_count = WeightsRegistry(1 << 30, max_entries=10)
    entries = [by_count.register(w) for w in tiny]
    assert len(by_count) == 10 and by_count.evictions == 40  # bytes are far from the limit
    assert [e.id in by_count for e in entries] == [False] * 40 + [True] * 10
    assert by_count.total_bytes == 10 * (4 + ENTRY_OVERHEAD_BYTES)
    # Four-byte weights count their bookkeeping: 20 of them fill 20 entries' worth of bytes, not 80 bytes.
    by_bytes = WeightsRegistry(20 * (4 + ENTRY_OVERHEAD_BYTES))
    for w in tiny:
        by_bytes.register(w)
    assert len(by_bytes) == 20
    entry = by_bytes.register(np.full((1, 1, 1), 99, np.float32))
    entry.prepared["x"] = np.zeros(1)  # the store's additions never evict the entry itself
    assert entry.id in by_bytes and len(by_bytes) == 19
    with pytest.raises(ValueError, match="max_entries"):
        WeightsRegistry(1 << 20, max_entries=0)


def test_setting_and_status() -> None:
    assert load(environ={}).weights_cache_bytes == 1 << 30
    assert load({"weights_cache_bytes": 4096}, environ={}).weights_cache_bytes == 4096
    assert load(environ={"CONVSERVE_WEIGHTS_CACHE_BYTES": "123"}).weights_cache_bytes == 123
    with pytest.raises(SettingsError, match="weights_cache_bytes"):
        load(environ={"CONVSERVE_WEIGHTS_CACHE_BYTES": "0"})
    assert failure_for(NotFound("gone"), "id").code == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- end to end


def test_register_twice_gives_the_documented_id(client: convserve.Client) -> None:
    for dtype in (np.float64, np.float32):
        w, b = layer(dtype=dtype)
        first, second = client.register_weights(w, b), client.register_weights(w.copy(), b.copy())
        assert first.id == second.id == expected_id(w, b)
        assert client.register_weights(w).id == expected_id(w, None)


def test_conv_layer_with_a_handle_equals_the_raw_tensors(client: convserve.Client) -> None:
    w, b = layer(6, 4)
    x = RNG.standard_normal((2, 4, 12, 10))
    handle = client.register_weights(w, b)
    for kwargs in ({}, {"stride": 2, "padding": 1}, {"padding": "same", "activation": "relu", "pool": {"kind": "max", "kernel_size": 2}}):
        for _ in range(2):  # the second call may use the prepared forms
            np.testing.assert_allclose(client.conv_layer(x, handle, **kwargs), client.conv_layer(x, w, b, **kwargs), rtol=1e-12, atol=1e-12)
    with pytest.raises(convserve.InvalidArgumentError, match="bias"):
        client.conv_layer(x, handle, b)


def test_large_activations_with_a_handle_travel_in_chunks(server: RunningServer) -> None:
    w, b = layer(2, 3)
    x = RNG.standard_normal((1, 3, 64, 64))
    with convserve.Client(server.target, chunk_threshold=8 * 1024) as chunking:
        handle = chunking.register_weights(w, b)
        np.testing.assert_allclose(chunking.conv_layer(x, handle, padding=1), chunking.conv_layer(x, w, b, padding=1), rtol=1e-12, atol=1e-12)


def test_conv_transpose_over_the_wire(client: convserve.Client) -> None:
    x = RNG.standard_normal((2, 4, 5, 6))
    w = RNG.standard_normal((4, 3, 3, 2))
    b = RNG.standard_normal(6)
    expected = ref_conv_transpose(x, w, b, (2, 3), (1, 0), (1, 2), 2, (1, 1))
    result, info = client.conv_transpose(x, w, b, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, return_info=True)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    assert info.method and info.compute_seconds >= 0
    handle = client.register_weights(w, b)
    for _ in range(2):
        np.testing.assert_allclose(
            client.conv_transpose(x, handle, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2), expected, rtol=1e-12, atol=1e-12
        )
    single = client.conv_transpose(x[0].astype(np.float32), w.astype(np.float32), stride=2, groups=2)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, ref_conv_transpose(x[:1], w, None, (2, 2), (0, 0), (0, 0), 2, (1, 1))[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(convserve.InvalidArgumentError) as raised:
        client.conv_transpose(x, w, stride=2, output_padding=2, groups=2)
    assert raised.value.field_violations[0][0] == "output_padding"
    with pytest.raises(convserve.ResourceExhaustedError) as too_large:  # the session server allows 2**24 elements
        client.conv_transpose(np.ones((1, 1, 4)), np.ones((1, 1, 1)), stride=2**23)
    assert too_large.value.retry_pushback_ms == -1 and "exceeds the limit" in too_large.value.details


def test_unknown_id_is_not_found(server: RunningServer, client: convserve.Client) -> None:
    w, b = layer()
    x = RNG.standard_normal((1, 3, 8, 8))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        for call, request in (
            (stub.ConvLayer, pb.ConvLayerRequest(input=codec.encode(x), weights_id="0" * 64)),
            (stub.ConvTranspose, pb.ConvTransposeRequest(input=codec.encode(x), weights_id="f" * 64)),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "register" in raised.value.details()
            error = from_rpc_error(raised.value)
            assert isinstance(error, convserve.NotFoundError) and error.code == grpc.StatusCode.NOT_FOUND
    # A handle the server never saw: the client registers the weights and the call succeeds.
    stale = convserve.Weights("0" * 64, w, b)
    np.testing.assert_allclose(client.conv_layer(x, stale, padding=1), client.conv_layer(x, w, b, padding=1), rtol=1e-12)


def test_weight_and_weights_id_together_are_refused(server: RunningServer) -> None:
    w, b = layer()
    x = RNG.standard_normal((1, 3, 8, 8))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        registered = stub.RegisterWeights(pb.RegisterWeightsRequest(weight=codec.encode(w)), timeout=10).weights_id
        both = [
            (stub.ConvLayer, pb.ConvLayerRequest(input=codec.encode(x), weight=codec.encode(w), weights_id=registered)),
            (stub.ConvLayer, pb.ConvLayerRequest(input=codec.encode(x), bias=codec.encode(b), weights_id=registered)),
            (stub.ConvTranspose, pb.ConvTransposeRequest(input=codec.encode(x), weight=codec.encode(w), weights_id=registered)),
        ]
        for call, request in both:
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert from_rpc_error(raised.value).field_violations[0][0] == "weights_id"
        with pytest.raises(grpc.RpcError) as raised:  # integers cannot be a layer's weights
            stub.RegisterWeights(pb.RegisterWeightsRequest(weight=codec.encode(np.ones((2, 2, 3), np.int32))), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def small_cache() -> Iterator[tuple[RunningServer, str]]:
    """A server whose weights cache holds two (4, 3, 3, 3) float64 layers (with their overhead), with metrics on."""
    running = start_server("--weights-cache-bytes", str(2 * (896 + ENTRY_OVERHEAD_BYTES) + 100), "--metrics-port", "0", "--log-level", "WARNING")
    assert running.process.stdout is not None
    metrics_url = running.process.stdout.readline().strip().rsplit(" ", 1)[-1]
    yield running, metrics_url
    assert stop_server(running) == 0


def _metric(url: str, line_start: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return next((float(line.rsplit(" ", 1)[-1]) for line in text.splitlines() if line.startswith(line_start)), 0.0)


def test_eviction_then_transparent_registration(small_cache: tuple[RunningServer, str]) -> None:
    server, metrics_url = small_cache
    (wa, ba), (wb, bb), (wc, bc) = layer(), layer(), layer()
    x = RNG.standard_normal((1, 3, 8, 8))
    with convserve.Client(server.target) as client, grpc.insecure_channel(server.target) as channel:
        a = client.register_weights(wa, ba)
        client.register_weights(wb, bb)
        client.register_weights(wc, bc)  # only two fit: a, the least recently used, is evicted
        stub = pb_grpc.ConvolutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ConvLayer(pb.ConvLayerRequest(input=codec.encode(x), weights_id=a.id), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        not_found = _metric(metrics_url, 'convserve_requests_total{code="NOT_FOUND",rpc="ConvLayer"}')
        np.testing.assert_allclose(client.conv_layer(x, a), client.conv_layer(x, wa, ba), rtol=1e-12, atol=1e-12)
        assert _metric(metrics_url, 'convserve_requests_total{code="NOT_FOUND",rpc="ConvLayer"}') == not_found + 1
        with pytest.raises(convserve.ResourceExhaustedError) as too_large:
            client.register_weights(*layer(c_out=30))
        assert too_large.value.retry_pushback_ms == -1 and "weights_cache_bytes" in too_large.value.details


def test_serving_loop_sends_only_the_activations(small_cache: tuple[RunningServer, str]) -> None:
    server, metrics_url = small_cache
    w, b = layer()
    x = RNG.standard_normal((2, 3, 16, 16))
    received = 'convserve_received_bytes_total{rpc="ConvLayer"}'
    with convserve.Client(server.target) as client:
        handle = client.register_weights(w, b)
        request = client._layer_request(x, handle, None, 1, 1, 1, 1, "zeros", None, None).request
        assert request.ByteSize() < x.nbytes + 200 and not request.HasField("weight")
        before = _metric(metrics_url, received)
        for _ in range(5):
            client.conv_layer(x, handle, padding=1)
        assert _metric(metrics_url, received) - before == 5 * x.nbytes


def test_async_client(server: RunningServer) -> None:
    w, b = layer(4, 4)  # square: usable as a layer and as a transposed layer
    x = RNG.standard_normal((1, 4, 5, 5))

    async def run() -> tuple[np.ndarray, np.ndarray, str]:
        async with convserve.AsyncClient(server.target) as client:
            handle = await client.register_weights(w, b)
            transposed = await client.conv_transpose(x, handle, stride=2)
            stale = convserve.Weights("0" * 64, w, b)
            return transposed, await client.conv_layer(x, stale), handle.id

    transposed, layered, registered = asyncio.run(run())
    assert registered == expected_id(w, b)
    np.testing.assert_allclose(transposed, ref_conv_transpose(x, w, b, (2, 2), (0, 0), (0, 0), 1, (1, 1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layered, ref_conv(x, w, b, (1, 1), [(0, 0), (0, 0)], (1, 1), 1, "zeros"), rtol=1e-12, atol=1e-12)
