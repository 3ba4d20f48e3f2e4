"""What every example shares: its command line, the connection to the server, and saving results.

Each example script runs as ``python examples/NAME.py [--target HOST:PORT] [--out DIR] [--small] [--npz]``
against a running server (``convserve serve``) and writes ``DIR/NAME.png``. With ``--npz`` it also writes
the arrays it computed to ``DIR/NAME.npz`` (the tests compare them with scipy, numpy and torch).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from matplotlib.figure import Figure

import convserve

DEFAULT_TARGET = "127.0.0.1:50051"


def parse_args(description: str | None) -> argparse.Namespace:
    """Parse the options every example takes.

    Parameters
    ----------
    description : str or None
        The help text (the example's module docstring).

    Returns
    -------
    argparse.Namespace
        ``target`` (``--target``, else ``CONVSERVE_TARGET``, else 127.0.0.1:50051), ``out`` (a
        ``Path``, created if missing), ``small`` (a quick, CI-sized run) and ``npz``.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--target",
        default=os.environ.get("CONVSERVE_TARGET") or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the server's address (default: $CONVSERVE_TARGET, else {DEFAULT_TARGET})",
    )
    parser.add_argument("--out", type=Path, default=Path.cwd(), metavar="DIR", help="the folder the PNG goes to (default: the current directory)")
    parser.add_argument("--small", action="store_true", help="a quick run on smaller inputs (as CI runs it)")
    parser.add_argument("--npz", action="store_true", help="also write the inputs and results to OUT/NAME.npz")
    args = parser.parse_args()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # an existing file of that name, no permission: one line, exit 2
        parser.error(f"--out {args.out}: cannot use it as the output folder ({error.strerror or error})")
    return args


@contextlib.contextmanager
def connect(target: str) -> Iterator[convserve.Client]:
    """Open a client, check that the server answers, and turn any error of the service into a clear exit.

    Parameters
    ----------
    target : str
        The server's address, ``host:port``.

    Yields
    ------
    convserve.Client
        A connected client, closed when the ``with`` block ends.

    Raises
    ------
    SystemExit
        With a one-line message (and status 1) when the server cannot be reached or refuses a call.
    """
    try:
        with convserve.Client(target) as client:
            client.server_info()  # fails at once, before any work, when nothing answers at target
            yield client
    except convserve.ConvserveError as error:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {error}") from None


def save_figure(figure: Figure, out: Path, name: str) -> Path:
    """Write ``figure`` to ``out/name.png`` and return the path.

    A ``matplotlib.figure.Figure`` made without pyplot renders with Agg: no screen is needed. The PNG is
    reduced to 256 colours (Pillow), which keeps a figure with photographs in it under 200 KB.
    """
    path = out / f"{name}.png"
    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=90, bbox_inches="tight")
    rendered.seek(0)
    with PIL.Image.open(rendered) as image:
        image.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path}")
    return path


def save_results(args: argparse.Namespace, name: str, **arrays: Any) -> None:
    """With ``--npz``, write the named arrays to ``out/name.npz``; otherwise do nothing."""
    if args.npz:
        path = args.out / f"{name}.npz"
        named: dict[str, Any] = {key: np.asarray(value) for key, value in arrays.items()}
        np.savez(path, **named)
        print(f"wrote {path}")
