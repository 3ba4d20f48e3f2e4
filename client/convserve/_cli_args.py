"""The command line of ``convserve convolve`` and ``convserve correlate``: the parser and the checks of single values."""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from convserve._base import DEFAULT_TARGET, DEFAULT_TIMEOUT
from convserve._cli_common import EXIT_USAGE, CliError
from convserve._cli_kernels import NAMED
from convserve._environment import TARGET_VARIABLE, TOKEN_VARIABLE, target, token
from convserve._options import BOUNDARIES, METHODS, MODES


EPILOG = """\
KERNEL is a named kernel (one dimension per convolved axis; box:3 on an image is 3x3/9):
{names}
Anything else is a kernel file (.npy, .txt, .csv); --kernel-file PATH always reads a file.

formats (by suffix): .npy; .png .jpg .jpeg .tif .tiff (Pillow); .wav .flac (soundfile).
The output keeps the input's sample type unless --output-dtype says otherwise; integer outputs are
rounded, and values outside their range are clipped with a warning on stderr.
exit codes: 0 done; 1 the call failed (server error, unreachable, deadline); 2 bad arguments or input.
See docs/cli.md for the formulas of --scale, --bias, --normalize and the audio options."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser(command: str) -> Parser:
    """The parser of ``convserve convolve`` or ``convserve correlate``."""
    what = "Convolve" if command == "convolve" else "Cross-correlate"
    parser = Parser(
        prog=f"convserve {command}",
        description=f"{what} a file (.npy, image, audio) with a kernel on a convserve server; write the result to OUTPUT.",
        epilog=EPILOG.format(names="\n".join(f"  {help_text}" for help_text, _ in NAMED.values())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", help="the input file: .npy, .png/.jpg/.tif or .wav/.flac")
    parser.add_argument("kernel", metavar="KERNEL", nargs="?", help="a named kernel (box:3, gaussian:2, ...) or a kernel file")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="the output file; its suffix picks the format")
    parser.add_argument("--kernel-file", metavar="PATH", help="read the kernel from this .npy/.txt/.csv file (instead of KERNEL)")
    server = parser.add_argument_group("server")
    server.add_argument(
        "--target",
        type=_target,
        default=target(DEFAULT_TARGET),
        help=f"host:port (default ${TARGET_VARIABLE}, else {DEFAULT_TARGET})",
    )
    server.add_argument(
        "--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS", help=f"deadline of the call ('none': no deadline; default {DEFAULT_TIMEOUT:g})"
    )
    server.add_argument("--token", default=token(), help=f"bearer token (default ${TOKEN_VARIABLE})")
    server.add_argument("--root-certificates", metavar="PEM", help="CA bundle of the server's certificate: use TLS")
    server.add_argument("--tiles", type=_tiles, metavar="N|auto", help="split the job into N overlap-save tiles sent concurrently")
    options = parser.add_argument_group("convolution (as scipy.signal)")
    options.add_argument("--mode", choices=list(MODES), help="output size (default: same for images, full otherwise)")
    options.add_argument("--method", choices=list(METHODS), default="auto", help="how the server computes (default auto)")
    options.add_argument(
        "--boundary",
        choices=list(BOUNDARIES),
        help="extension beyond the edges (default: edge for images, fill otherwise and with --mode circular or --fill-value)",
    )
    options.add_argument("--fill-value", type=_finite, metavar="X", help="the constant of --boundary fill (default 0; given alone, it implies --boundary fill)")
    options.add_argument("--axes", type=_axes, metavar="A[,B...]", help="axes to convolve (default: all for .npy, 0,1 for images, 0 for audio)")
    options.add_argument("--output-dtype", metavar="DTYPE", help="sample type of the output (default: the input's)")
    options.add_argument("--rate", type=_positive, metavar="HZ", help="sample rate where the file has none (.npy): echo:, audio output")
    levels = parser.add_argument_group("levels (as ImageMagick)")
    levels.add_argument("--scale", metavar="SPEC", help="scale the kernel as -define convolve:scale=SPEC: FACTOR[!^][,ORIGIN_ADD][%%]")
    levels.add_argument("--bias", type=_bias, metavar="BIAS", help="add BIAS to the result (BIAS%%, such as 50%%: percent of the output's full range)")
    levels.add_argument("--normalize", action="store_true", help="stretch images to the full range (-auto-level); audio and .npy to peak full scale")
    levels.add_argument("--alpha", choices=["keep", "convolve"], default="keep", help="an image's alpha channel: kept as it is (default) or convolved")
    levels.add_argument("--quality", type=_quality, default=95, metavar="Q", help="JPEG quality of a .jpg output, 1..100 (default 95)")
    audio = parser.add_argument_group("audio (as ffmpeg's afir)")
    audio.add_argument("--dry", type=float, default=1.0, metavar="G", help="input gain (default 1)")
    audio.add_argument("--wet", type=float, default=1.0, metavar="G", help="output gain (default 1)")
    audio.add_argument("--mix", type=float, default=1.0, metavar="M", help="share of the convolved signal; 1-M of the dry input is added (default 1)")
    audio.add_argument("--ir-norm", type=float, default=-1.0, metavar="P", help="divide the kernel by its P-norm, 0 <= P <= 2 (default -1: as it is)")
    audio.add_argument("--ir-gain", type=float, default=1.0, metavar="G", help="multiply the kernel by G (default 1)")
    audio.add_argument("--ir-link", action=argparse.BooleanOptionalAction, default=True, help="one norm for all kernel columns (default on)")
    audio.add_argument("--subtype", metavar="NAME", help="soundfile subtype of an audio output (PCM_16, PCM_24, FLOAT...; default: the input's)")
    shown = parser.add_argument_group("progress")
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="always draw a progress bar on stderr")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="never draw one (default: a bar on a terminal)")
    return parser


NEGATIVE = re.compile(r"-\.?\d")  # a value such as -50%, -100,100% or -1e-3 (argparse takes it for an option)


def parse(command: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command's arguments (exit 2 with one line on a bad one)."""
    parser = build_parser(command)
    return parser.parse_intermixed_args(joined_values(parser, argv))  # KERNEL may come after -o OUTPUT


