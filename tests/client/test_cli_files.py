"""The file commands' readers and writers without a server: every format round-trips unchanged, and what cannot is refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from convserve import _cli_audio, _cli_files, _cli_image
from convserve._cli_common import CliError
from convserve._cli_samples import quantize

RNG = np.random.default_rng(3)


def png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """Write a 16-bit RGB PNG by hand (Pillow cannot)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "pixels,suffix,mode",
    [
        (RNG.integers(0, 256, (6, 7), dtype=np.uint8), ".png", "L"),
        (RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8), ".png", "RGB"),
        (RNG.integers(0, 65536, (6, 7), dtype=np.uint16), ".png", "I;16"),
        (RNG.integers(0, 65536, (6, 7), dtype=np.uint16), ".tif", "I;16"),
        (RNG.random((6, 7)).astype(np.float32) * 300 - 20, ".tif", "F"),
        (RNG.integers(-(2**31), 2**31 - 1, (6, 7), dtype=np.int32), ".tif", "I"),
        (RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8), ".tif", "CMYK"),
    ],
)
def test_images_round_trip_in_their_own_sample_type(tmp_path: Path, pixels: np.ndarray, suffix: str, mode: str) -> None:
    path = str(tmp_path / f"in{suffix}")
    _cli_image.write(path, pixels, None if mode != "CMYK" else _cli_files.Signal(pixels, "image", pixels.dtype, (0, 1), mode="CMYK"), 95)
    assert Image.open(path).mode == mode
    signal = _cli_files.read(path)
    assert signal.kind == "image" and signal.axes == (0, 1) and signal.dtype == pixels.dtype and signal.mode == mode
    np.testing.assert_array_equal(signal.data, pixels)


