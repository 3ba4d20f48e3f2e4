"""The gallery's scripts in examples/, run as a user runs them: a subprocess against a real server.

Each script runs once per module with ``--small --npz``. The tests then check the PNG it wrote (a valid
image of sensible size, with something drawn on it) and compare the arrays of its ``.npz`` with scipy and
numpy (and torch for the CNN layer, where torch is installed).
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss
from PIL import Image

from tests.conftest import RunningServer, start_server, stop_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = ("dice", "compound_interest", "image_filters", "echo", "cnn_layer", "conv_vs_corr")
Run = Callable[[str], "tuple[subprocess.CompletedProcess[str], Path]"]


def start_example(name: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``examples/NAME.py ARGS`` with this Python, as a user would run it (CONVSERVE_TARGET unset unless given)."""
    environment = {key: value for key, value in os.environ.items() if key != "CONVSERVE_TARGET"}
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env={**environment, **(env or {})})


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for a started example; the timeout only keeps a hung script from hanging CI."""
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def ran(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run every example once, all at the same time (``--small --npz``); hand back each one's process and folder."""
    outs = {name: tmp_path_factory.mktemp(name) for name in NAMES}
    started = {name: start_example(name, "--small", "--npz", "--target", server.target, "--out", str(outs[name])) for name in NAMES}
    done = {name: (finish(process), outs[name]) for name, process in started.items()}

    def run(name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        process, out = done[name]
        assert process.returncode == 0, process.stderr
        return process, out

    return run


def results(ran: Run, name: str) -> dict[str, np.ndarray]:
    """The arrays the example wrote to its .npz."""
    _, out = ran(name)
    with np.load(out / f"{name}.npz") as loaded:
        return dict(loaded)


@pytest.mark.parametrize("name", NAMES)
def test_each_example_writes_a_sensible_png(ran: Run, name: str) -> None:
    process, out = ran(name)
    assert f"wrote {out / name}.png" in process.stdout
    assert len(process.stdout.splitlines()) >= 2  # what it computed, then where the files went
    path = out / f"{name}.png"
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 400 <= image.width <= 2000 and 250 <= image.height <= 2000, image.size
        colours = image.convert("RGB").getcolors(maxcolors=4096)
        assert colours is None or len(colours) > 8, "the figure is (nearly) blank"
    assert path.stat().st_size < 200_000


def test_dice(ran: Run) -> None:
    found = results(ran, "dice")
    die = np.full(6, 1 / 6)
    np.testing.assert_allclose(found["two_dice"], np.convolve(die, die), atol=1e-15)
    np.testing.assert_allclose(found["three_dice"], np.convolve(np.convolve(die, die), die), atol=1e-15)
    assert found["ways_two"].dtype == np.int64
    np.testing.assert_array_equal(found["ways_two"], [1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1])
    np.testing.assert_array_equal(found["ways_three"], np.convolve(found["ways_two"], np.ones(6, np.int64)))
    assert found["ways_three"].sum() == 216
    assert "most likely sum 7" in ran("dice")[0].stdout


def test_compound_interest(ran: Run) -> None:
    found = results(ran, "compound_interest")
    rate, years = float(found["rate"]), len(found["deposits"])
    assert years == 10  # --small
    np.testing.assert_allclose(found["balance"], np.convolve(found["deposits"], found["growth"])[:years], rtol=1e-12)
    future_value = 1000 * ((1 + rate) ** np.arange(1, years + 1) - 1) / rate  # the annuity formula, computed here
    np.testing.assert_allclose(found["balance"], future_value, rtol=1e-12)
    assert f"{future_value[-1]:,.2f}" in ran("compound_interest")[0].stdout


def convolve_reflected(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """scipy's 'same'-sized convolution with the image mirrored at its edges (numpy.pad's 'reflect'), in float64."""
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(image.astype(np.float64), ((ry, ry), (rx, rx)), mode="reflect")
    return ss.convolve(padded, kernel.astype(np.float64), mode="valid")


def test_image_filters(ran: Run) -> None:
    import skimage.data

    assert (importlib.resources.files("skimage.data") / "camera.png").is_file()  # shipped inside the package: camera() downloads nothing
    found = results(ran, "image_filters")
    image = found["image"]
    np.testing.assert_array_equal(image, skimage.data.camera()[::4, ::4].astype(np.float32) / 255)  # the shipped photograph
    np.testing.assert_allclose(found["box"].sum(), 1, rtol=1e-6)
    np.testing.assert_allclose(found["gaussian"].sum(), 1, rtol=1e-6)
    for result, kernel in (("boxed", found["box"]), ("blurred", found["gaussian"]), ("gx", found["sobel_x"]), ("gy", found["sobel_x"].T)):
        assert found[result].dtype == np.float32 and found[result].shape == image.shape
        expected = convolve_reflected(image, kernel)
        assert np.max(np.abs(found[result] - expected)) <= 1e-5 * np.abs(expected).max(), result
    assert np.abs(found["gx"]).max() > 1  # there are edges


def test_echo(ran: Run) -> None:
    import soundfile

    found = results(ran, "echo")
    sound, kernel, echoed, rate = found["sound"], found["kernel"], found["echoed"], int(found["rate"])
    assert rate == 8000 and np.count_nonzero(kernel) == 2 and kernel[0] == 1 and kernel[-1] == 0.5
    expected = np.convolve(sound, kernel)
    assert np.max(np.abs(echoed - expected)) <= 1e-12 * np.abs(expected).max()
    wav, wav_rate = soundfile.read(ran("echo")[1] / "echo.wav")
    assert wav_rate == rate and wav.shape == echoed.shape
    np.testing.assert_allclose(wav, echoed / np.abs(echoed).max() * 0.9, atol=2 / 32768)  # 16-bit PCM


def test_cnn_layer(ran: Run) -> None:
    found = results(ran, "cnn_layer")
    x, w, b, out = found["x"], found["w"], found["b"], found["out"]
    assert x.shape == (3, 5, 5) and w.shape == (2, 3, 3, 3) and b.shape == (2,) and out.shape == (2, 3, 3)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))  # zero padding 1: 3 x 7 x 7
    expected = np.stack([sum(ss.correlate(padded[c], w[o, c], mode="valid") for c in range(3))[::2, ::2] + b[o] for o in range(2)])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert str(expected.astype(int).tolist()) in ran("cnn_layer")[0].stdout  # the numbers it printed


