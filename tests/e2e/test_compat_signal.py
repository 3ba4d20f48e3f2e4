"""``convserve.compat.signal`` through a real server against ``scipy.signal`` itself: values, shapes, dtypes, errors."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convserve
import convserve.compat
from convserve.compat import signal
from tests.conftest import RunningServer

ss = pytest.importorskip("scipy.signal")
RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True, scope="module")
def configured(server: RunningServer) -> Iterator[None]:
    """The compat modules talk to the session's server (named once)."""
    convserve.compat.configure(server.target, timeout=60)
    yield
    convserve.compat.configure(None)


def assert_like_scipy(got: np.ndarray, expected: np.ndarray, *inputs: np.ndarray) -> None:
    """Same shape and dtype; values within the project's tolerance of the peak (1e-5 when scipy worked in single precision, else 1e-12)."""
    assert got.shape == expected.shape and got.dtype == expected.dtype, (got.shape, got.dtype, expected.shape, expected.dtype)
    if expected.dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected)
        return
    single = any(d in (np.float32, np.complex64, np.float16) for d in (expected.dtype, *(np.asarray(i).dtype for i in inputs)))
    peak = max(float(np.max(np.abs(expected), initial=0)), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=(1e-5 if single else 1e-12) * peak)


def pair(shape1: tuple[int, ...], shape2: tuple[int, ...], dtype: str = "f8") -> tuple[np.ndarray, np.ndarray]:
    a, b = RNG.standard_normal(shape1), RNG.standard_normal(shape2)
    if np.dtype(dtype).kind == "c":
        a, b = a + 1j * RNG.standard_normal(shape1), b - 1j * RNG.standard_normal(shape2)
    return a.astype(dtype), b.astype(dtype)


SHAPES_2D = [((7, 6), (3, 4)), ((3, 2), (7, 6)), ((8, 9), (2, 2)), ((5, 5), (5, 5)), ((1, 9), (1, 4))]