def test_alpha_is_split_off_and_kept(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    signal = _cli_files.read(str(tmp_path / "a.png"))
    assert signal.mode == "RGBA" and signal.data.shape == (5, 4, 3) and signal.alpha is not None
    np.testing.assert_array_equal(signal.alpha, pixels[..., 3])
    grey = RNG.integers(0, 256, (5, 4, 2), dtype=np.uint8)
    Image.fromarray(grey, mode="LA").save(tmp_path / "la.png")
    signal = _cli_files.read(str(tmp_path / "la.png"))
    assert signal.data.shape == (5, 4) and signal.alpha is not None and signal.mode == "LA"


def test_what_pillow_would_alter_is_refused_or_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png16_rgb(tmp_path / "rgb16.png", RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16))
    with pytest.raises(CliError, match="16-bit colour"):
        _cli_files.read(str(tmp_path / "rgb16.png"))
    frames = [Image.new("L", (4, 4), value) for value in (0, 255)]
    frames[0].save(tmp_path / "two.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(CliError, match="2 frames"):
        _cli_files.read(str(tmp_path / "two.tif"))
    Image.new("P", (4, 4)).save(tmp_path / "palette.png")
    assert _cli_files.read(str(tmp_path / "palette.png")).mode == "RGB"
    assert "palette image read as RGB" in capsys.readouterr().err


@pytest.mark.parametrize(
    "pixels,suffix,words",
    [
        (np.zeros((4, 4, 3), np.float32), ".png", "3 channel"),
        (np.zeros((4, 4), np.float64), ".tif", "float64"),
        (np.zeros((4, 4), np.uint16), ".jpg", "JPEG cannot hold a I;16"),
        (np.zeros((4, 4), np.float32), ".png", "PNG cannot hold a F"),
        (np.zeros((4, 4, 4), np.uint8), ".jpg", "JPEG cannot hold a RGBA"),
        (np.zeros((2, 3, 4, 5), np.uint8), ".png", "2 or 3 dimensions"),
    ],
)
def test_images_pillow_cannot_write_unchanged_are_refused(tmp_path: Path, pixels: np.ndarray, suffix: str, words: str) -> None:
    with pytest.raises(CliError, match=words):
        _cli_image.write(str(tmp_path / f"out{suffix}"), pixels, None, 95)


@pytest.mark.parametrize(
    "subtype,suffix",
    [
        ("PCM_16", ".wav"),
        ("PCM_24", ".wav"),
        ("PCM_32", ".wav"),
        ("PCM_U8", ".wav"),
        ("FLOAT", ".wav"),
        ("DOUBLE", ".wav"),
        ("PCM_16", ".flac"),
        ("PCM_24", ".flac"),
    ],
)
def test_audio_round_trips_bit_for_bit(tmp_path: Path, subtype: str, suffix: str) -> None:
    path, again = str(tmp_path / f"in{suffix}"), str(tmp_path / f"again{suffix}")
    sf.write(path, RNG.uniform(-0.9, 0.9, (300, 2)), 22050, subtype=subtype)
    signal = _cli_files.read(path)
    assert signal.kind == "audio" and signal.axes == (0,) and signal.rate == 22050 and signal.subtype == subtype
    assert signal.data.shape == (300, 2) and float(np.abs(signal.data).max()) <= 1.0
    _cli_audio.write(again, signal.data, signal.rate, _cli_audio.subtype_for(again, signal.dtype, signal, None))
    assert sf.info(again).subtype == subtype
    np.testing.assert_array_equal(
        sf.read(again, dtype="int32" if "PCM" in subtype else "float64")[0], sf.read(path, dtype="int32" if "PCM" in subtype else "float64")[0]
    )


def test_audio_subtypes_follow_the_output_dtype_and_the_format(tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", np.zeros((10, 1)), 8000, subtype="PCM_24")
    signal = _cli_files.read(str(tmp_path / "in.wav"))
    assert signal.dtype == np.int32 and signal.bits == 24
    assert _cli_audio.subtype_for(str(tmp_path / "o.wav"), np.dtype(np.int32), signal, None) == "PCM_24"  # kept
    assert _cli_audio.subtype_for(str(tmp_path / "o.wav"), np.dtype(np.float32), signal, None) == "FLOAT"
    assert _cli_audio.subtype_for(str(tmp_path / "o.wav"), np.dtype(np.int16), None, None) == "PCM_16"
    with pytest.raises(CliError, match="FLAC cannot hold FLOAT"):
        _cli_audio.subtype_for(str(tmp_path / "o.flac"), np.dtype(np.float32), signal, None)
    with pytest.raises(CliError, match="sample rate"):
        _cli_audio.write(str(tmp_path / "o.wav"), np.zeros(4), None, "PCM_16")


def test_integer_audio_is_clipped_with_a_warning_and_float_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loud = np.array([[0.5], [1.5], [-2.0]])
    _cli_audio.write(str(tmp_path / "i.wav"), loud, 8000, "PCM_16")
    assert "2 of 3 values" in capsys.readouterr().err
    np.testing.assert_array_equal(sf.read(tmp_path / "i.wav", dtype="int16")[0], [16384, 32767, -32768])
    _cli_audio.write(str(tmp_path / "f.wav"), loud, 8000, "FLOAT")
    assert "above full scale" in capsys.readouterr().err
    np.testing.assert_array_equal(sf.read(tmp_path / "f.wav", dtype="float32")[0], [0.5, 1.5, -2.0])


def test_quantize_rounds_clips_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    out = quantize(np.array([-3.2, 0.5, 1.5, 254.6, 300.0]), np.dtype(np.uint8), what="out.png")
    np.testing.assert_array_equal(out, [0, 0, 2, 255, 255])
    assert out.dtype == np.uint8
    err = capsys.readouterr().err
    assert "2 of 5 values" in err and "uint8's range 0..255" in err and "out.png" in err
    np.testing.assert_array_equal(quantize(np.array([1.0, 2.0]), np.dtype(np.uint8)), [1, 2])
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(quantize(np.array([0.5, np.nan]), np.dtype(np.int16), scale=10), [5, 0])
    assert "non-finite" in capsys.readouterr().err
    with pytest.raises(CliError, match="complex"):
        quantize(np.array([1j]), np.dtype(np.float64))


def test_npy_inputs_as_stored_and_hostile_ones_refused(tmp_path: Path) -> None:
    data = RNG.integers(-5, 5, (3, 4, 5)).astype(np.int16)
    np.save(tmp_path / "x.npy", data)
    signal = _cli_files.read(str(tmp_path / "x.npy"))
    assert signal.kind == "array" and signal.axes == (0, 1, 2) and signal.dtype == np.int16
    np.testing.assert_array_equal(signal.data, data)
    np.save(tmp_path / "obj.npy", np.array([None]), allow_pickle=True)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVE")
    (tmp_path / "data.bin").write_bytes(b"")
    for name, words in [
        ("obj.npy", "cannot read"),
        ("empty.npy", "empty"),
        ("junk.npy", "cannot read"),
        ("junk.png", "cannot read image"),
        ("junk.wav", "cannot read audio"),
        ("data.bin", "unknown format '.bin'"),
        ("missing.npy", "no such file"),
    ]:
        with pytest.raises(CliError, match=words):
            _cli_files.read(str(tmp_path / name))


def test_npy_output_keeps_an_upper_case_suffix(tmp_path: Path) -> None:
    _cli_files.write_array(str(tmp_path / "OUT.NPY"), np.arange(3))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["OUT.NPY"]


def test_afir_impulse_response_and_mix_formulas() -> None:
    h = np.array([[2.0, 1.0], [-1.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(_cli_audio.impulse_response(h, -1, 0.5, True), h * 0.5)  # no norm, only the gain
    l1 = np.abs(h).sum(axis=0)
    np.testing.assert_allclose(_cli_audio.impulse_response(h, 1, 1.0, False), h / l1)  # each column by its own 1-norm
    np.testing.assert_allclose(_cli_audio.impulse_response(h, 1, 1.0, True), h / l1.max())  # linked: the largest
    np.testing.assert_allclose(_cli_audio.impulse_response(h, 2, 1.0, False), h / np.sqrt((h**2).sum(axis=0)))
    np.testing.assert_allclose(_cli_audio.impulse_response(h, 0, 1.0, False), h / np.abs(h.sum(axis=0)))
    with pytest.raises(CliError, match="at most 2"):
        _cli_audio.impulse_response(h, 3, 1.0, True)
    k = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(_cli_audio.mixed(k, 0.25, 2.0, 0.5, at=0), [0.75, 0.0, 0.25])  # dry*wet*(mix*k + (1-mix)*delta)
    with pytest.raises(CliError, match="between 0 and 1"):
        _cli_audio.mixed(k, 1.5, 1.0, 1.0, at=0)
