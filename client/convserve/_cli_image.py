"""Images (``.png``, ``.jpg``, ``.tif``) for the file commands, through Pillow.

Sample values are never rescaled: an 8-bit image is 0..255 in and out, a 16-bit one 0..65535,
whatever dtype the result is written in. Channels are the last axis; an alpha channel is split off.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from convserve._cli_common import CliError, need, warn
from convserve._cli_samples import Array, Signal

SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_MODES = {"LA": "L", "RGBA": "RGB", "La": "L", "RGBa": "RGB"}
MULTI_BAND = {3: ("RGB", "YCbCr", "LAB", "HSV"), 4: ("RGBA", "CMYK")}
ORIENTATION = 0x0112  # the EXIF Orientation tag
SAMPLE_FORMAT = 339  # the TIFF SampleFormat tag: 1 unsigned, 2 signed, 3 float
SIGNED_32 = ("I", "I;32S", "I;32BS", "I;32LS", "I;32")  # raw modes Pillow reads into its signed 32-bit I exactly
UNSIGNED_16 = ("I;16", "I;16B", "I;16L", "I;16N")
# (dtype, channels) -> Pillow mode for single-band images of a wider type
WIDE_MODES = {"uint16": "I;16", "int32": "I", "float32": "F"}
# what each format can hold: the Pillow modes it writes without changing a value
WRITABLE = {
    "PNG": {"L", "LA", "RGB", "RGBA", "I;16"},
    "JPEG": {"L", "RGB", "CMYK"},
    "TIFF": {"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I", "F"},
}


def _pil() -> Any:
    return need("PIL.Image", "Pillow", "reading and writing images")


def read(path: str) -> Signal:
    """An image's samples as a Signal (axes (0, 1)); refuses what Pillow would read altered."""
    image_module = _pil()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", image_module.DecompressionBombWarning)
            image = image_module.open(path)
            frames = getattr(image, "n_frames", 1)
            raw = image.tile[0][3] if image.tile else ""  # the decoder's raw mode, e.g. RGB;16B or ('I;32N', 0, 1)
            image.load()
    except Exception as exc:  # any decoder failure of a hostile file (OSError, SyntaxError, DecompressionBombError...) is one line
        raise CliError(f"cannot read image {path}: {exc}") from None
    if any(issubclass(item.category, image_module.DecompressionBombWarning) for item in caught):
        pixels = image.size[0] * image.size[1]
        warn(f"{path}: {pixels} pixels, more than Pillow's decompression-bomb limit {image_module.MAX_IMAGE_PIXELS} (twice that is refused); reading it")
    if frames > 1:
        raise CliError(f"{path} has {frames} frames; convserve reads single-frame images (split it first)")
    rawmode = str(raw[0] if isinstance(raw, tuple) else raw)
    _refuse_altered(path, image, rawmode)
    image, mode = _expanded(path, image)
    if mode.startswith("I;16") or (mode == "I" and rawmode in UNSIGNED_16):  # older Pillow reads a 16-bit grey PNG as I
        data, mode = np.asarray(image).astype(np.uint16), "I;16"
    else:
        data = np.asarray(image)
    info = {key: image.info[key] for key in ("icc_profile", "dpi") if key in image.info}
    orientation = image.getexif().get(ORIENTATION)
    if orientation not in (None, 1):  # written back, so that the output displays as the input does
        exif = image_module.Exif()
        exif[ORIENTATION] = orientation
        info["exif"] = exif.tobytes()
    alpha = None
    if mode in ALPHA_MODES:
        data, alpha = data[..., :-1], data[..., -1].copy()
        data = data[..., 0] if data.shape[-1] == 1 else data
        mode = mode.upper()
    return Signal(np.ascontiguousarray(data), "image", data.dtype, (0, 1), alpha=alpha, mode=mode, info=info)


