"""``convserve convolve`` on audio, its progress bar and its errors, run as a user runs it, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss
import soundfile as sf

from tests.conftest import RunningServer

ENV = {key: value for key, value in os.environ.items() if key != "CONVSERVE_TARGET"}
RNG = np.random.default_rng(5)
RATE = 8000


def convserve(target: str, cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m convserve ARGUMENTS --target TARGET`` in ``cwd``."""
    command = [sys.executable, "-m", "convserve", *arguments, "--target", target]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=ENV)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a run that must have succeeded."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def failed(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """A run that failed with ``code`` and one line on stderr holding every word (no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and all(word in lines[0] for word in words), done.stderr


def tone(frames: int, channels: int, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(frames) / RATE
    return np.stack([amplitude * np.sin(2 * np.pi * (220 * (c + 1)) * t) + 0.05 * RNG.standard_normal(frames) for c in range(channels)], axis=1)


def test_a_16_bit_stereo_wav_gets_its_echo_per_channel(server: RunningServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", tone(2000, 2), RATE, subtype="PCM_16")
    ok(convserve(server.target, tmp_path, "convolve", "in.wav", "echo:0.01,0.5", "-o", "out.wav"))
    info = sf.info(tmp_path / "out.wav")
    assert (info.subtype, info.channels, info.samplerate, info.frames) == ("PCM_16", 2, RATE, 2000 + 80)  # mode full: the tail kept
    samples = sf.read(tmp_path / "in.wav", dtype="int16")[0].astype(np.float64)
    two_spikes = np.zeros(81)
    two_spikes[[0, 80]] = [1.0, 0.5]
    reference = np.clip(np.rint(ss.convolve(samples, two_spikes[:, None])), -32768, 32767)
    assert np.abs(sf.read(tmp_path / "out.wav", dtype="int16")[0] - reference).max() <= 1  # one LSB: x.5 ties under the FFT's rounding


def test_a_24_bit_flac_stays_24_bit(server: RunningServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.flac", tone(1500, 1), RATE, subtype="PCM_24")
    ok(convserve(server.target, tmp_path, "convolve", "in.flac", "gaussian:3", "-o", "out.flac"))
    assert sf.info(tmp_path / "out.flac").subtype == "PCM_24"
    samples = sf.read(tmp_path / "in.flac", dtype="int32")[0] >> 8
    g = np.exp(-0.5 * (np.arange(-12, 13) / 3) ** 2)
    reference = np.rint(np.convolve(samples.astype(np.float64), g / g.sum()))
    assert np.abs((sf.read(tmp_path / "out.flac", dtype="int32")[0] >> 8) - reference).max() <= 1


def test_a_float_wav_stays_float_and_keeps_its_peaks(server: RunningServer, tmp_path: Path) -> None:
    x = tone(1200, 1, amplitude=0.9).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, RATE, subtype="FLOAT")
    stderr = ok(convserve(server.target, tmp_path, "convolve", "in.wav", "echo:0.005,0.9", "-o", "out.wav"))
    assert sf.info(tmp_path / "out.wav").subtype == "FLOAT"
    out = sf.read(tmp_path / "out.wav", dtype="float32")[0]
    two_spikes = np.zeros(41)
    two_spikes[[0, 40]] = [1.0, 0.9]
    np.testing.assert_allclose(out, np.convolve(x[:, 0].astype(np.float64), two_spikes), atol=1e-6)
    assert np.abs(out).max() > 1.0 and "above full scale" in stderr


def test_an_identity_kernel_gives_back_every_sample(server: RunningServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", tone(3000, 2, amplitude=0.99), RATE, subtype="PCM_16")
    (tmp_path / "one.txt").write_text("1\n")
    stderr = ok(convserve(server.target, tmp_path, "convolve", "in.wav", "one.txt", "-o", "out.wav"))
    assert stderr == ""
    np.testing.assert_array_equal(sf.read(tmp_path / "out.wav", dtype="int16")[0], sf.read(tmp_path / "in.wav", dtype="int16")[0])


def test_afir_gains_norm_and_mix_follow_their_formulas(server: RunningServer, tmp_path: Path) -> None:
    x = tone(800, 1, amplitude=0.3)
    sf.write(tmp_path / "in.wav", x, RATE, subtype="DOUBLE")
    h = np.array([0.5, -0.25, 0.125, 1.0])
    np.save(tmp_path / "h.npy", h)
    arguments = ["--dry", "0.5", "--wet", "1.5", "--ir-norm", "1", "--ir-gain", "0.8", "--mix", "0.25"]
    ok(convserve(server.target, tmp_path, "convolve", "in.wav", "h.npy", *arguments, "-o", "out.wav"))
    dry = 0.5 * x[:, 0]
    wet = np.convolve(dry, 0.8 * h / np.abs(h).sum())
    reference = 1.5 * (0.25 * wet + 0.75 * np.pad(dry, (0, 3)))  # y = wet * (mix * (h' * dry x) + (1 - mix) * dry x)
    np.testing.assert_allclose(sf.read(tmp_path / "out.wav")[0], reference, atol=1e-12)


def test_normalize_brings_the_peak_to_full_scale(server: RunningServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", tone(1000, 1, amplitude=0.2), RATE, subtype="PCM_16")
    stderr = ok(convserve(server.target, tmp_path, "convolve", "in.wav", "box:5", "--normalize", "-o", "out.wav"))
    assert stderr == ""  # the peak lands on 32767 (or -32767): nothing clipped
    assert np.abs(sf.read(tmp_path / "out.wav", dtype="int16")[0]).max() == 32767


def test_npy_to_wav_takes_the_rate_from_the_command_line(server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", tone(500, 1)[:, 0])
    failed(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "-o", "a.wav"), 2, "sample rate", "--rate")
    ok(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "--rate", "8000", "--output-dtype", "float32", "-o", "a.wav"))
    info = sf.info(tmp_path / "a.wav")
    assert (info.subtype, info.samplerate, info.frames) == ("FLOAT", 8000, 502)
    (tmp_path / "a.flac").write_bytes(b"kept")
    failed(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "--rate", "8000", "-o", "a.flac"), 2, "FLAC cannot hold DOUBLE")
    assert (tmp_path / "a.flac").read_bytes() == b"kept"  # an existing OUTPUT is replaced whole or not at all
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.flac", "a.wav", "x.npy"]  # no partial file left


def test_the_progress_bar_counts_the_bytes_of_a_chunked_call(server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", RNG.random(5 * 2**20 // 8))  # 5 MiB: above the client's 4 MiB chunk threshold
    stderr = ok(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "--progress", "-o", "y.npy"))
    frames = stderr.replace("\r", "\n").splitlines()
    assert any("100%" in frame and "done" in frame for frame in frames), stderr
    assert sum("convolve x.npy" in frame for frame in frames) >= 4  # drawn as chunks went out, not only at the end
    tiled = ok(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "--progress", "--tiles", "2", "-o", "t.npy"))
    assert "2/2" in tiled and "tiles" in tiled
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.load(tmp_path / "y.npy"))
    assert ok(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "-o", "q.npy")) == ""  # stderr is no terminal: no bar
    assert ok(convserve(server.target, tmp_path, "convolve", "x.npy", "box:3", "--no-progress", "-o", "q.npy")) == ""


