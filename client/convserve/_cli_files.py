"""Reading and writing the file commands' inputs and outputs, by suffix: ``.npy``, images, audio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convserve import _cli_audio, _cli_image
from convserve._cli_common import CliError
from convserve._cli_samples import Array, Signal

NPY = (".npy",)
FORMATS = (*NPY, *_cli_image.SUFFIXES, *_cli_audio.SUFFIXES)


def kind_of(path: str, role: str) -> str:
    """``array``, ``image`` or ``audio`` from the suffix of ``path``; a CliError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix in NPY:
        return "array"
    if suffix in _cli_image.SUFFIXES:
        return "image"
    if suffix in _cli_audio.SUFFIXES:
        return "audio"
    raise CliError(f"{role} {path}: unknown format {suffix or '(no suffix)'!r}; expected one of {', '.join(FORMATS)}")


def read(path: str) -> Signal:
    """The samples of an input file (``.npy`` arrays as stored, all axes convolved by default)."""
    kind = kind_of(path, "input")
    if not Path(path).is_file():
        raise CliError(f"cannot read {path}: no such file")
    if kind == "image":
        return _cli_image.read(path)
    if kind == "audio":
        return _cli_audio.read(path)
    data = load_npy(path)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biufc":
        raise CliError(f"{path}: expected a numeric array; got {getattr(data, 'dtype', type(data))}")
    if data.size == 0:
        raise CliError(f"{path}: the array is empty (shape {data.shape})")
    return Signal(data, "array", data.dtype, tuple(range(data.ndim)))


def write_array(path: str, data: Array, shown: str | None = None) -> None:
    """Write a ``.npy`` file (``shown``: its name in messages)."""
    try:
        with open(path, "wb") as handle:  # a handle: np.save would add .npy to a name such as OUT.NPY
            np.save(handle, data, allow_pickle=False)
    except OSError as exc:
        raise CliError(f"cannot write {shown or path}: {exc.strerror or exc}") from None


def load_npy(path: str, what: str = "") -> Array:
    """The array of a ``.npy`` file, refusing a header that claims more data than the file holds (``what``: ``kernel file `` in messages).

    Raises
    ------
    CliError
        A bad or truncated file (before any memory is taken for what its header claims).
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(handle)
            data_offset = handle.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"cannot read {what}{path}: bad or truncated .npy file ({exc})") from None
    if dtype.hasobject:
        raise CliError(f"cannot read {what}{path}: expected a numeric array; got {dtype} (objects are not read)")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = os.path.getsize(path) - data_offset
    if needed > held:
        raise CliError(f"cannot read {what}{path}: bad or truncated .npy file: its header says {shape} {dtype} ({needed} bytes), the file holds {held}")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"cannot read {what}{path}: {exc}") from None
