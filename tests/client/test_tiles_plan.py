"""Tile planning and stitching against scipy.signal, with scipy standing in for the server (no I/O)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.signal

from convserve import _tiles
from convserve.errors import InvalidArgumentError

PAD = {"wrap": "wrap", "symmetric": "symmetric", "reflect": "reflect", "edge": "edge"}


def one_shot(x: Any, h: Any, mode: str, boundary: str, fill: float, correlate: bool, axes: Any = None) -> Any:
    """The one-shot result as the server defines it: in1 extended by numpy.pad, then scipy (per axis set)."""
    op = scipy.signal.correlate if correlate else scipy.signal.convolve
    conv_axes = tuple(range(x.ndim)) if axes is None else tuple(axes)
    if mode == "circular":
        pad = [(h.shape[a] - 1, 0) if a in conv_axes else (0, 0) for a in range(x.ndim)]
        hh = np.flip(np.conj(h), conv_axes) if correlate else h
        return scipy.signal.convolve(np.pad(x, pad, mode="wrap"), hh, "valid")
    extends = mode != "valid" and (boundary != "fill" or fill != 0)
    if not extends:
        return op(x, h, mode)
    pad = [(h.shape[a] - 1, h.shape[a] - 1) if a in conv_axes else (0, 0) for a in range(x.ndim)]
    padded = np.pad(x, pad, mode="constant", constant_values=fill) if boundary == "fill" else np.pad(x, pad, mode=PAD[boundary])
    full = op(padded, h, "valid")
    if mode == "full":
        return full
    window = tuple(slice((h.shape[a] - 1) // 2, (h.shape[a] - 1) // 2 + x.shape[a]) for a in range(x.ndim))
    return full[window]


def tiled(x: Any, h: Any, mode: str, boundary: str, fill: float, correlate: bool, count: int, axes: Any = None) -> Any:
    """Plan, compute each tile as the server would (valid mode, zero fill), stitch."""
    plan = _tiles.plan(x, h, mode, axes, boundary, fill, None, count)
    assert plan is not None
    op = scipy.signal.correlate if correlate else scipy.signal.convolve
    stitcher = _tiles.Stitcher(plan)
    for k, tile in enumerate(plan.tiles):
        block = op(_tiles.tile_input(plan, x, tile), plan.h, "valid")
        stitcher.place(k, block, SimpleNamespace(method="direct", compute_seconds=0.5, warnings=[]))
    info = stitcher.info()
    assert len(info.tiles) == len(plan.tiles) and info.compute_seconds == pytest.approx(0.5 * len(plan.tiles))
    return stitcher.result


@pytest.mark.parametrize(
    "mode,boundary", [*itertools.product(["full", "same", "valid"], ["fill", "wrap", "symmetric", "reflect", "edge"]), ("circular", "fill")]
)
@pytest.mark.parametrize("correlate", [False, True])
def test_1d_tiles_equal_one_shot_integers_exactly(mode: str, boundary: str, correlate: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-50, 50, 101)
    h = rng.integers(-5, 5, 8)
    for count in (2, 3, 7):
        np.testing.assert_array_equal(tiled(x, h, mode, boundary, 0, correlate, count), one_shot(x, h, mode, boundary, 0, correlate))


@pytest.mark.parametrize("boundary", ["fill", "wrap", "symmetric", "reflect", "edge"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_2d_tiles_with_a_kernel_longer_than_a_tile(mode: str, boundary: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 23))
    h = rng.standard_normal((9, 12))
    expected = one_shot(x, h, mode, boundary, 2.5, False)
    np.testing.assert_allclose(tiled(x, h, mode, boundary, 2.5, False, 6), expected, atol=1e-10)


def test_pads_longer_than_the_signal_match_numpy_pad() -> None:
    """A kernel longer than in1 extends it more than once around (numpy.pad's rule)."""
    x = np.arange(5.0)
    for boundary in PAD:
        j = np.arange(-23, 27)
        source, _ = _tiles.source_indices(j, 5, boundary)
        np.testing.assert_array_equal(x[source], np.pad(x, (23, 22), mode=PAD[boundary]), err_msg=boundary)


def test_axes_and_broadcast_axes() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 64))
    h = rng.standard_normal((1, 5))
    expected = np.stack([scipy.signal.convolve(row, h[0], "same") for row in x])
    np.testing.assert_allclose(tiled(x, h, "same", "fill", 0, False, 4, axes=[1]), expected, atol=1e-12)
    np.testing.assert_allclose(tiled(x, h[0], "same", "fill", 0, False, 4, axes=[1]), expected, atol=1e-12)


