"""``convserve convolve|correlate`` on .npy arrays and images, run as a user runs it, against a real server.

Every result is checked against scipy.signal on the same samples, with each named kernel written
out here by hand (not taken from the CLI's own code).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as ss
from PIL import Image
from skimage import data as photos

from tests.conftest import RunningServer

ENV = {key: value for key, value in os.environ.items() if key != "CONVSERVE_TARGET"}
RNG = np.random.default_rng(11)
SOBEL_X = np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
LAPLACIAN = np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])


def convserve(server: RunningServer, cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m convserve ARGUMENTS --target SERVER`` in ``cwd``."""
    command = [sys.executable, "-m", "convserve", *arguments, "--target", server.target]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=ENV)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a run that must have succeeded."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def gaussian(sigma: float) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return weights / weights.sum()


def same_edge(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The images' default: mode same, boundary edge (an odd kernel over axes 0 and 1, per channel)."""
    pad = [(size // 2, size // 2) for size in kernel.shape] + [(0, 0)] * (image.ndim - 2)
    kernel = kernel.reshape(kernel.shape + (1,) * (image.ndim - 2))
    return ss.convolve(np.pad(image.astype(np.float64), pad, mode="edge"), kernel, mode="valid")


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40x48 grey crop of scikit-image's camera, as PNG."""
    path = tmp_path_factory.mktemp("images") / "camera.png"
    Image.fromarray(photos.camera()[200:240, 200:248]).save(path)
    return path


@pytest.mark.parametrize(
    "name,kernel",
    [
        ("box:3", np.full((3, 3), 1 / 9)),
        ("gaussian:1.0", np.outer(gaussian(1.0), gaussian(1.0))),
        ("sobel:x", SOBEL_X),
        ("sobel:y", SOBEL_X.T),
        ("laplacian", LAPLACIAN),
        ("unsharp:1,0.5", 1.5 * np.pad([[1.0]], 4) - 0.5 * np.outer(gaussian(1.0), gaussian(1.0))),
        ("dice:4", np.full((4, 4), 1 / 16)),
    ],
)
def test_each_named_kernel_on_npy_matches_scipy(server: RunningServer, tmp_path: Path, name: str, kernel: np.ndarray) -> None:
    x = RNG.random((20, 24))
    np.save(tmp_path / "x.npy", x)
    ok(convserve(server, tmp_path, "convolve", "x.npy", name, "-o", "y.npy"))
    result = np.load(tmp_path / "y.npy")
    assert result.dtype == np.float64 and result.shape == (20 + kernel.shape[0] - 1, 24 + kernel.shape[1] - 1)  # .npy: mode full
    np.testing.assert_allclose(result, ss.convolve(x, kernel), atol=1e-12)


def test_echo_on_a_1d_npy_needs_rate_and_matches_numpy(server: RunningServer, tmp_path: Path) -> None:
    x = RNG.standard_normal(500)
    np.save(tmp_path / "x.npy", x)
    ok(convserve(server, tmp_path, "convolve", "x.npy", "echo:0.02,0.5", "--rate", "1000", "-o", "y.npy"))
    two_spikes = np.zeros(21)
    two_spikes[[0, 20]] = [1.0, 0.5]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.convolve(x, two_spikes), atol=1e-12)
    refused = convserve(server, tmp_path, "convolve", "x.npy", "echo:0.02,0.5", "-o", "z.npy")
    assert refused.returncode == 2 and "--rate" in refused.stderr and not (tmp_path / "z.npy").exists()


def test_correlate_with_kernel_files_matches_scipy(server: RunningServer, tmp_path: Path) -> None:
    x = RNG.random((16, 18))
    kernel = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "k.txt").write_text("1 2 0\n0 -1 3\n")
    np.save(tmp_path / "k.npy", kernel)
    ok(convserve(server, tmp_path, "correlate", "x.npy", "k.txt", "--mode", "same", "-o", "a.npy"))
    ok(convserve(server, tmp_path, "correlate", "x.npy", "--kernel-file", "k.npy", "--mode", "valid", "-o", "b.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ss.correlate(x, kernel, mode="same"), atol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), ss.correlate(x, kernel, mode="valid"), atol=1e-12)


def test_an_integer_npy_keeps_its_dtype_rounded_and_clipped_with_a_warning(server: RunningServer, tmp_path: Path) -> None:
    x = RNG.integers(-1000, 1000, (30,)).astype(np.int16)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "k.txt").write_text("40 -3 40\n")  # integers with integers: exact, then clipped to int16
    stderr = ok(convserve(server, tmp_path, "convolve", "x.npy", "k.txt", "-o", "y.npy"))
    exact = np.convolve(x.astype(np.int64), [40, -3, 40])
    result = np.load(tmp_path / "y.npy")
    assert result.dtype == np.int16
    np.testing.assert_array_equal(result, np.clip(exact, -32768, 32767))
    clipped = int(((exact < -32768) | (exact > 32767)).sum())
    assert clipped > 0 and f"{clipped} of {exact.size} values" in stderr and "int16" in stderr


def test_grey_png_box_keeps_size_and_8_bits(server: RunningServer, tmp_path: Path, camera: Path) -> None:
    ok(convserve(server, tmp_path, "convolve", str(camera), "box:3", "-o", "blur.png"))
    out = Image.open(tmp_path / "blur.png")
    assert out.mode == "L"
    pixels = np.asarray(Image.open(camera))
    np.testing.assert_array_equal(np.asarray(out), to_uint8(same_edge(pixels, np.full((3, 3), 1 / 9))))


def test_rgb_png_is_blurred_per_channel(server: RunningServer, tmp_path: Path) -> None:
    rgb = photos.astronaut()[100:132, 180:220]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    ok(convserve(server, tmp_path, "convolve", "rgb.png", "gaussian:1.5", "--boundary", "reflect", "-o", "soft.png"))
    out = Image.open(tmp_path / "soft.png")
    assert out.mode == "RGB" and out.size == (40, 32)
    g = gaussian(1.5)
    reference = np.stack([ndi.convolve(rgb[..., c].astype(float), np.outer(g, g), mode="mirror") for c in range(3)], axis=2)
    np.testing.assert_array_equal(np.asarray(out), to_uint8(reference))  # scipy's reflect is ndimage's mirror


def test_rgba_alpha_is_kept_and_bias_added(server: RunningServer, tmp_path: Path) -> None:
    rgba = np.dstack([photos.astronaut()[0:24, 0:30], RNG.integers(0, 256, (24, 30), dtype=np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    stderr = ok(convserve(server, tmp_path, "convolve", "a.png", "sobel:x", "--bias", "50%", "-o", "edges.png"))
    out = np.asarray(Image.open(tmp_path / "edges.png"))
    assert out.shape == (24, 30, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # alpha untouched
    reference = same_edge(rgba[..., :3], SOBEL_X) + 127.5  # 50% of 255
    tie = np.abs(reference - np.floor(reference) - 0.5) < 1e-6  # x.5 exactly: either neighbour, by the FFT's last bit
    difference = np.abs(out[..., :3].astype(int) - to_uint8(reference).astype(int))
    assert (difference[~tie] == 0).all() and (difference[tie] <= 1).all()
    assert ("were clipped" in stderr) == bool(((np.rint(reference) < 0) | (np.rint(reference) > 255)).any())
    refused = convserve(server, tmp_path, "convolve", "a.png", "box:3", "--mode", "full", "-o", "no.png")
    assert refused.returncode == 2 and "--alpha keep" in refused.stderr and not (tmp_path / "no.png").exists()


def test_a_16_bit_png_stays_16_bit(server: RunningServer, tmp_path: Path) -> None:
    pixels = photos.camera()[100:130, 100:140].astype(np.uint16) * 257
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    stderr = ok(convserve(server, tmp_path, "convolve", "deep.png", "laplacian", "--bias", "32768", "-o", "lap.png"))
    out = Image.open(tmp_path / "lap.png")
    assert out.mode == "I;16"
    reference = same_edge(pixels, LAPLACIAN) + 32768
    np.testing.assert_array_equal(np.asarray(out), np.clip(np.rint(reference), 0, 65535).astype(np.uint16))
    assert ("were clipped" in stderr) == bool((reference > 65535.5).any() or (reference < -0.5).any())


def test_jpeg_in_npy_and_jpeg_out(server: RunningServer, tmp_path: Path) -> None:
    Image.fromarray(photos.coffee()[0:40, 0:56]).save(tmp_path / "c.jpg", quality=90)
    decoded = np.asarray(Image.open(tmp_path / "c.jpg"))  # the samples the command reads
    ok(convserve(server, tmp_path, "convolve", "c.jpg", "box:3", "-o", "c.npy"))
    result = np.load(tmp_path / "c.npy")
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, to_uint8(same_edge(decoded, np.full((3, 3), 1 / 9))))
    ok(convserve(server, tmp_path, "convolve", "c.jpg", "box:3", "-o", "c2.jpg"))
    again = Image.open(tmp_path / "c2.jpg")
    assert (again.format, again.mode, again.size) == ("JPEG", "RGB", (56, 40))


def test_float_tiff_and_8_bit_in_float_out(server: RunningServer, tmp_path: Path, camera: Path) -> None:
    grey = RNG.random((20, 26)).astype(np.float32)
    Image.fromarray(grey).save(tmp_path / "f.tif")
    ok(convserve(server, tmp_path, "convolve", "f.tif", "box:3", "-o", "g.tif"))
    out = Image.open(tmp_path / "g.tif")
    assert out.mode == "F"
    np.testing.assert_allclose(np.asarray(out), same_edge(grey, np.full((3, 3), 1 / 9)), rtol=1e-6)
    ok(convserve(server, tmp_path, "convolve", str(camera), "sobel:y", "--output-dtype", "float32", "-o", "dy.tif"))
    dy = Image.open(tmp_path / "dy.tif")
    assert dy.mode == "F"
    expected = ndi.sobel(np.asarray(Image.open(camera)).astype(float), axis=0, mode="nearest")
    np.testing.assert_allclose(np.asarray(dy), expected, atol=1e-3)
    assert (np.asarray(dy) < 0).any()  # negative gradients kept, not clipped


def test_scale_normalises_and_normalize_stretches(server: RunningServer, tmp_path: Path, camera: Path) -> None:
    pixels = np.asarray(Image.open(camera))
    (tmp_path / "ones.txt").write_text("1 1 1\n1 1 1\n1 1 1\n")
    ok(convserve(server, tmp_path, "convolve", str(camera), "--kernel-file", "ones.txt", "--scale", "!", "-o", "mean.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mean.png")), to_uint8(same_edge(pixels, np.full((3, 3), 1 / 9))))
    ok(convserve(server, tmp_path, "convolve", str(camera), "laplacian", "--normalize", "-o", "lap.png"))
    stretched = np.asarray(Image.open(tmp_path / "lap.png"))
    reference = same_edge(pixels, LAPLACIAN)
    reference = (reference - reference.min()) * (255 / (reference.max() - reference.min()))
    assert (stretched.min(), stretched.max()) == (0, 255)
    np.testing.assert_array_equal(stretched, to_uint8(reference))


def test_what_an_image_file_cannot_hold_is_refused_not_altered(server: RunningServer, tmp_path: Path) -> None:
    Image.fromarray(photos.astronaut()[0:16, 0:16]).save(tmp_path / "rgb.png")
    done = convserve(server, tmp_path, "convolve", "rgb.png", "box:3", "--output-dtype", "float32", "-o", "f.png")
    assert done.returncode == 2 and "write .npy" in done.stderr and not (tmp_path / "f.png").exists()
    ok(convserve(server, tmp_path, "convolve", "rgb.png", "box:3", "--output-dtype", "float32", "-o", "f.npy"))
    assert np.load(tmp_path / "f.npy").dtype == np.float32
