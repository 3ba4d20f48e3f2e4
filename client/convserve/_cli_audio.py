"""Audio (``.wav``, ``.flac``) for the file commands, through soundfile, and the impulse-response options of ffmpeg's afir.

Samples are held as ``(frames, channels)`` in full-scale units: an integer sample of ``b`` bits is
divided by ``2**(b-1)``, float samples stay as stored. Integer samples are read and written as exact
integers (never through libsndfile's float scaling, which is not symmetric), so an identity kernel
gives back the file's samples bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convserve._cli_common import CliError, need, warn
from convserve._cli_samples import Array, Signal, quantize

SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}
INTEGER_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
FLOATS: dict[str, np.dtype[Any]] = {"FLOAT": np.dtype(np.float32), "DOUBLE": np.dtype(np.float64)}
# --output-dtype -> subtype (int32 is PCM_32; 24-bit input keeps PCM_24 unless another dtype is asked for)
SUBTYPES = {"uint8": "PCM_U8", "int8": "PCM_S8", "int16": "PCM_16", "int32": "PCM_32", "float32": "FLOAT", "float64": "DOUBLE"}


def _soundfile() -> Any:
    return need("soundfile", "soundfile", "reading and writing audio")


def _sample_dtype(subtype: str) -> np.dtype[Any]:
    """The numpy dtype of one sample of a subtype: the default output dtype of the file."""
    if subtype in FLOATS:
        return FLOATS[subtype]
    bits = INTEGER_BITS.get(subtype)
    if bits is None:
        return np.dtype(np.float64)
    return np.dtype(np.uint8 if subtype == "PCM_U8" else np.int8 if bits == 8 else np.int16 if bits == 16 else np.int32)


def read(path: str) -> Signal:
    """An audio file as a Signal: ``(frames, channels)`` full-scale samples, axis 0 convolved, its rate and subtype."""
    soundfile = _soundfile()
    try:
        info = soundfile.info(path)
        subtype = str(info.subtype)
        bits = INTEGER_BITS.get(subtype)
        if bits is not None:  # exact integers, left-justified in int32 by libsndfile
            raw, rate = soundfile.read(path, dtype="int32", always_2d=True)
            data = (raw >> (32 - bits)).astype(np.float64) / 2 ** (bits - 1)
        else:
            data, rate = soundfile.read(path, dtype=FLOATS.get(subtype, np.dtype(np.float64)).name, always_2d=True)
            if subtype not in FLOATS:
                warn(f"{path}: {subtype} samples are read as float64 in [-1, 1] and written back as {subtype} by libsndfile")
    except Exception as exc:  # soundfile's errors are RuntimeErrors; any failure on a hostile file is one line
        raise CliError(f"cannot read audio {path}: {exc}") from None
    if data.shape[0] == 0:
        raise CliError(f"{path} has no samples")
    return Signal(data, "audio", _sample_dtype(subtype), (0,), rate=float(rate), bits=bits, subtype=subtype)


def subtype_for(path: str, dtype: np.dtype[Any], source: Signal | None, asked: str | None) -> str:
    """The subtype to write: ``--subtype``, else the source's own when its dtype is kept, else the dtype's."""
    soundfile = _soundfile()
    kind = SUFFIXES[Path(path).suffix.lower()]
    if asked is not None:
        subtype = asked.upper()
    elif source is not None and source.subtype is not None and dtype == source.dtype:
        subtype = source.subtype
    elif dtype.name in SUBTYPES:
        subtype = SUBTYPES[dtype.name]
    else:
        raise CliError(f"audio samples cannot be {dtype}; choose --output-dtype among {', '.join(SUBTYPES)}")
    if not soundfile.check_format(kind, subtype):
        allowed = ", ".join(soundfile.available_subtypes(kind))
        raise CliError(f"{kind} cannot hold {subtype} samples (it holds {allowed}); write .wav, or choose --output-dtype/--subtype")
    return subtype


def write(path: str, data: Array, rate: float | None, subtype: str, shown: str | None = None) -> None:
    """Write full-scale ``(frames[, channels])`` samples as ``subtype``: integers rounded and clipped (with a warning).

    ``shown`` is the name messages give the file (default ``path``).
    """
    soundfile = _soundfile()
    name = shown or path
    if rate is None:
        raise CliError(f"writing {name} needs a sample rate: give --rate")
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise CliError(f"audio is (frames, channels); the result has shape {data.shape}: write .npy")
    bits = INTEGER_BITS.get(subtype)
    if bits is not None:
        samples = quantize(data, np.dtype(np.int32), scale=2 ** (bits - 1), bits=bits, what=name) << (32 - bits)
    elif subtype in FLOATS:
        samples = quantize(data, FLOATS[subtype], what=name)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > 1.0:
            warn(f"{name}: peak {peak:.6g} is above full scale 1.0; kept, as the file holds {subtype} samples")
    else:
        samples = np.clip(quantize(data, np.dtype(np.float64), what=name), -1.0, 1.0)
    rate_int = int(round(rate))
    if rate_int < 1 or abs(rate - rate_int) > 1e-9:
        raise CliError(f"writing {name} needs a whole number of samples per second; got rate {rate}")
    try:
        soundfile.write(path, samples, rate_int, subtype=subtype, format=SUFFIXES[Path(path).suffix.lower()])
    except (RuntimeError, OSError, ValueError) as exc:
        raise CliError(f"cannot write {name}: {exc}") from None


def impulse_response(kernel: Array, ir_norm: float, ir_gain: float, ir_link: bool) -> Array:
    """The kernel scaled as afir scales its impulse response: ``h * ir_gain / ||h||_p`` with ``p = ir_norm``.

    ``p < 0`` leaves the kernel as it is (then only ``ir_gain`` applies). ``p = 0`` divides by the
    plain sum. A kernel with one column per channel, ``(M, C)``, is normalised per column, or, with
    ``ir_link``, every column by the largest column norm (afir's ``irlink``).
    """
    if ir_norm > 2:
        raise CliError(f"--ir-norm: at most 2 (afir's range -1..2); got {ir_norm}")
    result = np.asarray(kernel, dtype=np.result_type(kernel, np.float64)).copy()
    if ir_norm >= 0:
        columns = result.reshape(result.shape[0], -1)
        if ir_norm == 0:
            norms = np.abs(columns.sum(axis=0))
        else:
            norms = (np.abs(columns) ** ir_norm).sum(axis=0) ** (1.0 / ir_norm)
        if not np.all(norms > 0):
            raise CliError("--ir-norm: the kernel's norm is 0; it cannot be normalised")
        norms = np.full_like(norms, norms.max()) if ir_link else norms
        result = (columns / norms).reshape(result.shape)
    return result * ir_gain


def mixed(kernel: Array, mix: float, dry: float, wet: float, at: int) -> Array:
    """``dry * wet * (mix * kernel + (1 - mix) * delta)``, the delta at tap ``at`` of axis 0 (where the mode aligns the input)."""
    if not 0.0 <= mix <= 1.0:
        raise CliError(f"--mix: between 0 and 1; got {mix}")
    result = mix * np.asarray(kernel, dtype=np.result_type(kernel, np.float64))
    result[at] += 1.0 - mix
    return result * (dry * wet)
