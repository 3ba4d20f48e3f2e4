"""The file commands' kernels without a server: named kernels against scipy.ndimage, kernel files, ImageMagick's scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as ss

from convserve import _cli_kernels as kernels
from convserve._cli_common import CliError

RNG = np.random.default_rng(7)


def interior(array: np.ndarray, margin: int) -> np.ndarray:
    """The part of an image that no boundary rule reaches for a kernel of radius ``margin``."""
    return array[(slice(margin, -margin),) * array.ndim]


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_box_and_dice_are_means_with_one_dimension_per_axis(ndim: int) -> None:
    box = kernels.named("box:3", ndim, None)
    assert box.shape == (3,) * ndim and box.dtype == np.float64
    np.testing.assert_allclose(box, np.full((3,) * ndim, 1 / 3**ndim))
    np.testing.assert_array_equal(kernels.named("dice:3", ndim, None), box)


def test_two_dice_from_the_dice_kernel() -> None:
    die = kernels.named("dice:6", 1, None)
    two = np.convolve(die, die)
    np.testing.assert_allclose(two * 36, [1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1])


@pytest.mark.parametrize("sigma", [0.6, 1.5, 3.0])
@pytest.mark.parametrize("ndim", [1, 2])
def test_gaussian_is_scipy_ndimage_gaussian_filter(sigma: float, ndim: int) -> None:
    kernel = kernels.named(f"gaussian:{sigma}", ndim, None)
    radius = int(4 * sigma + 0.5)
    assert kernel.shape == (2 * radius + 1,) * ndim
    assert abs(kernel.sum() - 1) < 1e-12
    delta = np.zeros((2 * radius + 1,) * ndim)
    delta[(radius,) * ndim] = 1.0
    np.testing.assert_allclose(kernel, ndi.gaussian_filter(delta, sigma, mode="constant"), atol=1e-15)


@pytest.mark.parametrize("direction,axis", [("x", 1), ("y", 0)])
def test_sobel_convolved_is_scipy_ndimage_sobel(direction: str, axis: int) -> None:
    image = RNG.random((12, 15))
    result = ss.convolve(image, kernels.named(f"sobel:{direction}", 2, None), mode="same")
    np.testing.assert_allclose(interior(result, 1), interior(ndi.sobel(image, axis=axis), 1), atol=1e-12)
    ramp = np.tile(np.arange(8.0), (8, 1))  # brighter to the right: a positive x derivative
    assert (interior(ss.convolve(ramp, kernels.named("sobel:x", 2, None), mode="same"), 1) > 0).all()


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_laplacian_is_scipy_ndimage_laplace(ndim: int) -> None:
    data = RNG.random((9,) * ndim)
    kernel = kernels.named("laplacian", ndim, None)
    assert kernel.shape == (3,) * ndim and kernel.sum() == 0
    np.testing.assert_allclose(interior(ss.convolve(data, kernel, mode="same"), 1), interior(ndi.laplace(data), 1), atol=1e-12)


def test_unsharp_adds_amount_times_the_detail() -> None:
    image = RNG.random((30, 30))
    sigma, amount = 1.2, 0.7
    kernel = kernels.named(f"unsharp:{sigma},{amount}", 2, None)
    expected = image + amount * (image - ndi.gaussian_filter(image, sigma, mode="constant"))
    radius = int(4 * sigma + 0.5)
    np.testing.assert_allclose(interior(ss.convolve(image, kernel, mode="same"), radius), interior(expected, radius), atol=1e-12)


def test_echo_is_the_two_spike_kernel_at_delay_times_rate() -> None:
    np.testing.assert_array_equal(kernels.named("echo:0.05,0.5", 1, 100.0), [1, 0, 0, 0, 0, 0.5])
    assert kernels.named("echo:0.25,-0.3", 1, 8000.0).shape == (2001,)


@pytest.mark.parametrize(
    "spec,ndim,rate,words",
    [
        ("box", 1, None, "expected 1 number"),
        ("box:0", 1, None, "positive integer"),
        ("box:2.5", 1, None, "positive integer"),
        ("box:x", 1, None, "not a number"),
        ("box:100000", 2, None, "too large"),
        ("gaussian:-1", 1, None, "SIGMA must be > 0"),
        ("gaussian:nan", 1, None, "finite"),
        ("sobel:z", 2, None, "sobel:x or sobel:y"),
        ("sobel:x", 1, None, "2-D"),
        ("laplacian:3", 2, None, "no arguments"),
        ("unsharp:1", 2, None, "expected 2 numbers"),
        ("echo:0.1", 1, 100.0, "expected 2 numbers"),
        ("echo:0.1,0.5", 1, None, "--rate"),
        ("echo:0.1,0.5", 2, 100.0, "1-D"),
        ("echo:0.001,0.5", 1, 100.0, "at least one sample"),
    ],
)
def test_bad_kernel_arguments_say_what_is_wrong(spec: str, ndim: int, rate: float | None, words: str) -> None:
    with pytest.raises(CliError, match=words.replace("(", r"\(")) as raised:
        kernels.named(spec, ndim, rate)
    assert raised.value.code == 2 and str(raised.value).startswith("kernel")


def test_kernel_is_a_name_else_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("box:3.npy", np.array([1.0, 2.0]))
    assert kernels.is_name("box:3") and kernels.is_name("LAPLACIAN") and not kernels.is_name("./box:3.npy")
    with pytest.raises(CliError, match="not a number"):  # a name comes first: box with the argument "3.npy"
        kernels.resolve("box:3.npy", None, 1, None)
    np.testing.assert_array_equal(kernels.resolve("./box:3.npy", None, 1, None), [1.0, 2.0])  # a path: a file
    np.testing.assert_array_equal(kernels.resolve(None, "box:3.npy", 1, None), [1.0, 2.0])  # --kernel-file: always a file
    np.testing.assert_allclose(kernels.resolve("box:3", None, 1, None), np.full(3, 1 / 3))
    with pytest.raises(CliError, match="not a kernel name .* and no such file"):
        kernels.resolve("boxx:3", None, 1, None)
    with pytest.raises(CliError, match="not both"):
        kernels.resolve("box:3", "box:3.npy", 1, None)
    with pytest.raises(CliError, match="no kernel"):
        kernels.resolve(None, None, 1, None)


def test_kernel_files_npy_and_text(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.arange(6.0).reshape(2, 3))
    (tmp_path / "k.txt").write_text("1 2 3\n4 5 6\n")
    (tmp_path / "k.csv").write_text("1, 2, 3\n")
    (tmp_path / "column.txt").write_text("0.25\n0.5\n0.25\n")
    np.testing.assert_array_equal(kernels.load_file(str(tmp_path / "k.npy")), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(kernels.load_file(str(tmp_path / "k.txt")), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(kernels.load_file(str(tmp_path / "k.csv")), [1, 2, 3])
    np.testing.assert_array_equal(kernels.load_file(str(tmp_path / "column.txt")), [0.25, 0.5, 0.25])


def test_hostile_kernel_files_are_one_line_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "words.txt").write_text("one two\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "nothing.npy", np.zeros(0))
    (tmp_path / "k.json").write_text("[1]")
    for name, words in [
        ("pickled.npy", "cannot read kernel file"),
        ("words.txt", "cannot read kernel file"),
        ("empty.npy", "cannot read kernel file"),
        ("nothing.npy", "non-empty numeric"),
        ("k.json", "unknown format"),
        ("missing.npy", "cannot read kernel file"),
    ]:
        with pytest.raises(CliError, match=words):
            kernels.load_file(str(tmp_path / name))


def test_scale_as_imagemagick_convolve_scale() -> None:
    box = np.ones((3, 3))
    np.testing.assert_allclose(kernels.apply_scale(box, "!"), box / 9)  # normalised: sum 1
    np.testing.assert_allclose(kernels.apply_scale(box, "0.5!"), box / 18)
    np.testing.assert_allclose(kernels.apply_scale(box, "2"), box * 2)
    np.testing.assert_allclose(kernels.apply_scale(box, "50%"), box / 2)
    sobel = np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    np.testing.assert_allclose(kernels.apply_scale(sobel, "!"), sobel / 4)  # sums to 0: divided by the positive sum
    uneven = np.array([3.0, -1.0])
    np.testing.assert_allclose(kernels.apply_scale(uneven, "^"), [1.0, -1.0])  # positive and negative parts separately
    np.testing.assert_allclose(kernels.apply_scale(uneven, "!"), [1.5, -0.5])  # divided by |sum| = 2
    gaussian = kernels.named("gaussian:1", 2, None)
    sharpen = kernels.apply_scale(gaussian, "-100,100%")  # % makes both numbers percentages: -1 times, then +1 at the centre
    np.testing.assert_allclose(sharpen, kernels._delta(gaussian.shape) - gaussian, atol=1e-15)
    with pytest.raises(CliError, match="FACTOR"):
        kernels.apply_scale(box, "lots")
    with pytest.raises(CliError, match="zeros"):
        kernels.apply_scale(np.zeros(3), "!")


def test_fit_gives_size_one_dimensions_to_the_other_axes() -> None:
    assert kernels.fit(np.ones((3, 3)), 3, (0, 1)).shape == (3, 3, 1)
    assert kernels.fit(np.ones(5), 2, (1,)).shape == (1, 5)
    assert kernels.fit(np.ones((5, 2)), 2, (0,)).shape == (5, 2)  # one column per channel, as it is
    with pytest.raises(CliError, match=r"has 2 dimension\(s\); convolving axes \(0,\) of a 3-D input needs 1 \(or 3"):
        kernels.fit(np.ones((3, 3)), 3, (0,))