def test_calls_tiles_cannot_reproduce_get_no_plan() -> None:
    x, h = np.arange(10), np.arange(3)
    assert _tiles.plan(x, h, "full", None, "fill", 0, None, 1) is None  # one tile: one-shot
    assert _tiles.plan(h, x, "valid", None, "fill", 0, None, 2) is None  # in2 larger in valid mode
    assert _tiles.plan(x, h, "circular", None, "wrap", 0, None, 2) is None  # the server refuses it
    assert _tiles.plan(x, h, "full", None, "fill", 0.5, None, 2) is None  # int in1 cannot hold the fill
    assert _tiles.plan(x, h, "full", None, "bogus", 0, None, 2) is None
    assert _tiles.plan(x, h, "full", 5, "fill", 0, None, 2) is None  # bad axis: the server names it
    big = np.full(4, 2**62, dtype=np.int64)
    assert _tiles.plan(big, np.array([3, 3]), "full", None, "fill", 0, None, 2) is None  # bound beyond int64: the server decides
    assert _tiles.plan(x, h, "full", None, "fill", 3, None, 2) is not None
    widened = _tiles.plan(np.ones(10, np.float32), np.ones(3, np.float32), "same", None, "fill", 0.1, None, 2)
    assert (
        widened is not None and widened.dtype == np.float64 and widened.output_dtype is None and widened.result_dtype == np.float32
    )  # as the server widens it
    assert _tiles.plan(np.ones(10), np.ones(3), "same", None, "fill", 1j, None, 2) is None  # complex fill, real call: refused


def test_tile_count_and_addresses() -> None:
    assert _tiles.tile_count(None, 10**9, 3) == 1
    assert _tiles.tile_count("auto", 10, 3) == 1
    assert _tiles.tile_count("auto", _tiles.AUTO_MIN_ELEMENTS, 3) == 3
    assert _tiles.tile_count(4, 10, 1) == 4
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(InvalidArgumentError):  # a ValueError
            _tiles.tile_count(bad, 10, 1)
    assert _tiles.addresses("ipv4:127.0.0.1:1,127.0.0.1:2") == ["ipv4:127.0.0.1:1", "ipv4:127.0.0.1:2"]
    assert _tiles.addresses("ipv6:[::1]:1,[::1]:2") == ["ipv6:[::1]:1", "ipv6:[::1]:2"]
    assert _tiles.addresses("127.0.0.1:50051") == ["127.0.0.1:50051"]


def test_work_sends_a_lost_tile_to_another_replica() -> None:
    from convserve.errors import InvalidArgumentError, UnavailableError

    work = _tiles.Work(tiles=4, channels=3)
    assert work.take(0) == 0 and work.take(1) == 1
    assert work.lost(1, 1, InvalidArgumentError("bad")) is None  # not a lost replica: the job fails
    assert work.lost(1, 1, UnavailableError("gone")) in (0, 2)
    assert work.take(1) is None  # the lost channel takes nothing more
    assert work.lost(2, 1, UnavailableError("gone")) == 0
    assert [work.take(0), work.take(0), work.take(0)] == [2, 3, None]
    assert work.lost(0, 3, UnavailableError("gone")) is None  # the last replica: nowhere to send it
    stopped = _tiles.Work(tiles=2, channels=1)
    stopped.stop()
    assert stopped.take(0) is None
