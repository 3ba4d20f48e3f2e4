"""The engine's Convolve/Correlate against scipy.signal and independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as ss

from convserve_server.engine import InvalidArgumentError, OutOfRangeError, convolve, correlate

RNG = np.random.default_rng(1234)
METHODS = ["direct", "fft", "overlap_add", "auto"]
SHAPES = [((50,), (7,)), ((7,), (50,)), ((20, 30), (5, 4)), ((30, 20), (6, 3)), ((5, 6, 7), (2, 3, 2)), ((600,), (80,)), ((3, 4), (5, 2))]


def random(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random data of a dtype (small integers so that scipy's own results do not wrap)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return RNG.integers(0, 2, shape).astype(bool)
    if kind in "iu":
        return RNG.integers(0 if kind == "u" else -5, 6, shape).astype(dtype)
    if kind == "c":
        return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def assert_close(result: np.ndarray, expected: np.ndarray) -> None:
    """Same shape and dtype; values within the precision of the dtype relative to the peak."""
    assert result.shape == expected.shape
    assert result.dtype == expected.dtype
    if result.dtype.kind in "biu":
        np.testing.assert_array_equal(result, expected)
        return
    peak = max(float(np.max(np.abs(expected.astype(np.complex128)))), 1e-30)
    tol = {2: 2e-3, 4: 1e-5, 8: 1e-5, 16: 1e-12}[result.dtype.itemsize]
    if result.dtype == np.float64:
        tol = 1e-12
    assert float(np.max(np.abs(result.astype(np.complex128) - expected.astype(np.complex128)))) <= tol * peak


@pytest.mark.parametrize("function,reference", [(convolve, ss.convolve), (correlate, ss.correlate)])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matches_scipy_on_shapes(function, reference, mode, method, shapes) -> None:
    x = random(shapes[0], "complex128")
    h = random(shapes[1], "complex128")
    try:
        expected = reference(x, h, mode)
    except ValueError:
        with pytest.raises(InvalidArgumentError):
            function(x, h, mode, method)
        return
    assert_close(function(x, h, mode, method), expected)


DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64", "complex64", "complex128"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_every_dtype_matches_scipy(dtype, method, mode) -> None:
    x = random((40, 9), dtype)
    h = random((3, 4), dtype)
    natural = np.result_type(x, h)  # scipy's result dtype
    if natural.kind in "biu":
        exact = ss.convolve(x.astype(np.int64), h.astype(np.int64), mode)
        if natural.kind == "b":
            expected = exact != 0
        elif exact.min() < np.iinfo(natural).min or exact.max() > np.iinfo(natural).max:
            with pytest.raises(OutOfRangeError):  # scipy would wrap around: we refuse instead
                convolve(x, h, mode, method)
            return
        else:
            expected = exact.astype(natural)
    else:
        wide = np.complex128 if natural.kind == "c" else np.float64
        expected = ss.convolve(x.astype(wide), h.astype(wide), mode).astype(natural)
    assert_close(convolve(x, h, mode, method), expected)


def test_uint8_image_with_float_kernel_is_float32() -> None:
    image = RNG.integers(0, 256, (64, 48)).astype(np.uint8)
    kernel = np.full((5, 5), 1 / 25, np.float32)
    result = convolve(image, kernel, "same")
    assert result.dtype == np.float32
    assert_close(result, ss.convolve(image, kernel, "same"))


@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
def test_integer_results_are_exact_at_large_magnitudes(method) -> None:
    x = RNG.integers(-(2**20), 2**20, 3000).astype(np.int64)
    h = RNG.integers(-(2**20), 2**20, 40).astype(np.int64)
    expected = np.convolve(x.astype(object), h.astype(object)).astype(np.int64)
    np.testing.assert_array_equal(convolve(x, h, method=method), expected)


def test_uint8_overflow_is_refused_with_a_dtype_that_holds_it() -> None:
    with pytest.raises(OutOfRangeError) as raised:
        convolve(np.array([200, 100], np.uint8), np.array([2, 2], np.uint8))
    assert raised.value.suggested_dtype in ("uint16", "int16")
    np.testing.assert_array_equal(convolve(np.array([200, 100], np.uint8), np.array([2, 2], np.uint8), output_dtype="uint16"), [400, 600, 200])


def test_bound_beyond_int64_suggests_float64() -> None:
    big = np.array([2**62, 2**62], np.int64)
    with pytest.raises(OutOfRangeError) as raised:
        convolve(big, big)
    assert raised.value.suggested_dtype == "float64"


def test_uint64_beyond_int64_stays_exact() -> None:
    x = np.array([2**63 + 5, 1], np.uint64)
    result = convolve(x, np.array([1], np.uint64))
    assert result.dtype == np.uint64 and int(result[0]) == 2**63 + 5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "axes_case",
    [
        ((6, 40, 3), (5, 5), (0, 1)),  # a (k, k) kernel on an RGB image: shared by the channels
        ((4, 100), (1, 9), (1,)),  # a batch of signals, one kernel broadcast
        ((4, 100), (4, 9), (1,)),  # a batch of signals, one kernel each
        ((4, 100), (9,), (-1,)),  # in2.ndim == len(axes), negative axis
        ((3, 30, 20), (3, 4, 4), (1, 2)),  # channels with their own kernels
    ],
)
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_axes_match_fftconvolve(method, axes_case, mode) -> None:
    shape1, shape2, axes = axes_case
    x = random(shape1, "float64")
    h = random(shape2, "float64")
    h_full = h
    if h.ndim != x.ndim:
        full_shape = [1] * x.ndim
        for axis, size in zip([a % x.ndim for a in axes], h.shape):
            full_shape[axis] = size
        h_full = h.reshape(full_shape)
    expected = ss.fftconvolve(x, h_full, mode, axes=axes)
    assert_close(convolve(x, h, mode, method, axes=axes), expected)


BOUNDARY_TO_CONVOLVE2D = {"fill": "fill", "wrap": "wrap", "symmetric": "symm"}


@pytest.mark.parametrize("boundary", ["fill", "wrap", "symmetric"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("method", METHODS)
def test_boundaries_match_convolve2d(boundary, mode, method) -> None:
    x = random((17, 23), "float64")
    h = random((4, 5), "float64")
    fill = 2.5 if boundary == "fill" else 0  # scipy ignores fillvalue for its other boundaries; the engine refuses it
    expected = ss.convolve2d(x, h, mode, boundary=BOUNDARY_TO_CONVOLVE2D[boundary], fillvalue=fill)
    assert_close(convolve(x, h, mode, method, boundary=boundary, fill_value=fill), expected)


@pytest.mark.parametrize("boundary,ndimage_mode", [("reflect", "mirror"), ("edge", "nearest"), ("symmetric", "reflect"), ("wrap", "wrap")])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_boundaries_match_ndimage_in_every_dimension(boundary, ndimage_mode, ndim, method) -> None:
    x = random((9, 8, 7)[:ndim], "float32")
    h = random((3, 5, 3)[:ndim], "float32")  # odd sizes: ndimage centres the same way
    expected = ndi.convolve(x.astype(np.float64), h.astype(np.float64), mode=ndimage_mode).astype(np.float32)
    assert_close(convolve(x, h, "same", method, boundary=boundary), expected)


@pytest.mark.parametrize("alias,name", [("constant", "fill"), ("circular", "wrap"), ("symm", "symmetric"), ("mirror", "reflect"), ("nearest", "edge")])
def test_boundary_aliases(alias, name) -> None:
    x, h = random((20,), "float64"), random((5,), "float64")
    np.testing.assert_array_equal(convolve(x, h, "same", boundary=alias), convolve(x, h, "same", boundary=name))


@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
@pytest.mark.parametrize("shapes", [((16,), (5,)), ((8, 6), (3, 6)), ((10, 7), (10, 1))], ids=str)
def test_circular_is_the_dft_product(method, shapes) -> None:
    x, h = random(shapes[0], "float64"), random(shapes[1], "float64")
    expected = np.real(np.fft.ifftn(np.fft.fftn(x) * np.fft.fftn(h, s=x.shape, axes=tuple(range(x.ndim)))))
    assert_close(convolve(x, h, "circular", method), expected)


def test_circular_integers_are_exact() -> None:
    x = np.arange(10, dtype=np.int32)
    h = np.array([1, 0, 0, 2], np.int32)
    expected = [sum(int(h[k]) * int(x[(n - k) % 10]) for k in range(4)) for n in range(10)]
    np.testing.assert_array_equal(convolve(x, h, "circular"), expected)


def test_circular_refuses_a_longer_kernel() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        convolve(np.ones(4), np.ones(5), "circular")
    assert raised.value.field == "in2"


def test_nan_stays_local_with_auto() -> None:
    x = np.ones(5000)
    x[100] = np.nan
    result, info = convolve(x, np.ones(300), "same", return_info=True)
    assert info.method == "direct" and info.warnings
    assert np.isnan(result[100]) and np.isfinite(result[1000:]).all()


def test_nan_with_fft_says_why() -> None:
    x = np.ones(50)
    x[10] = np.nan
    _, info = convolve(x, np.ones(3), method="fft", return_info=True)
    assert info.method == "fft" and any("NaN" in w for w in info.warnings)


def test_list_inputs_and_scalars_like_scipy() -> None:
    np.testing.assert_allclose(convolve([1, 2, 3], [0, 1, 0.5]), ss.convolve([1, 2, 3], [0, 1, 0.5]))
    assert convolve(5.0, 3.0) == ss.convolve(5.0, 3.0)


def test_output_dtype_wider_is_honoured() -> None:
    result = convolve(np.ones(4, np.float32), np.ones(2, np.float32), output_dtype="float64")
    assert result.dtype == np.float64


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"mode": "middle"}, "mode"),
        ({"method": "fastest"}, "method"),
        ({"boundary": "mirrored"}, "boundary"),
        ({"axes": (3,)}, "axes"),
        ({"axes": (0, 0)}, "axes"),
        ({"axes": ()}, "axes"),
        ({"output_dtype": "float64", "in1": np.ones(3, complex)}, "output_dtype"),
        ({"output_dtype": "object"}, "output_dtype"),
        ({"fill_value": "x", "boundary": "fill"}, "fill_value"),
        ({"in1": np.ones((3, 3)), "in2": np.ones(3)}, "in2"),
        ({"in1": np.ones((3, 5)), "in2": np.ones((5, 3)), "mode": "valid"}, "in2"),
        ({"in1": np.array(["a"])}, "in1"),
        ({"in1": np.ones(0)}, "in1"),
        ({"in1": np.ones((2, 5)), "in2": np.ones((3, 2)), "axes": (1,)}, "in2"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field) -> None:
    arguments = {"in1": np.ones((4, 4)), "in2": np.ones((2, 2))}
    arguments.update(kwargs)
    with pytest.raises(InvalidArgumentError) as raised:
        convolve(**arguments)
    assert raised.value.field == field
    assert isinstance(raised.value, ValueError)


def test_return_info_names_the_method() -> None:
    for method in ("direct", "fft", "overlap_add"):
        _, info = convolve(np.ones(5000), np.ones(100), method=method, return_info=True)
        assert info.method == method and info.compute_seconds >= 0


@pytest.mark.parametrize("n,m", list(itertools.product([1, 2, 3, 10], [1, 2, 5])))
def test_tiny_sizes(n, m) -> None:
    x, h = random((n,), "float64"), random((m,), "float64")
    for mode in ("full", "same"):
        assert_close(convolve(x, h, mode), ss.convolve(x, h, mode))
