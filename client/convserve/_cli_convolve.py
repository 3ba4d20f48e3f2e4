"""``convserve convolve`` and ``convserve correlate``: a file and a kernel in, one call to the server, a file out.

The steps: read the input (its samples, default axes, sample type, rate), build the kernel (named
or from a file; ``--scale``; the audio options), call ``Client.convolve``/``correlate`` with a
progress bar, then ``--bias``, ``--normalize``, and the conversion to the output's sample type
(integers rounded, clipped with a warning), and write the output in the format of its suffix.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import convserve
from convserve import _cli_audio, _cli_files, _cli_image, _cli_kernels
from convserve._cli_args import normal_axes, parse
from convserve._cli_common import EXIT_FAILED, CliError, warn
from convserve._cli_progress import Bar
from convserve._options import BOUNDARIES
from convserve._cli_samples import Array, Signal, dtype_of, quantize
from convserve.errors import ConvserveError


def run(command: str, argv: Sequence[str]) -> int:
    """Run ``convserve convolve|correlate ARGS``; return the exit code (errors: one line on stderr)."""
    args = parse(command, argv)
    try:
        _run(command, args)
    except CliError as exc:
        print(f"convserve {command}: {exc}", file=sys.stderr)
        return exc.code
    except ConvserveError as exc:
        print(f"convserve {command}: {_advice(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"convserve {command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"convserve {command}: out of memory (try --tiles, or a smaller input)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run(command: str, args: argparse.Namespace) -> None:
    """The command's steps (raising CliError or ConvserveError)."""
    signal = _cli_files.read(args.input)
    out_kind = _cli_files.kind_of(args.output, "output")
    data, alpha = signal.data, signal.alpha
    if alpha is not None and args.alpha == "convolve":
        data, alpha = np.concatenate([data if data.ndim == 3 else data[..., None], alpha[..., None]], axis=2), None
    axes = normal_axes(args.axes, data.ndim) if args.axes is not None else signal.axes
    if signal.rate is not None and args.rate is not None and args.rate != signal.rate:
        raise CliError(f"{args.input} has its own rate {signal.rate:g} Hz; --rate is for files without one")
    rate = signal.rate if signal.rate is not None else args.rate
    mode = args.mode or ("same" if signal.kind == "image" else "full")
    boundary = _boundary(args, mode, signal.kind)
    target = dtype_of(args.output_dtype) if args.output_dtype else signal.dtype
    kernel = _kernel(args, command, data, axes, rate, mode)
    if alpha is not None and mode not in ("same", "circular") and any(kernel.shape[axis] != 1 for axis in (0, 1)):
        raise CliError(f"--alpha keep needs an output the size of the input (--mode same or circular); got --mode {mode} (or use --alpha convolve)")
    data, kernel, wire_dtype = _request_dtype(data, kernel, target)
    final = _destination(args.output)  # a read-only OUTPUT is refused before the call
    with _client(args) as client, Bar(args.progress, f"{command} {Path(args.input).name}", data.nbytes + kernel.nbytes) as bar:
        call = client.convolve if command == "convolve" else client.correlate
        result = call(
            data, kernel, mode=mode, method=args.method, axes=axes, boundary=boundary, fill_value=args.fill_value or 0.0,
            output_dtype=wire_dtype, tiles=args.tiles, progress=bar.callback,
        )  # fmt: skip
    result = _levels(np.asarray(result), signal, target, args, out_kind)
    partial = final.with_name(f".{final.stem}.convserve-{os.getpid()}{final.suffix}")  # the same suffix: the same format
    try:
        _write(str(partial), args, out_kind, result, signal, target, alpha, rate)
        if final.exists():
            os.chmod(partial, stat.S_IMODE(final.stat().st_mode))  # the replaced file's permissions are kept
        os.replace(partial, final)  # OUTPUT appears whole, or not at all
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _destination(output: str) -> Path:
    """The file OUTPUT names: a symbolic link's target (written through, the link kept); a read-only file is refused."""
    final = Path(output)
    if final.is_symlink():
        final = final.resolve()
    if final.is_dir():
        raise CliError(f"cannot write {output}: it is a directory")
    if final.exists() and not final.stat().st_mode & stat.S_IWUSR:
        raise CliError(f"cannot write {output}: the file is read-only (make it writable, or choose another OUTPUT)")
    return final


