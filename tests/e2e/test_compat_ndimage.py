"""``convserve.compat.ndimage`` through a real server against ``scipy.ndimage`` itself: modes, origins, even kernels, dtypes, output=."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convserve
import convserve.compat
from convserve.compat import ndimage
from tests.conftest import RunningServer

nd = pytest.importorskip("scipy.ndimage")
RNG = np.random.default_rng(12)
MODES = ["reflect", "constant", "nearest", "mirror", "wrap", "grid-mirror", "grid-constant", "grid-wrap"]


@pytest.fixture(autouse=True, scope="module")
def configured(server: RunningServer) -> Iterator[None]:
    convserve.compat.configure(server.target)
    yield
    convserve.compat.configure(None)


def origins(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every origin ndimage accepts for a kernel of this shape."""
    return list(itertools.product(*(range(-(m // 2), (m - 1) // 2 + 1) for m in shape)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["convolve", "correlate"])
def test_every_mode_and_origin_with_even_odd_and_oversized_kernels(mode: str, name: str) -> None:
    for shape, kernel in [((7, 6), (3, 4)), ((9,), (4,)), ((1, 6), (3, 2)), ((3, 2), (5, 6)), ((6, 5), (2, 2)), ((4, 3, 5), (2, 3, 2))]:
        x, w = RNG.standard_normal(shape), RNG.standard_normal(kernel)
        for origin in origins(kernel):
            expected = getattr(nd, name)(x, w, mode=mode, cval=1.5, origin=list(origin))
            got = getattr(ndimage, name)(x, w, mode=mode, cval=1.5, origin=list(origin))
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()), err_msg=f"{shape} {kernel} {origin}")


def test_scalar_origin_and_axes() -> None:
    x = RNG.standard_normal((5, 8, 3))
    for name, axes, w, origin in [
        ("correlate", 1, np.arange(4.0), 1),
        ("convolve", (0, 1), np.ones((2, 3)), (-1, 1)),
        ("correlate", [-1, 0], RNG.standard_normal((3, 2)), 0),
        ("convolve", None, RNG.standard_normal((2, 2, 2)), -1),
    ]:
        for mode in ("wrap", "mirror", "constant"):
            expected = getattr(nd, name)(x, w, mode=mode, origin=origin, axes=axes)
            np.testing.assert_allclose(getattr(ndimage, name)(x, w, mode=mode, origin=origin, axes=axes), expected, atol=1e-12)


@pytest.mark.parametrize("output", [None, np.int32, np.float32, np.int16, "uint16", np.bool_, np.float64])
@pytest.mark.parametrize("weights", [[[1, 1, 1]], [[1, 2], [3, 4]], [[0.5, 0.25, 0.3]], [[-1.0, 0.0, 1.0]], [[2.5], [-0.5]]], ids=str)
def test_integer_images_with_ndimage_dtypes(output: object, weights: list[list[float]]) -> None:
    image = RNG.integers(0, 40, (9, 8)).astype(np.uint8)
    w = np.array(weights, np.float64)
    for name, mode in itertools.product(("correlate", "convolve"), ("reflect", "constant", "mirror")):
        expected = getattr(nd, name)(image, w, output=output, mode=mode, cval=3)
        exact = getattr(nd, name)(image.astype(np.float64), w, mode=mode, cval=3)
        info = np.iinfo(expected.dtype) if expected.dtype.kind in "iu" else np.iinfo(np.uint8) if expected.dtype.kind == "b" else None
        if info is not None and (np.trunc(exact).min() < info.min or np.trunc(exact).max() > info.max):
            with pytest.raises(convserve.OutOfRangeError, match="would wrap it around"):  # ndimage wraps; convserve says so
                getattr(ndimage, name)(image, w, output=output, mode=mode, cval=3)
            continue
        got = getattr(ndimage, name)(image, w, output=output, mode=mode, cval=3)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_wrapping_integers_are_out_of_range_naming_a_holder() -> None:
    image = np.full((6, 6), 200, np.uint8)
    assert nd.correlate(image, np.ones((3, 3)))[0, 0] == (200 * 9) % 256  # ndimage wraps silently
    with pytest.raises(convserve.OutOfRangeError, match=r"uint8 cannot hold.*output=np\.int16"):
        ndimage.correlate(image, np.ones((3, 3)))
    with pytest.raises(convserve.OutOfRangeError, match=r"output=np\.int16"):
        ndimage.convolve(image, -np.ones((2, 2)), output=np.int8)
    np.testing.assert_array_equal(ndimage.correlate(image, np.ones((3, 3)), output=np.uint16), nd.correlate(image, np.ones((3, 3)), output=np.uint16))
    with pytest.raises(convserve.OutOfRangeError, match="NaN"):
        ndimage.correlate(np.array([1.0, np.nan, 2.0]), [1.0, 1.0], output=np.int32)


def test_output_array_is_filled_and_returned() -> None:
    image = RNG.integers(0, 9, (6, 7)).astype(np.int16)
    out = np.zeros((6, 7), np.int32)
    returned = ndimage.convolve(image, np.ones((2, 2)), output=out, mode="nearest")
    assert returned is out
    np.testing.assert_array_equal(out, nd.convolve(image, np.ones((2, 2)), output=np.int32, mode="nearest"))
    x = RNG.standard_normal((5, 5))
    in_place = x.copy()
    ndimage.correlate(in_place, np.ones((3, 3)), output=in_place)  # input and output share memory, as ndimage allows
    np.testing.assert_allclose(in_place, nd.correlate(x, np.ones((3, 3))), atol=1e-12)


def test_complex_inputs_weights_and_cval() -> None:
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    xc = (x + 1j * RNG.standard_normal((6, 5))).astype(np.complex64)
    w = RNG.standard_normal((3, 2)) + 1j * RNG.standard_normal((3, 2))
    for name in ("correlate", "convolve"):
        for data, weights, cval in ((x, w, 2.0), (xc, w, 2 - 1j), (xc, w.real, 0.5j), (xc.astype(np.complex128), w, 0)):
            expected = getattr(nd, name)(data, weights, mode="constant", cval=cval)
            got = getattr(ndimage, name)(data, weights, mode="constant", cval=cval)
            assert got.dtype == expected.dtype
            np.testing.assert_allclose(got, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_float_dtypes_and_tiny_weights() -> None:
    x = RNG.standard_normal((8, 8)).astype(np.float32)
    w = RNG.standard_normal((3, 3))
    got = ndimage.correlate(x, w)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, nd.correlate(x, w), atol=1e-6)
    spikes = np.array([1e20, 1.0, 3.0])
    np.testing.assert_array_equal(ndimage.correlate(spikes, [1e-17, 1.0]), nd.correlate(spikes, [1e-17, 1.0]))  # ndimage drops |w| <= 2**-52
    half = ndimage.correlate(x.astype(np.float16), w)  # computed, where ndimage refuses float16
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, nd.correlate(x.astype(np.float16).astype(np.float32), w), atol=5e-2)


def test_errors_are_ndimages() -> None:
    x = np.ones((4, 4))
    cases = [
        (lambda m: m.correlate(x, np.ones((3, 3)), origin=2), ValueError, "Invalid origin"),
        (lambda m: m.convolve(x, np.ones((2, 2)), origin=(-2, 0)), ValueError, "Invalid origin"),
        (lambda m: m.correlate(x, np.ones(3)), RuntimeError, "must match len"),
        (lambda m: m.correlate(x, np.ones((3, 3)), mode="edge"), RuntimeError, "boundary mode not supported"),
        (lambda m: m.correlate(x, np.ones((3, 3)), mode=["wrap", "wrap"]), RuntimeError, "sequence of modes"),
        (lambda m: m.correlate(x, np.ones((3, 3)), output=np.zeros((3, 3))), RuntimeError, "output shape not correct"),
        (lambda m: m.correlate(x, np.ones((3, 3)) * 1j, cval=1j, mode="constant"), ValueError, "complex-valued cval"),
        (lambda m: m.correlate(x, np.ones((3, 3)), cval=1j, mode="constant"), TypeError, "must be real number"),
        (lambda m: m.correlate(x, np.ones((3, 3)) * 1j, output="float64"), RuntimeError, "complex dtype"),
        (lambda m: m.correlate(x, np.ones((3, 3)), axes=(0, 0)), ValueError, "axes must be unique"),
    ]
    for call, kind, message in cases:
        for module in (nd, ndimage):
            with pytest.raises(kind, match=message):
                call(module)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda n: st.tuples(st.lists(st.integers(1, 7), min_size=n, max_size=n), st.lists(st.integers(1, 5), min_size=n, max_size=n))),
    st.sampled_from(MODES),
    st.sampled_from(["convolve", "correlate"]),
    st.data(),
)
def test_random_shapes_modes_and_origins(shapes: tuple[list[int], list[int]], mode: str, name: str, data: st.DataObject) -> None:
    x, w = RNG.standard_normal(shapes[0]), RNG.standard_normal(shapes[1])
    origin = data.draw(st.sampled_from(origins(w.shape)))
    cval = data.draw(st.sampled_from([0.0, -2.5]))
    expected = getattr(nd, name)(x, w, mode=mode, cval=cval, origin=origin)
    np.testing.assert_allclose(getattr(ndimage, name)(x, w, mode=mode, cval=cval, origin=origin), expected, atol=1e-12 * max(1.0, np.abs(expected).max()))