def joined_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--bias -50%`` as ``--bias=-50%``: an option that takes a value keeps the negative number after it."""
    taking = {name for name, action in parser._option_string_actions.items() if action.nargs is None and action.option_strings and action.const is None}
    result: list[str] = []
    arguments = list(argv)
    index = 0
    while index < len(arguments):
        token = arguments[index]
        if token in taking and token.startswith("--") and index + 1 < len(arguments) and NEGATIVE.match(arguments[index + 1]):
            result.append(f"{token}={arguments[index + 1]}")
            index += 2
            continue
        if token == "--":
            return result + arguments[index:]
        result.append(token)
        index += 1
    return result


def _target(text: str) -> str:
    if not text.strip() or any(character.isspace() for character in text):
        raise argparse.ArgumentTypeError(f"expected host:port (or ipv4:h1:p1,h2:p2); got {text!r}")
    return text


def _timeout(text: str) -> float | None:
    if text.strip().lower() in ("none", "inf"):
        return None
    return _positive(text)


def _checked(text: str, parse: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Any:
    """``parse(text)`` when ``accept`` takes it, else argparse's error naming what was ``expected``."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def _positive(text: str) -> float:
    return float(_checked(text, float, lambda v: 0 < v < math.inf, "a positive number"))


def _finite(text: str) -> float:
    return float(_checked(text, float, math.isfinite, "a finite number"))


def _quality(text: str) -> int:
    return int(_checked(text, int, lambda v: 1 <= v <= 100, "an integer from 1 to 100"))


def _tiles(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    return int(_checked(text, int, lambda v: v >= 1, "a positive integer or 'auto'"))


def _axes(text: str) -> tuple[int, ...]:
    try:
        axes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,1; got {text!r}") from None
    return axes


def _bias(text: str) -> tuple[float, bool]:
    """``B`` or ``B%``: (value, is a percentage)."""
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a percentage such as 50%; got {text!r}") from None
    return value, percent


def normal_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    """Axes as non-negative ints, each once, checked against ``ndim``."""
    normal = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise CliError(f"--axes: axis {axis} is out of range for an input of {ndim} dimension(s)")
        normal.append(axis % ndim)
    if len(set(normal)) != len(normal):
        raise CliError(f"--axes: an axis appears twice in {tuple(axes)}")
    return tuple(sorted(normal))