def _refuse_altered(path: str, image: Any, rawmode: str) -> None:
    """A CliError for samples Pillow reads changed: 16-bit colour, unsigned 32-bit, signed 8 or 16-bit (TIFF)."""
    if ";16" in rawmode and image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise CliError(f"{path} is a 16-bit colour image, which Pillow reads only as 8-bit: convert it to .npy first (nothing is reduced silently)")
    sample_format = getattr(image, "tag_v2", {}).get(SAMPLE_FORMAT)
    signed = 2 in (sample_format if isinstance(sample_format, tuple) else (sample_format,))
    if image.mode == "I" and rawmode not in SIGNED_32 and (signed or rawmode not in UNSIGNED_16):
        what = "signed 16-bit" if signed and "16" in rawmode else "unsigned 32-bit" if "32" in rawmode else f"{rawmode}"
        raise CliError(f"{path} holds {what} samples, which Pillow reads and writes as signed 32-bit: convert it to .npy first (nothing is changed silently)")
    if signed and image.mode not in ("I", "F"):
        raise CliError(f"{path} holds signed samples, which Pillow reads as unsigned ({image.mode}): convert it to .npy first (nothing is changed silently)")


def _expanded(path: str, image: Any) -> tuple[Any, str]:
    """Bilevel, palette and transparent-colour (tRNS) images as L, RGB(A) or LA, with a warning; others as they are."""
    mode = image.mode
    transparent = "transparency" in image.info
    if mode in ("1", "P", "PA"):
        target = "L" if mode == "1" else ("RGBA" if mode == "PA" or transparent else "RGB")
        warn(f"{path}: {'bilevel' if mode == '1' else 'palette'} image read as {target}; it is written as {target}")
        return image.convert(target), target
    if transparent and mode in ("L", "RGB"):
        target = mode + "A"
        warn(f"{path}: its transparent colour becomes an alpha channel: read and written as {target}")
        return image.convert(target), target
    if transparent:
        warn(f"{path}: its transparent colour (tRNS) is not kept in a {mode} image")
    return image, mode


def _mode(data: Array, source_mode: str | None) -> str:
    """The Pillow mode that holds ``data`` unchanged, or a CliError saying what would."""
    channels = 1 if data.ndim == 2 else data.shape[2]
    if data.dtype == np.uint8:
        if channels == 1:
            return "L"
        if channels == 2:
            return "LA"
        if channels in MULTI_BAND:
            choices = MULTI_BAND[channels]
            return source_mode if source_mode in choices else choices[0]
    elif channels == 1 and data.dtype.name in WIDE_MODES:
        return WIDE_MODES[data.dtype.name]
    raise CliError(
        f"an image of {channels} channel(s) of {data.dtype} cannot be written by Pillow without changing values: "
        "write .npy, or choose --output-dtype (uint8; uint16, int32 or float32 for one channel)"
    )


def write(path: str, data: Array, source: Signal | None, quality: int, shown: str | None = None) -> None:
    """Write ``(H, W)`` or ``(H, W, C)`` samples, in their dtype, as the image format of ``path``'s suffix (``shown``: its name in messages)."""
    image_module = _pil()
    kind = SUFFIXES[Path(path).suffix.lower()]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise CliError(f"an image needs 2 or 3 dimensions (H, W[, C]); the result has shape {data.shape}: write .npy")
    mode = _mode(data, source.mode if source is not None else None)
    if mode not in WRITABLE[kind]:
        fits = [suffix for suffix, name in SUFFIXES.items() if mode in WRITABLE[name]]
        raise CliError(f"{kind} cannot hold a {mode} image ({data.dtype}, shape {data.shape}); write {', '.join(fits) or '.npy'} or .npy")
    height, width = data.shape[:2]
    raw = np.ascontiguousarray(data.astype("<u2") if mode == "I;16" else data.astype(data.dtype.newbyteorder("=")))
    image = image_module.frombytes(mode, (width, height), raw.tobytes(), *(("raw", "I;16") if mode == "I;16" else ()))
    options: dict[str, Any] = dict(source.info) if source is not None and source.kind == "image" else {}
    if kind == "JPEG":
        options["quality"] = quality
    try:
        image.save(path, format=kind, **options)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write {shown or path}: {exc}") from None
