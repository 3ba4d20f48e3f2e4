"""Caches a client can grow are bounded by count as well as by bytes: FFTW plans and wisdom, registered weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyfftw
import pytest

import convserve
from convserve import codec
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve_server import engine
from convserve_server.engine.fft import budget, plans, wisdom
from convserve_server.engine.signal import convolution as signal
from convserve_server.admission.weights import ENTRY_OVERHEAD_BYTES

from tests.conftest import start_server, stop_server

RNG = np.random.default_rng(10)


def wisdom_bytes() -> int:
    with wisdom.PLANNER_LOCK:
        return sum(len(part) for part in pyfftw.export_wisdom())


def circular_reference(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.real(np.fft.ifft(np.fft.fft(x) * np.fft.fft(h, len(x))))


@pytest.fixture()
def small_shape_budget() -> Iterator[int]:
    """Room for three more transform shapes in this process; the previous configuration comes back afterwards."""
    budget = plans.planned_shapes() + 3
    previous = engine.config.current()
    engine.configure(dataclasses.replace(previous, fftw_max_planned_shapes=budget))
    plans.set_max_idle_plans(4)
    try:
        yield budget
    finally:
        plans.set_max_idle_plans(plans.DEFAULT_MAX_IDLE_PLANS)
        engine.configure(previous)


def test_caller_chosen_shapes_stop_growing_plans_and_wisdom(small_shape_budget: int) -> None:
    # Circular mode transforms at exactly the caller's length: each length is a new FFTW shape.
    h = RNG.standard_normal(7)
    lengths = list(range(3001, 3061, 2))
    results = {}
    for n in lengths[:10]:
        x = RNG.standard_normal(n)
        results[n] = (signal.convolve(x, h, mode="circular", method="fft"), circular_reference(x, h))
    assert plans.planned_shapes() == small_shape_budget  # stopped at the budget
    wisdom = wisdom_bytes()
    for n in lengths[10:]:
        x = RNG.standard_normal(n)
        results[n] = (signal.convolve(x, h, mode="circular", method="fft"), circular_reference(x, h))
    assert plans.planned_shapes() == small_shape_budget
    assert wisdom_bytes() == wisdom  # past the budget FFTW adds no wisdom
    assert plans.stats()["cache_plans"] <= 4  # the idle plans are bounded by count
    assert plans.stats()["unplanned_transforms"] > 0
    for n, (got, expected) in results.items():
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=f"length {n}")
    # float32 and 2-D past the budget are right too (numpy's transforms, unnormalised inverses).
    x2, h2 = RNG.standard_normal((37, 41)).astype(np.float32), RNG.standard_normal((3, 4)).astype(np.float32)
    expected2 = np.real(np.fft.ifft2(np.fft.fft2(x2.astype(np.float64)) * np.fft.fft2(h2.astype(np.float64), x2.shape)))
    np.testing.assert_allclose(signal.convolve(x2, h2, mode="circular", method="fft"), expected2, rtol=1e-4, atol=1e-4)
    z = RNG.standard_normal(1001) + 1j * RNG.standard_normal(1001)
    hz = RNG.standard_normal(5) + 1j * RNG.standard_normal(5)
    np.testing.assert_allclose(signal.convolve(z, hz, mode="circular", method="fft"), np.fft.ifft(np.fft.fft(z) * np.fft.fft(hz, 1001)), rtol=1e-10, atol=1e-10)


def test_known_shapes_keep_their_plans_past_the_budget(small_shape_budget: int) -> None:
    h = RNG.standard_normal(5)
    x = RNG.standard_normal(4001)
    signal.convolve(x, h, mode="circular", method="fft")  # planned within the budget
    for n in range(5001, 5021):
        signal.convolve(RNG.standard_normal(n), h, mode="circular", method="fft")
    created = plans.stats()["plans_created"]
    np.testing.assert_allclose(signal.convolve(x, h, mode="circular", method="fft"), circular_reference(x, h), rtol=1e-10, atol=1e-10)
    assert plans.stats()["plans_created"] - created <= 3  # at most re-planned (idle cache of 4), never refused


def tiny(value: int) -> np.ndarray:
    return np.full((1, 1, 1), value, np.float32)


def test_registered_weights_count_their_overhead_end_to_end() -> None:
    # Room for 20 four-byte weights with their bookkeeping; before, this held 20 * 1204 / 4 of them.
    server = start_server("--weights-cache-bytes", str(20 * (4 + ENTRY_OVERHEAD_BYTES)), "--log-level", "WARNING")
    x = RNG.standard_normal((1, 1, 6)).astype(np.float32)
    try:
        with convserve.Client(server.target, timeout=30) as client, grpc.insecure_channel(server.target) as channel:
            first = client.register_weights(tiny(0))
            for i in range(1, 60):
                client.register_weights(tiny(i))
            stub = pb_grpc.ConvolutionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ConvLayer(pb.ConvLayerRequest(input=codec.encode(x), weights_id=first.id), timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            # The default client registers evicted weights again, transparently.
            np.testing.assert_allclose(client.conv_layer(x, first), np.zeros_like(x), atol=0)
    finally:
        assert stop_server(server) == 0


def test_registered_weights_are_capped_by_count_end_to_end() -> None:
    server = start_server("--weights-cache-entries", "20", "--log-level", "WARNING")
    x = RNG.standard_normal((1, 1, 6)).astype(np.float32)
    try:
        with convserve.Client(server.target, timeout=30) as client, grpc.insecure_channel(server.target) as channel:
            handles = [client.register_weights(tiny(i + 1)) for i in range(60)]
            stub = pb_grpc.ConvolutionServiceStub(channel)
            found = []
            for handle in handles:
                try:
                    stub.ConvLayer(pb.ConvLayerRequest(input=codec.encode(x), weights_id=handle.id), timeout=10)
                    found.append(True)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
                    found.append(False)
            # The 20 most recent, though bytes are far from the limit (the servicer must pass
            # max_entries=settings.weights_cache_entries to WeightsRegistry).
            assert found == [False] * 40 + [True] * 20, "weights_cache_entries is not enforced"
            np.testing.assert_allclose(client.conv_layer(x, handles[0]), x, rtol=1e-6)
    finally:
        assert stop_server(server) == 0


def test_wisdom_from_a_file_counts_against_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(budget._BUDGET, "from_file", 0)
    path = str(tmp_path / "wisdom")
    assert wisdom.save_wisdom(path) == path
    assert wisdom.load_wisdom(path).startswith("loaded")
    assert budget._BUDGET["from_file"] == wisdom_bytes() // budget.WISDOM_BYTES_PER_SHAPE > 0
