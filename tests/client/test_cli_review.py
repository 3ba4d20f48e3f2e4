"""The file commands' hostile corners without a server: 64-bit clipping, altered TIFFs, transparency and orientation, the bar's last line, argv."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convserve import _cli_files, _cli_image, _cli_kernels, _cli_progress
from convserve._cli_args import parse
from convserve._cli_common import CliError
from convserve._cli_samples import quantize

REPOSITORY = Path(__file__).resolve().parents[2]
I64 = np.iinfo(np.int64)
U64 = np.iinfo(np.uint64)


@pytest.mark.filterwarnings("error")  # no stray numpy RuntimeWarning of an overflowing cast
def test_64_bit_outputs_clip_exactly_instead_of_wrapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert quantize(np.array([1e19, -1e19, 3.0]), np.dtype(np.int64)).tolist() == [I64.max, I64.min, 3]
    assert "2 of 3 values" in capsys.readouterr().err
    assert quantize(np.array([2.0**62, 2.0**63, 5.0]), np.dtype(np.int64)).tolist() == [2**62, I64.max, 5]  # 2**63 is past int64
    assert "1 of 3 values" in capsys.readouterr().err
    assert quantize(np.array([2.0**64, 5.0]), np.dtype(np.uint64)).tolist() == [U64.max, 5]
    assert quantize(np.array([2**63, 5], np.uint64), np.dtype(np.int64)).tolist() == [I64.max, 5]
    assert quantize(np.array([2.0**63 - 1024, -(2.0**63)]), np.dtype(np.int64)).tolist() == [2**63 - 1024, I64.min]  # in range: exact, no warning
    assert capsys.readouterr().err.count("clipped") == 2


def test_audio_held_in_int32_names_its_own_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert quantize(np.array([2.0, 0.5]), np.dtype(np.int32), scale=128, bits=8).tolist() == [127, 64]
    error = capsys.readouterr().err
    assert "8-bit samples' range -128..127" in error and "int32" not in error


@pytest.mark.parametrize(
    "dtype,words",
    [("uint32", "unsigned 32-bit"), ("int16", "signed 16-bit"), ("int8", "signed samples")],
)
def test_tiffs_pillow_would_alter_are_refused(tmp_path: Path, dtype: str, words: str) -> None:
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / f"{dtype}.tif"
    tifffile.imwrite(path, np.array([[np.iinfo(dtype).max, 1], [2, np.iinfo(dtype).min]], dtype=dtype))
    with pytest.raises(CliError, match=f"{words}.*convert it to .npy") as refused:
        _cli_files.read(str(path))
    assert refused.value.code == 2


def test_a_transparent_colour_becomes_alpha(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for pixels, colour, mode in ((grey, 40, "LA"), (np.dstack([grey] * 3), (40, 40, 40), "RGBA")):
        Image.fromarray(pixels).save(tmp_path / "t.png", transparency=colour)
        signal = _cli_files.read(str(tmp_path / "t.png"))
        assert signal.mode == mode and signal.alpha is not None
        assert signal.alpha.tolist() == np.where(grey == 40, 0, 255).tolist()
        assert "transparent colour becomes an alpha channel" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_the_exif_orientation_is_carried_over(tmp_path: Path, suffix: str) -> None:
    photo = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    photo.save(tmp_path / "in.jpg", exif=exif.tobytes())
    signal = _cli_files.read(str(tmp_path / "in.jpg"))
    _cli_image.write(str(tmp_path / f"out{suffix}"), signal.data, signal, 95)
    assert Image.open(tmp_path / f"out{suffix}").getexif().get(0x0112) == 6


class Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_automatic_bar_ends_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar appears after its delay; whatever comes next (a warning, the prompt) starts on a new line."""
    screen = Screen()
    monkeypatch.setattr(sys, "stderr", screen)
    now = [0.0]
    monkeypatch.setattr(_cli_progress.time, "monotonic", lambda: now[0])
    for failed in (False, True):
        with pytest.raises(RuntimeError) if failed else contextlib.nullcontext():
            with _cli_progress.Bar(None, "job", 100) as bar:
                bar(0, 100)
                assert screen.getvalue() == ""  # not yet: a short job shows nothing
                now[0] += 2 * _cli_progress.SHOW_AFTER_SECONDS
                bar(50, 100)
                if failed:
                    raise RuntimeError("DEADLINE_EXCEEDED")
        assert screen.getvalue().endswith("\n") and ("failed" if failed else "done") in screen.getvalue().rsplit("\r", 1)[-1]
        screen.seek(0)
        screen.truncate()


def test_negative_values_after_their_options() -> None:
    args = parse("convolve", ["x.png", "gaussian:2", "--scale", "-100,100%", "--bias", "-50%", "--fill-value", "-1e-3", "-o", "y.png"])
    assert (args.scale, args.bias, args.fill_value, args.output) == ("-100,100%", (-50.0, True), -0.001, "y.png")


@pytest.mark.parametrize("arguments", [["--fill-value", "nan"], ["--fill-value", "inf"], ["--quality", "500"], ["--quality", "-5"], ["--quality", "0"]])
def test_bad_values_are_usage_errors(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("convolve", ["x.png", "box:3", "-o", "y.jpg", *arguments])
    assert exited.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["box:1e300", "dice:1e300", "box:100000000", "gaussian:1e300", "unsharp:1e6,1", "dice:20000"])
def test_huge_named_kernels_are_refused_before_any_allocation(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CliError, match="too large"):
            _cli_kernels.resolve(name, None, 2, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.filterwarnings("error")
def test_an_empty_text_kernel_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "k.txt").write_text("\n")
    with pytest.raises(CliError, match="non-empty"):
        _cli_kernels.resolve(None, str(tmp_path / "k.txt"), 1, None)


def test_a_npy_header_claiming_terabytes_is_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
        handle.write(b"\0" * 64)
    for read in (lambda: _cli_files.read(str(path)), lambda: _cli_kernels.resolve(None, str(path), 1, None)):
        with pytest.raises(CliError, match="bad or truncated"):
            read()


def test_an_example_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    done = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "dice.py"), "--out", str(tmp_path / "taken")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--out" in done.stderr


def test_a_large_image_is_one_warning_line_twice_the_limit_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 pixels: past the limit, under twice it
    assert _cli_files.read(str(tmp_path / "big.png")).data.shape == (10, 10)
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("convserve: warning:") and "decompression-bomb limit 60" in error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(CliError, match="cannot read image"):
        _cli_files.read(str(tmp_path / "big.png"))