def _boundary(args: argparse.Namespace, mode: str, kind: str) -> str:
    """``--boundary``, else fill with ``--fill-value`` or ``--mode circular``, else edge for images and fill otherwise."""
    fills = [name for name, code in BOUNDARIES.items() if code == BOUNDARIES["fill"]]
    if args.boundary is None:
        return "fill" if args.fill_value is not None or mode == "circular" or kind != "image" else "edge"
    if args.fill_value is not None and args.boundary not in fills:
        raise CliError(f"--fill-value is the constant of --boundary fill; it has no effect with --boundary {args.boundary} (drop one of them)")
    if mode == "circular" and args.boundary not in fills:
        raise CliError(f"--mode circular wraps the input around; it takes no --boundary {args.boundary} (drop --boundary, or choose another --mode)")
    return str(args.boundary)


def _kernel(args: argparse.Namespace, command: str, data: Array, axes: tuple[int, ...], rate: float | None, mode: str) -> Array:
    """The kernel as sent: named or read, ``--scale``d, with the audio options, shaped for ``data``."""
    kernel = _cli_kernels.resolve(args.kernel, args.kernel_file, len(axes), rate)
    if args.scale is not None:
        kernel = _cli_kernels.apply_scale(kernel, args.scale)
    audio = (args.dry, args.wet, args.mix, args.ir_norm, args.ir_gain) != (1.0, 1.0, 1.0, -1.0, 1.0)
    if audio:
        if len(axes) != 1:
            raise CliError(f"--dry, --wet, --mix and --ir-* act along one convolved axis; the input has {len(axes)} ({axes}); choose one with --axes")
        along = axes[0] if kernel.ndim == data.ndim else 0
        taps = np.moveaxis(kernel, along, 0)
        taps = _cli_audio.impulse_response(taps, args.ir_norm, args.ir_gain, args.ir_link)
        taps = _cli_audio.mixed(taps, args.mix, args.dry, args.wet, _aligned_tap(taps.shape[0], mode, command))
        kernel = np.moveaxis(taps, 0, along)
    return _cli_kernels.fit(kernel, data.ndim, axes)