@pytest.mark.parametrize("name", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("mode,boundary", list(itertools.product(["full", "same", "valid"], ["fill", "wrap", "symm", "circular", "symmetric", "pad"])))
def test_2d_every_mode_and_boundary_even_kernels_and_larger_kernels(name: str, mode: str, boundary: str) -> None:
    for (s1, s2), dtype in itertools.product(SHAPES_2D, ["f8", "c16"]):
        a, b = pair(s1, s2, dtype)
        expected = getattr(ss, name)(a, b, mode, boundary=boundary, fillvalue=0.5)
        assert_like_scipy(getattr(signal, name)(a, b, mode, boundary, 0.5), expected)


@pytest.mark.parametrize("name", ["convolve", "correlate", "fftconvolve", "oaconvolve"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_nd_functions_every_mode(name: str, mode: str) -> None:
    for s1, s2 in [((30,), (7,)), ((6,), (9,)), ((9, 8), (4, 3)), ((5, 6, 4), (2, 3, 2)), ((4, 4), (4, 4))]:
        for dtype in ("f8", "c16", "f4"):
            a, b = pair(s1, s2, dtype)
            expected = getattr(ss, name)(a, b, mode)
            assert_like_scipy(getattr(signal, name)(a, b, mode), expected)


@pytest.mark.parametrize("name", ["fftconvolve", "oaconvolve"])
def test_fft_functions_axes(name: str) -> None:
    a, b = pair((6, 40, 3), (1, 9, 3))
    for axes, mode in itertools.product([1, [1], (0, 1), -2], ["full", "same", "valid"]):
        assert_like_scipy(getattr(signal, name)(a, b, mode, axes=axes), getattr(ss, name)(a, b, mode, axes=axes))


DTYPES = ["u1", "i2", "i8", "u8", "f4", "f8", "c8", "c16"]


@pytest.mark.parametrize("first,second", list(itertools.product(DTYPES, DTYPES)))
def test_result_dtypes_are_scipys(first: str, second: str) -> None:
    a = RNG.integers(0, 4, (6, 5)).astype(first)
    b = RNG.integers(0, 3, (3, 2)).astype(second)
    for name in ("convolve", "correlate", "fftconvolve", "oaconvolve", "convolve2d", "correlate2d"):
        assert_like_scipy(getattr(signal, name)(a, b, "same"), getattr(ss, name)(a, b, "same"), a, b)
    assert_like_scipy(signal.convolve(a, b, method="fft"), ss.convolve(a, b, method="fft"), a, b)


def test_bools_and_scalars() -> None:
    a, b = np.array([True, False, True, True]), np.array([True, True])
    assert_like_scipy(signal.convolve(a, b), ss.convolve(a, b))
    assert_like_scipy(signal.correlate(a, b, "same"), ss.correlate(a, b, "same"))
    assert_like_scipy(signal.fftconvolve(a, b), ss.fftconvolve(a, b))
    assert_like_scipy(np.asarray(signal.convolve(np.float64(3), np.float64(4))), np.asarray(ss.convolve(np.float64(3), np.float64(4))))
    assert_like_scipy(np.asarray(signal.fftconvolve(np.float64(3), np.float64(4))), np.asarray(ss.fftconvolve(np.float64(3), np.float64(4))))
    assert signal.fftconvolve(np.array([]), np.ones(3)).shape == ss.fftconvolve(np.array([]), np.ones(3)).shape == (0,)
    for name in ("convolve", "correlate"):
        with pytest.raises(ValueError):
            getattr(ss, name)(np.array([]), np.ones(3))
        with pytest.raises(ValueError, match="empty"):
            getattr(signal, name)(np.array([]), np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        signal.convolve2d(np.zeros((0, 3)), np.ones((2, 2)))  # scipy returns a (1, 4) array of zeros here


def test_integers_that_would_wrap_are_out_of_range() -> None:
    image = np.full((6, 6), 200, np.uint8)
    box = np.ones((3, 3), np.uint8)
    wrapped = ss.convolve2d(image, box, "same")
    assert wrapped.dtype == np.uint8 and wrapped.max() < 255  # scipy wraps 1800 around silently
    for call in (
        lambda: signal.convolve2d(image, box, "same"),
        lambda: signal.correlate2d(image, box),
        lambda: signal.convolve(image, box),
        lambda: signal.correlate(image, box, method="fft"),
    ):
        with pytest.raises(convserve.OutOfRangeError, match=r"uint8; cast an input .*in1\.astype\('int16'\)") as caught:
            call()
        assert "output_dtype" not in str(caught.value)  # scipy's signatures have none: the advice is to cast an input
    assert_like_scipy(signal.fftconvolve(image, box), ss.fftconvolve(image, box))  # float64 results: no wrap at all


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning", "ignore:invalid value encountered in cast:RuntimeWarning")
def test_fillvalue_is_cast_as_scipy_casts_it() -> None:
    a = RNG.integers(0, 9, (5, 6)).astype(np.int32)
    b = np.array([[1, 2], [3, 4]], np.int32)
    for fill in (2.7, -3, 0):
        assert_like_scipy(signal.convolve2d(a, b, "same", fillvalue=fill), ss.convolve2d(a, b, "same", fillvalue=fill))
        assert_like_scipy(signal.correlate2d(a, b, "full", fillvalue=fill), ss.correlate2d(a, b, "full", fillvalue=fill))
    for bad, dtype in ((300, np.uint8), (-1, np.uint8), (1j, np.float64), (1e10, np.int32)):
        x = a.astype(dtype)
        with pytest.raises(ValueError, match="could not cast `fillvalue`"):
            ss.convolve2d(x, x[:2, :2], fillvalue=bad)
        with pytest.raises(ValueError, match="could not cast `fillvalue`"):
            signal.convolve2d(x, x[:2, :2], fillvalue=bad)
    c = a + 1j
    assert_like_scipy(signal.convolve2d(c, b, "same", fillvalue=1 - 2j), ss.convolve2d(c, b, "same", fillvalue=1 - 2j))


def test_bad_arguments_raise_what_scipy_raises() -> None:
    a, b = np.ones((4, 4)), np.ones((2, 2))
    calls = [
        (lambda m: m.convolve(a, b, "circular"), "Acceptable mode flags"),
        (lambda m: m.convolve(a, b, method="overlap_add"), "Acceptable method flags"),
        (lambda m: m.convolve2d(a, b, boundary="reflect"), "Incorrect boundary value"),
        (lambda m: m.convolve2d(a[0], b), "must both be 2-D arrays"),
        (lambda m: m.correlate(a, b[0]), "should have the same dimensionality"),
        (lambda m: m.fftconvolve(a, b[0]), "should have the same dimensionality"),
        (lambda m: m.correlate2d(np.ones((3, 5)), np.ones((5, 3)), "valid"), "at least as large as the other"),
    ]
    for call, message in calls:
        with pytest.raises(ValueError, match=message):
            call(ss)
        with pytest.raises(ValueError, match=message):
            call(signal)


def test_nan_stays_local_where_scipys_fft_spreads_it() -> None:
    x = np.ones(64)
    x[10] = np.nan
    ours = signal.fftconvolve(x, np.ones(3), "same")
    assert np.isnan(ours).sum() == 3 and np.isnan(ss.fftconvolve(x, np.ones(3), "same")).sum() > 3


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda n: st.tuples(st.lists(st.integers(1, 7), min_size=n, max_size=n), st.lists(st.integers(1, 5), min_size=n, max_size=n))),
    st.sampled_from(["full", "same", "valid"]),
    st.sampled_from(["convolve", "correlate", "fftconvolve"]),
    st.sampled_from(["f8", "i4", "c16"]),
)
def test_random_shapes_against_scipy(shapes: tuple[list[int], list[int]], mode: str, name: str, dtype: str) -> None:
    s1, s2 = tuple(shapes[0]), tuple(shapes[1])
    a, b = (RNG.integers(-5, 5, s1).astype(dtype), RNG.integers(-5, 5, s2).astype(dtype)) if dtype == "i4" else pair(s1, s2, dtype)
    try:
        expected = getattr(ss, name)(a, b, mode)
    except ValueError:
        with pytest.raises(ValueError):
            getattr(signal, name)(a, b, mode)
        return
    assert_like_scipy(getattr(signal, name)(a, b, mode), expected)
