"""``convserve convolve`` against a real server where a demanding user pushes it: 64-bit samples, 8-bit audio, circular images, flags as documented."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss
import soundfile as sf
from PIL import Image

from convserve.cli import main
from tests.conftest import RunningServer

I64, U64 = np.iinfo(np.int64), np.iinfo(np.uint64)


def run(server: RunningServer, capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    """``convserve ARGUMENTS --target SERVER`` in this process: (exit code, stderr)."""
    code = main([*arguments, "--target", server.target, "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture()
def here(tmp_path: Path) -> Path:
    os.chdir(tmp_path)
    return tmp_path


@pytest.mark.filterwarnings("error")
def test_int64_and_uint64_outputs_clip_at_their_own_limits(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("big.npy", [1e19, -1e19, 3.0])
    np.save("one.npy", [1.0])
    code, err = run(server, capsys, "convolve", "big.npy", "one.npy", "--output-dtype", "int64", "-o", "o.npy")
    assert code == 0 and np.load("o.npy").tolist() == [I64.max, I64.min, 3] and "2 of 3 values" in err
    np.save("wide.npy", np.array([2**62, 2**62, 5], np.int64))
    np.save("ones.npy", [1.0, 1.0, 1.0])
    code, err = run(server, capsys, "convolve", "wide.npy", "ones.npy", "-o", "o.npy")
    assert code == 0 and np.load("o.npy").tolist() == [2**62, I64.max, I64.max, 2**62, 5] and "2 of 5 values" in err  # float64: 2**62 + 5 is 2**62
    np.save("u.npy", np.array([2**63, 5], np.uint64))
    np.save("two.npy", [2.0])
    code, err = run(server, capsys, "convolve", "u.npy", "two.npy", "-o", "o.npy")
    assert code == 0 and np.load("o.npy").tolist() == [U64.max, 10] and "1 of 2 values" in err


def test_the_overflow_advice_can_be_followed(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("x.npy", np.array([2**62, 2**62], np.int64))
    np.save("k.npy", np.array([1, 1], np.int64))
    code, err = run(server, capsys, "convolve", "x.npy", "k.npy", "-o", "o.npy")
    assert code == 1 and "--output-dtype float64" in err and "output_dtype=" not in err
    code, err = run(server, capsys, "convolve", "x.npy", "k.npy", "--output-dtype", "float64", "-o", "o.npy")
    assert code == 0, err
    assert np.load("o.npy").tolist() == [2.0**62, 2.0**63, 2.0**62]
    np.save("u.npy", np.array([3, 5], np.uint64))
    np.save("k.npy", np.array([1, -2], np.int64))
    code, err = run(server, capsys, "convolve", "u.npy", "k.npy", "-o", "o.npy")
    assert code == 0, err
    assert np.load("o.npy").dtype == np.uint64 and np.load("o.npy").tolist() == [3, 0, 0]  # [3, -1, -10]: negatives clipped
    assert "2 of 3 values" in err
    np.save("u.npy", np.array([2**63 + 1, 5], np.uint64))
    np.save("k.npy", np.array([1, 1], np.int64))
    code, err = run(server, capsys, "convolve", "u.npy", "k.npy", "-o", "o.npy")
    assert code == 2 and "--output-dtype float64" in err  # the server's exact integers stop at int64: said before any call
    code, err = run(server, capsys, "convolve", "u.npy", "k.npy", "--output-dtype", "float64", "-o", "o.npy")
    assert code == 0 and np.load("o.npy").tolist() == [2.0**63, 2.0**63, 5.0], err


def test_unsigned_8_bit_wav_to_npy_keeps_its_samples(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = np.array([-1.0, -0.5, 0.0, 0.5, 127 / 128])
    sf.write("u8.wav", samples, 8000, subtype="PCM_U8")
    np.save("delta.npy", [1.0])
    code, err = run(server, capsys, "convolve", "u8.wav", "delta.npy", "-o", "o.npy")
    assert code == 0, err
    result = np.load("o.npy")
    assert result.dtype == np.uint8 and result[:, 0].tolist() == [0, 64, 128, 192, 255]  # offset binary, as the file holds them


def test_circular_images_default_to_fill_and_refuse_another_boundary(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.fromarray(pixels).save("in.png")
    code, err = run(server, capsys, "convolve", "in.png", "box:3", "--mode", "circular", "-o", "out.png")
    assert code == 0, err
    spectrum = np.fft.fft2(pixels.astype(float)) * np.fft.fft2(np.full((3, 3), 1 / 9), pixels.shape)
    np.testing.assert_array_equal(np.asarray(Image.open("out.png")), np.clip(np.rint(np.fft.ifft2(spectrum).real), 0, 255).astype(np.uint8))
    code, err = run(server, capsys, "convolve", "in.png", "box:3", "--mode", "circular", "--boundary", "edge", "-o", "bad.png")
    assert code == 2 and "--mode circular" in err and len(err.strip().splitlines()) == 1 and not Path("bad.png").exists()


def test_fill_value_implies_fill_and_refuses_another_boundary(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.arange(12.0).reshape(3, 4)
    np.save("x.npy", x)
    Image.fromarray(x.astype(np.uint8)).save("x.png")
    code, err = run(server, capsys, "convolve", "x.png", "box:3", "--fill-value", "90", "--output-dtype", "float64", "-o", "o.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load("o.npy"), ss.convolve(np.pad(x, 1, constant_values=90), np.full((3, 3), 1 / 9), "valid"), atol=1e-12)
    code, err = run(server, capsys, "convolve", "x.png", "box:3", "--boundary", "edge", "--fill-value", "5", "-o", "bad.png")
    assert code == 2 and "--fill-value" in err and len(err.strip().splitlines()) == 1


def test_negative_levels_as_the_docs_write_them(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.full((4, 4), 200, np.uint8)
    Image.fromarray(pixels).save("in.png")
    code, err = run(server, capsys, "convolve", "in.png", "box:1", "--scale", "-100,100%", "--bias", "-50%", "--output-dtype", "float32", "-o", "o.tif")
    assert code == 0, err
    np.testing.assert_allclose(np.asarray(Image.open("o.tif")), 200 * (-1 + 1) - 127.5)  # the kernel -1 + 1 = 0, the bias half of 255


def test_bias_and_normalize_count_in_the_inputs_range(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.array([[0, 10], [20, 40]], np.uint8)
    Image.fromarray(pixels).save("in.png")
    code, err = run(server, capsys, "convolve", "in.png", "box:1", "--bias", "50%", "--output-dtype", "float32", "-o", "o.tif")
    assert code == 0, err
    np.testing.assert_allclose(np.asarray(Image.open("o.tif")), pixels + 127.5)
    code, err = run(server, capsys, "convolve", "in.png", "box:1", "--normalize", "--output-dtype", "float32", "-o", "o.tif")
    assert code == 0, err
    np.testing.assert_allclose(np.asarray(Image.open("o.tif")), pixels * (255 / 40), rtol=1e-6)


def test_outputs_write_through_links_keep_modes_and_name_the_users_file(server: RunningServer, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("x.npy", [1.0, 2.0])
    np.save("real.npy", [0.0])
    os.chmod("real.npy", 0o640)
    os.symlink("real.npy", "link.npy")
    code, err = run(server, capsys, "convolve", "x.npy", "box:1", "-o", "link.npy")
    assert code == 0, err
    assert Path("link.npy").is_symlink() and np.load("real.npy").tolist() == [1.0, 2.0] and stat.S_IMODE(os.stat("real.npy").st_mode) == 0o640
    os.chmod("real.npy", 0o444)
    code, err = run(server, capsys, "convolve", "x.npy", "box:1", "-o", "real.npy")
    assert code == 2 and "read-only" in err and np.load("real.npy").tolist() == [1.0, 2.0]
    code, err = run(server, capsys, "convolve", "x.npy", "box:1", "-o", "missing/o.npy")
    assert code == 2 and "cannot write missing/o.npy" in err and ".convserve-" not in err