def _aligned_tap(taps: int, mode: str, command: str) -> int:
    """The kernel tap that passes the input through unshifted in ``mode`` (where ``--mix`` puts the dry signal)."""
    at = {"full": 0, "circular": 0, "same": (taps - 1) // 2, "valid": taps - 1}[mode]
    return taps - 1 - at if command == "correlate" and mode != "circular" else at


def _request_dtype(data: Array, kernel: Array, target: np.dtype[Any]) -> tuple[Array, Array, Any]:
    """The inputs as sent and the ``output_dtype`` asked of the server.

    A float or complex output type: integers with integers are computed in float64 (complex128),
    which the server accepts for them and which holds their result's magnitude (exactly below 2**53);
    other inputs in the output type when it is at least as wide as their result type, else in their
    own result type, then cast. An integer output type with integers in and out: exactly, in int64
    (uint64 inputs within its range are sent as int64; beyond it, a CliError), then clipped to the
    output's type. Otherwise the server's own result type (float64 for 8-bit images and the float64
    named kernels), which the CLI then rounds.
    """
    integers = data.dtype.kind in "biu" and kernel.dtype.kind in "biu"
    if target.kind in "fc":
        if integers:
            return data, kernel, np.dtype(np.float64 if target.kind == "f" else np.complex128)
        if np.result_type(data.dtype, kernel.dtype, target) == target:
            return data, kernel, target
        return data, kernel, None
    if not integers:
        return data, kernel, None
    if all(_fits_int64(array) for array in (data, kernel)):
        return _as(data, np.int64), _as(kernel, np.int64), np.int64
    raise CliError("uint64 values above 2**63-1: the server computes integers exactly within int64 only; use --output-dtype float64 (exact below 2**53)")


def _fits_int64(array: Array) -> bool:
    return array.dtype != np.uint64 or int(array.max()) <= np.iinfo(np.int64).max


def _as(array: Array, dtype: Any) -> Array:
    return array if array.dtype == dtype else array.astype(dtype)


def _advice(exc: ConvserveError) -> str:
    """The server's message, with its advice in terms of this command's flags (``--output-dtype``, not ``output_dtype=``)."""
    text = str(exc)
    return re.sub(r"use output_dtype='?(\w+)'?", r"use --output-dtype \1", text)


def _full_range(signal: Signal, target: np.dtype[Any]) -> float:
    """What 100% is for ``--bias`` and ``--normalize``: the output integer type's maximum, else the input's, else 1.0.

    A float output of integer samples (an 8-bit image as float32) holds them unscaled, so 100% is
    the input's quantum range, as ImageMagick's ``-bias 50%`` is half of it whatever the output depth.

    Audio counts in full-scale units: 1.0 for float samples, ``1 - 2**(1-bits)`` (the largest integer
    sample, 32767/32768 for 16 bits) for integer ones, so that a normalised peak is not clipped.
    """
    if signal.kind == "audio":
        if target.kind not in "iu":
            return 1.0
        bits = signal.bits if target == signal.dtype and signal.bits else target.itemsize * 8
        return 1.0 - 2.0 ** (1 - bits)
    if target.kind in "iu":
        return float(np.iinfo(target).max)
    if signal.dtype.kind in "iu":  # a float output of integer samples keeps their values (0..255 for 8-bit): their range
        return float(np.iinfo(signal.dtype).max)
    return 1.0


def _levels(result: Array, signal: Signal, target: np.dtype[Any], args: argparse.Namespace, out_kind: str) -> Array:
    """``--bias`` then ``--normalize`` (images: min..max stretched to 0..full; others: peak to full)."""
    full = _full_range(signal, target)
    if args.bias is not None:
        value, percent = args.bias
        result = result + (value / 100.0 * full if percent else value)
    if args.normalize:
        if result.dtype.kind == "c":
            raise CliError("--normalize: not for complex results")
        low, high = float(result.min()), float(result.max())
        if "image" in (signal.kind, out_kind):
            if high > low:
                result = (result - low) * (full / (high - low))
            else:
                warn(f"--normalize: the result is constant ({low:g}); left as it is")
        elif max(abs(low), abs(high)) > 0:
            result = result * (full / max(abs(low), abs(high)))
    return result


def _write(
    path: str, args: argparse.Namespace, out_kind: str, result: Array, signal: Signal, target: np.dtype[Any], alpha: Array | None, rate: float | None
) -> None:
    """Convert ``result`` to the output's samples and write them to ``path``."""
    if out_kind == "audio":
        if signal.kind != "audio" and signal.dtype.kind in "iu":  # integer samples of a .npy: full scale is their type's
            result = result / 2.0 ** (signal.dtype.itemsize * 8 - 1)
        subtype = _cli_audio.subtype_for(path, target, signal if signal.kind == "audio" else None, args.subtype)
        _cli_audio.write(path, result, rate, subtype, shown=args.output)
        return
    if args.subtype is not None:
        raise CliError("--subtype is for audio outputs (.wav, .flac)")
    scale, bits = 1.0, None
    if signal.kind == "audio" and target.kind in "iu":  # full-scale samples back to integers
        bits = signal.bits if target == signal.dtype and signal.bits else target.itemsize * 8
        scale = 2.0 ** (bits - 1)
        if target.kind == "u":  # offset binary, as PCM_U8: -1.0 -> 0, 0.0 -> 2**(bits-1)
            result, bits = result + 1.0, None
    samples = quantize(result, target, scale, bits, what=args.output)
    if alpha is not None:
        if samples.shape[:2] != alpha.shape:
            raise CliError(f"--alpha keep: the result's shape {samples.shape} does not match the alpha channel's {alpha.shape}; use --alpha convolve")
        samples = np.concatenate([samples if samples.ndim == 3 else samples[..., None], alpha.astype(target)[..., None]], axis=2)
    if out_kind == "image":
        _cli_image.write(path, samples, signal if signal.kind == "image" else None, args.quality, shown=args.output)
    else:
        _cli_files.write_array(path, samples, shown=args.output)


def _client(args: argparse.Namespace) -> convserve.Client:
    """The client of ``--target`` (its default retry policy; ``--timeout`` the deadline of the call)."""
    try:
        return convserve.Client(args.target, timeout=args.timeout, token=args.token, root_certificates=args.root_certificates)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot connect to {args.target}: {exc}") from None
