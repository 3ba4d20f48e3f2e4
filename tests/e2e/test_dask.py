"""``convserve.dask`` on a ``dask.distributed.LocalCluster`` (loopback) against the one-shot result of a real server."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import convserve
from tests.conftest import RunningServer, start_server, stop_server

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import convserve.dask  # noqa: E402  (after the skip: the dask extra may be missing)

RNG = np.random.default_rng(7)
BOUNDARIES = ["fill", "wrap", "symmetric", "reflect", "edge"]


@pytest.fixture(scope="module")
def service() -> Iterator[RunningServer]:
    running = start_server("--log-level", "WARNING")
    try:
        yield running
    finally:
        assert stop_server(running) == 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Client]:
    """Two workers in this process (dask's in-process transport: no socket at all), each block a service call."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as local:
        with distributed.Client(local) as client:
            yield client


@pytest.mark.parametrize("mode,boundary", list(itertools.product(["full", "same", "valid"], BOUNDARIES)))
def test_dask_equals_one_shot_with_whole_array_boundaries(service: RunningServer, cluster: distributed.Client, mode: str, boundary: str) -> None:
    """Chunks smaller than the kernel's reach: ``wrap`` must take the far end of the array, not the chunk's."""
    x = RNG.standard_normal((50, 37))
    h = RNG.standard_normal((7, 12))
    lazy = convserve.dask.convolve(da.from_array(x, chunks=(13, 10)), h, mode, boundary=boundary, target=service.target)
    with convserve.Client(service.target) as client:
        expected = client.convolve(x, h, mode, boundary=boundary)
        correlated = client.correlate(x, h, mode, boundary=boundary)
    assert lazy.shape == expected.shape and lazy.dtype == expected.dtype and lazy.npartitions > 4  # many blocks, each a call
    np.testing.assert_allclose(lazy.compute(), expected, atol=1e-10)
    lazy_corr = convserve.dask.correlate(da.from_array(x, chunks=(13, 10)), h, mode, boundary=boundary, target=service.target)
    np.testing.assert_allclose(lazy_corr.compute(), correlated, atol=1e-10)


def test_dask_integers_axes_and_fill_value(service: RunningServer, cluster: distributed.Client) -> None:
    x = RNG.integers(-100, 100, (4, 3_000)).astype(np.int32)
    h = RNG.integers(-5, 5, 41).astype(np.int32)
    with convserve.Client(service.target) as client:
        for boundary, fill in (("wrap", 0), ("fill", 3)):
            expected = client.convolve(x, h, "same", axes=[1], boundary=boundary, fill_value=fill)
            lazy = convserve.dask.convolve(da.from_array(x, chunks=(2, 700)), h, "same", axes=[1], boundary=boundary, fill_value=fill, target=service.target)
            np.testing.assert_array_equal(lazy.compute(), expected)
    single = RNG.standard_normal(2_000).astype(np.float32)
    lazy = convserve.dask.convolve(da.from_array(single, chunks=300), single[:50], "same", fill_value=0.1, target=service.target)
    with convserve.Client(service.target) as client:
        expected = client.convolve(single, single[:50], "same", fill_value=0.1)
    assert lazy.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-6, atol=1e-6)
    small = da.from_array(np.full(100, 100, np.int8), chunks=30)
    with pytest.raises(convserve.OutOfRangeError):  # 100 * 4 does not fit int8: raised at compute, as the one-shot call
        convserve.dask.convolve(small, np.ones(4, np.int8), target=service.target).compute()


def test_dask_refuses_circular_and_bad_arguments(service: RunningServer) -> None:
    x = da.ones(100, chunks=10)
    with pytest.raises(ValueError, match="circular"):
        convserve.dask.convolve(x, np.ones(3), "circular", target=service.target)
    with pytest.raises(ValueError, match="boundary"):
        convserve.dask.convolve(x, np.ones(3), boundary="sideways", target=service.target)


def test_dask_conv_layer_over_batch_chunks(service: RunningServer, cluster: distributed.Client) -> None:
    x = RNG.standard_normal((10, 3, 17, 15)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    layer = {"stride": 2, "padding": 1, "activation": "relu", "pool": {"kind": "max", "kernel_size": 2}}
    lazy = convserve.dask.conv_layer(da.from_array(x, chunks=(3, 3, 17, 15)), w, b, target=service.target, **layer)  # type: ignore[arg-type]
    with convserve.Client(service.target) as client:
        expected = client.conv_layer(x, w, b, **layer)  # type: ignore[arg-type]
        same = client.conv_layer(x, w, None, padding="same")
    assert lazy.shape == expected.shape and lazy.chunks[0] == (3, 3, 3, 1)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-5)
    lazy_same = convserve.dask.conv_layer(da.from_array(x, chunks=(5, 3, 17, 15)), w, padding="same", target=service.target, timeout=30)
    np.testing.assert_allclose(lazy_same.compute(), same, rtol=1e-5, atol=1e-5)


def test_importing_convserve_does_not_import_dask() -> None:
    code = "import sys, convserve; c = convserve.Client('127.0.0.1:1'); c.close(); print('dask' in sys.modules or 'distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_dask_worker_processes_on_loopback(service: RunningServer) -> None:
    """Real worker processes on loopback: the block function and the client options travel pickled, each process makes its own Client."""
    x = RNG.standard_normal((40, 90))
    h = RNG.standard_normal((5, 5))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as local:
        with distributed.Client(local) as client:
            lazy = convserve.dask.convolve(da.from_array(x, chunks=(20, 30)), h, "same", boundary="wrap", target=service.target, timeout=60)
            got = client.compute(lazy).result(timeout=120)
            workers = {w for w in client.run(lambda: __import__("os").getpid()).values()}
    with convserve.Client(service.target) as one_shot:
        expected = one_shot.convolve(x, h, "same", boundary="wrap")
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert len(workers) == 2


def test_dask_without_target_uses_the_configured_server(service: RunningServer, cluster: distributed.Client) -> None:
    """``convserve.compat.configure`` names the server once, for compat and dask alike; the old ``target=`` still wins."""
    import convserve.compat

    x = RNG.standard_normal((30, 20))
    h = RNG.standard_normal((3, 4))
    convserve.compat.configure(service.target, timeout=30)
    try:
        lazy = convserve.dask.convolve(da.from_array(x, chunks=(10, 10)), h, "same", boundary="symmetric")
        layer = convserve.dask.conv_layer(da.from_array(x[None, None], chunks=(1, 1, 30, 20)), h[None, None], padding=1)
        with convserve.Client(service.target) as client:
            np.testing.assert_allclose(lazy.compute(), client.convolve(x, h, "same", boundary="symmetric"), atol=1e-10)
            np.testing.assert_allclose(layer.compute(), client.conv_layer(x[None, None], h[None, None], padding=1), atol=1e-10)
        convserve.compat.configure("127.0.0.1:1")  # the graph keeps the target it was built with; a new one takes the new target
        np.testing.assert_allclose(lazy.compute(), convserve.dask.convolve(da.from_array(x, chunks=10), h, "same", boundary="symmetric", target=service.target))
    finally:
        convserve.compat.configure(None)