def test_cnn_layer_matches_torch(ran: Run) -> None:
    torch = pytest.importorskip("torch")
    found = results(ran, "cnn_layer")
    layer = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(found["w"]))
        layer.bias.copy_(torch.from_numpy(found["b"]))
        expected = layer(torch.from_numpy(found["x"])).numpy()
    np.testing.assert_allclose(found["out"], expected, atol=1e-12)


def test_conv_vs_corr(ran: Run) -> None:
    found = results(ran, "conv_vs_corr")
    signal, ramp, image, kernel = found["signal"], found["ramp"], found["image"], found["kernel"]
    np.testing.assert_array_equal(found["convolved_1d"], ss.convolve(signal, ramp))
    np.testing.assert_array_equal(found["correlated_1d"], ss.correlate(signal, ramp))
    np.testing.assert_array_equal(found["convolved_2d"], ss.convolve(image, kernel, mode="same"))
    np.testing.assert_array_equal(found["correlated_2d"], ss.correlate(image, kernel, mode="same"))
    np.testing.assert_array_equal(found["flipped"], found["correlated_2d"])  # correlation is convolution with the kernel flipped
    np.testing.assert_array_equal(found["layer"], found["correlated_2d"])  # and a CNN layer is a correlation
    assert found["convolved_2d"].dtype == np.int64
    assert not np.array_equal(found["convolved_2d"], found["correlated_2d"])  # the kernel is asymmetric: the flip shows


def test_the_committed_gallery_shows_every_example_with_its_command() -> None:
    gallery = EXAMPLES.parent / "docs" / "gallery"
    page = (EXAMPLES.parent / "docs" / "gallery.md").read_text()
    for name in NAMES:
        path = gallery / f"{name}.png"
        assert path.stat().st_size < 200_000, f"{path} is over 200 KB"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 500, (name, image.size)
        assert f"](gallery/{name}.png)" in page and f"python examples/{name}.py --out docs/gallery" in page, name
    assert sorted(path.stem for path in EXAMPLES.glob("[a-z]*.py")) == sorted(NAMES)  # no example left out of the tests


@pytest.fixture(scope="module")
def closed_target() -> Iterator[str]:
    """A loopback address where nothing listens: a port held bound, but not listening, for the module."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def test_an_unreachable_server_gives_a_clear_message_and_a_nonzero_exit(closed_target: str, tmp_path: Path) -> None:
    started = {name: start_example(name, "--small", "--target", closed_target, "--out", str(tmp_path / name)) for name in NAMES}
    for name, process in started.items():
        finished = finish(process)
        assert finished.returncode != 0, name
        assert "cannot reach the convserve server" in finished.stderr and closed_target in finished.stderr, finished.stderr
        assert "Traceback" not in finished.stderr, finished.stderr
        assert not list((tmp_path / name).iterdir())  # no picture of nothing


def test_a_call_the_server_refuses_gives_a_clear_message_and_a_nonzero_exit(tmp_path: Path) -> None:
    strict = start_server("--max-elements", "4096", "--log-level", "WARNING")  # the small photograph has 128 x 128 pixels
    try:
        process = finish(start_example("image_filters", "--small", "--target", strict.target, "--out", str(tmp_path)))
    finally:
        assert stop_server(strict) == 0
    assert process.returncode == 1
    assert "image_filters.py: error: RESOURCE_EXHAUSTED" in process.stderr and "Traceback" not in process.stderr, process.stderr
    assert not (tmp_path / "image_filters.png").exists()


def test_the_target_and_folder_default_to_the_environment_and_the_current_directory(server: RunningServer, tmp_path: Path) -> None:
    process = finish(start_example("dice", "--small", cwd=tmp_path, env={"CONVSERVE_TARGET": server.target}))
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "dice.png").is_file()
