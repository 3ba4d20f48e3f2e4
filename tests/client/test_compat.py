"""The client-side parts of ``convserve.compat`` (no server): the kernel placement, dtype and fill rules, the configured target."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import convserve
import convserve.compat
from convserve.compat import _config, ndimage, signal

nd = pytest.importorskip("scipy.ndimage")
ss = pytest.importorskip("scipy.signal")
NOBODY = "127.0.0.1:1"  # nothing listens there: a call that reached the network would fail with UnavailableError


@pytest.fixture()
def nowhere() -> object:
    """The compat modules pointed at a port where nothing listens: argument errors must come before any I/O."""
    convserve.compat.configure(NOBODY, timeout=5)
    yield
    convserve.compat.configure(None)


@pytest.mark.parametrize("size", range(1, 9))
def test_kernel_padding_puts_the_same_window_on_ndimages_centre(size: int) -> None:
    """Zeros around the kernel, then a plain ``same`` window (centre m'//2), equal ndimage's origin-shifted correlation."""
    x = np.random.default_rng(size).standard_normal(23)
    w = np.random.default_rng(size + 1).standard_normal(size)
    for origin in range(-(size // 2), (size - 1) // 2 + 1):
        before, after = ndimage.kernel_padding(size, origin)
        assert before == 0 or after == 0
        padded = np.pad(w, (before, after))
        assert before + after <= 2 * abs(origin)  # only the kernel grows, by at most twice the shift
        for mode in ("reflect", "wrap", "constant"):
            np.testing.assert_allclose(nd.correlate(x, padded, mode=mode), nd.correlate(x, w, mode=mode, origin=origin), atol=1e-12)


def test_fft_dtype_is_scipys() -> None:
    names = ["b1", "u1", "i1", "i8", "u8", "f2", "f4", "f8", "c8", "c16"]
    for first, second in itertools.product(names, names):
        expected = ss.fftconvolve(np.ones(3, first), np.ones(2, second)).dtype
        assert signal.fft_dtype(np.dtype(first), np.dtype(second)) == expected, (first, second)


@pytest.mark.filterwarnings(
    "ignore::numpy.exceptions.ComplexWarning", "ignore:invalid value encountered in cast:RuntimeWarning", "ignore:overflow:RuntimeWarning"
)
def test_fill_value_rules_are_convolve2ds() -> None:
    for value, dtype in itertools.product([2.7, -3.2, 0, 80, 300, 1e10, 1j, 2 + 0j, -1e39], ["u1", "i4", "f8", "c16", "f4"]):
        x = np.ones((2, 2), dtype)
        try:
            expected = ss.convolve2d(x, x, "same", fillvalue=value)[0, 0] - 1  # three fills and one sample
        except ValueError:
            with pytest.raises(ValueError, match="could not cast"):
                signal.fill_value(value, np.dtype(dtype))
            continue
        assert 3 * signal.fill_value(value, np.dtype(dtype)) == pytest.approx(expected), (value, dtype)


def test_widens_is_the_servers_rule() -> None:
    assert signal.widens(np.dtype("i4"), np.dtype("f8")) and signal.widens(np.dtype("i2"), np.dtype("u2"))
    assert not signal.widens(np.dtype("c16"), np.dtype("f8")) and not signal.widens(np.dtype("f8"), np.dtype("f4"))


def test_integer_holder_picks_the_narrowest_exact_dtype() -> None:
    u8, i16 = np.dtype("u1"), np.dtype("i2")
    assert ndimage.integer_holder(u8, (0, 200), u8) == u8
    assert ndimage.integer_holder(u8, (0, 1800), u8) == np.dtype("i2")  # the service's widening of a uint8 result
    assert ndimage.integer_holder(i16, (-5, 5), np.dtype("i4")) == np.dtype("i4")  # the output asked for, when it holds
    assert ndimage.integer_holder(np.dtype("i8"), (0, 2**70), u8) is None  # beyond every integer: float64 then


def test_output_array_follows_ndimage() -> None:
    x = np.ones((3, 4), np.float32)
    assert ndimage.output_array(None, x, False).dtype == np.float32
    assert ndimage.output_array(None, x, True).dtype == np.complex64
    assert ndimage.output_array(np.int16, x, False).dtype == np.int16
    with pytest.warns(UserWarning, match="promoting specified output dtype to complex"):
        assert ndimage.output_array(np.float64, x, True).dtype == np.complex128
    with pytest.raises(RuntimeError, match="output shape not correct"):
        ndimage.output_array(np.zeros(3), x, False)
    with pytest.raises(RuntimeError, match="numeric dtype"):
        ndimage.output_array("U3", x, False)


def test_argument_errors_come_before_any_call(nowhere: object) -> None:
    x = np.ones((4, 4))
    for call, kind in [
        (lambda: ndimage.correlate(x, np.ones((3, 3)), origin=5), ValueError),
        (lambda: ndimage.convolve(x, np.ones((3, 3)), mode="sideways"), RuntimeError),
        (lambda: ndimage.correlate(x, np.ones((3, 3, 3))), RuntimeError),
        (lambda: signal.convolve2d(x, np.ones(3)), ValueError),
        (lambda: signal.convolve(x, np.ones((2, 2)), "circular"), ValueError),
        (lambda: signal.fftconvolve(x, np.ones((2, 2)), axes=[]), ValueError),
        (lambda: signal.correlate2d(np.ones((2, 5)), np.ones((5, 2)), "valid"), ValueError),
    ]:
        with pytest.raises(kind) as caught:
            call()
        assert not isinstance(caught.value, convserve.UnavailableError)
    with pytest.raises(convserve.UnavailableError):  # and a real call does go to the configured target
        signal.convolve(x, x)


def test_products_without_convolution_stay_local(nowhere: object) -> None:
    """scipy's fftconvolve multiplies when every convolved axis has length 1 in an input: no server needed."""
    a, b = np.arange(2.0).reshape(1, 2), np.arange(3.0).reshape(3, 1)
    for mode in ("full", "same", "valid"):
        got, expected = signal.fftconvolve(a, b, mode), ss.fftconvolve(a, b, mode)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert signal.oaconvolve(np.float32(2), np.float32(3)) == 6


def test_configure_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    convserve.compat.configure(None)
    monkeypatch.delenv(_config.ENVIRONMENT, raising=False)
    assert convserve.compat.settings() == ("127.0.0.1:50051", {})
    monkeypatch.setenv(_config.ENVIRONMENT, "127.0.0.1:7001")
    assert convserve.compat.settings()[0] == "127.0.0.1:7001"
    first = convserve.compat.default_client()
    assert first.target == "127.0.0.1:7001" and convserve.compat.default_client() is first  # one client per process
    convserve.compat.configure("127.0.0.1:7002", timeout=3)  # configure wins over the environment
    second = convserve.compat.default_client()
    assert second is not first and second.target == "127.0.0.1:7002" and second.timeout == 3
    convserve.compat.configure(None)
    assert convserve.compat.settings()[0] == "127.0.0.1:7001"


def test_dask_uses_the_configured_target() -> None:
    pytest.importorskip("dask.array")
    import convserve.dask

    convserve.compat.configure("127.0.0.1:7003", timeout=9, token="t")
    try:
        assert convserve.dask._service(None, {"timeout": 2}) == ("127.0.0.1:7003", {"timeout": 2, "token": "t"})
        assert convserve.dask._service("127.0.0.1:7004", {}) == ("127.0.0.1:7004", {})  # an explicit target ignores the configured one
    finally:
        convserve.compat.configure(None)


def test_environment_target_in_a_fresh_process() -> None:
    code = "import convserve.compat as c; print(c.settings()[0], c.default_client().target)"
    env = {**os.environ, _config.ENVIRONMENT: "127.0.0.1:7005"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["127.0.0.1:7005", "127.0.0.1:7005"]