def test_errors_are_one_line_with_an_exit_code(server: RunningServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", tone(100, 1), RATE, subtype="PCM_16")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    failed(convserve("127.0.0.1:1", tmp_path, "convolve", "in.wav", "box:3", "--timeout", "5", "-o", "o.wav"), 1, "UNAVAILABLE")
    np.save(tmp_path / "x.npy", np.ones((10, 10)))
    np.save(tmp_path / "k.npy", np.ones((12, 3)))  # larger on one axis, smaller on the other: no valid part (the server says so)
    failed(convserve(server.target, tmp_path, "convolve", "x.npy", "k.npy", "--mode", "valid", "-o", "o.npy"), 1, "INVALID_ARGUMENT")
    failed(convserve(server.target, tmp_path, "convolve", "in.wav", "blur:3", "-o", "o.wav"), 2, "not a kernel name")
    failed(convserve(server.target, tmp_path, "convolve", "in.wav", "gaussian:0", "-o", "o.wav"), 2, "SIGMA")
    failed(convserve(server.target, tmp_path, "correlate", "junk.png", "box:3", "-o", "o.png"), 2, "cannot read image")
    failed(convserve(server.target, tmp_path, "convolve", "junk.wav", "box:3", "-o", "o.wav"), 2, "cannot read audio")
    failed(convserve(server.target, tmp_path, "convolve", "in.wav", "box:3", "-o", "o.mp3"), 2, "unknown format '.mp3'")
    failed(convserve(server.target, tmp_path, "convolve", "gone.wav", "box:3", "-o", "o.wav"), 2, "no such file")
    failed(convserve(server.target, tmp_path, "convolve", "in.wav", "box:3", "--mode", "sideways", "-o", "o.wav"), 2, "invalid choice")
    assert not any((tmp_path / name).exists() for name in ("o.wav", "o.png", "o.npy"))


@pytest.mark.parametrize("command", ["convolve", "correlate"])
def test_the_console_script_and_python_dash_m_agree(server: RunningServer, tmp_path: Path, command: str) -> None:
    """``python -m convserve`` and the installed ``convserve`` script give the same file."""
    x = RNG.random((9, 7))
    np.save(tmp_path / "x.npy", x)
    ok(convserve(server.target, tmp_path, command, "x.npy", "sobel:x", "-o", "a.npy"))
    reference = getattr(ss, command)(x, np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]))
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), reference, atol=1e-12)
    script = Path(sys.executable).with_name("convserve")
    if script.exists():
        done = subprocess.run(
            [str(script), command, "x.npy", "sobel:x", "-o", "b.npy", "--target", server.target],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=ENV,
        )
        ok(done)
        np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"))
