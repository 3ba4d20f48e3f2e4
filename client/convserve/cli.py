"""Entry point of the ``convserve`` command: the client's file commands, and the commands of installed packages.

``convolve`` and ``correlate`` (files in, files out, against a server) belong to the client. A
package adds a command through an entry point of the group ``convserve.commands`` (the
``convserve-server`` package registers ``serve``, ``health`` and ``calibrate``): the entry point
names a callable that takes the command's arguments and returns its exit code. The client never
imports the server; in a client-only install, a server command says which package to install
instead of failing with an import error.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Callable, Sequence

GROUP = "convserve.commands"
SERVER_COMMANDS = ("serve", "health", "calibrate")  # what the convserve-server package registers
SERVER_PACKAGE = "convserve-server"
INSTALL_SERVER = f"pip install {SERVER_PACKAGE} (from the repository: pip install ./client ./server)"
BUILTIN = {
    "convolve": "convolve a file (.npy, image, audio) with a kernel on a server",
    "correlate": "cross-correlate a file (.npy, image, audio) with a kernel on a server",
}

Command = Callable[[Sequence[str]], int]


def commands() -> dict[str, metadata.EntryPoint]:
    """The installed commands by name (entry points of the group ``convserve.commands``)."""
    return {entry.name: entry for entry in sorted(metadata.entry_points(group=GROUP), key=lambda entry: entry.name)}


def version_text() -> str:
    """The text of ``convserve --version``: the client's version, and the server package's when it is installed."""
    from convserve import __version__

    lines = [f"convserve {__version__}"]
    try:
        lines.append(f"{SERVER_PACKAGE} {metadata.version(SERVER_PACKAGE)}")
    except metadata.PackageNotFoundError:
        pass
    return "\n".join(lines)


def _summary(entry: metadata.EntryPoint) -> str:
    """The first line of a command's docstring (loading it), or why it cannot run."""
    try:
        command = entry.load()
    except ImportError:
        return f"(not available: install the server: {INSTALL_SERVER})"
    return next(iter((command.__doc__ or "").strip().splitlines()), "")


def _usage(found: dict[str, metadata.EntryPoint]) -> str:
    """The text of ``convserve --help``: the client's commands, then the commands found."""
    lines = ["usage: convserve <command> [arguments]", "       convserve --version", "", "Convolution as a gRPC service.", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, summary in BUILTIN.items()]
    lines += [f"  {name:<10} {_summary(entry)}" for name, entry in found.items() if name not in BUILTIN]
    if not any(name in found for name in SERVER_COMMANDS):
        lines.append(f"  (server commands {', '.join(SERVER_COMMANDS)}: install the server: {INSTALL_SERVER})")
    lines += ["", "`convserve <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convserve`` command; return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--version"]:
        print(version_text())
        return 0
    if arguments[:1] and arguments[0] in BUILTIN:
        from convserve._cli_convolve import run

        return run(arguments[0], arguments[1:])
    found = commands()
    if not arguments or arguments[0] in ("-h", "--help"):
        print(_usage(found), file=sys.stdout if arguments else sys.stderr)
        return 0 if arguments else 2
    name = arguments[0]
    if name not in found:
        if name in SERVER_COMMANDS:
            print(f"convserve: `{name}` needs the server; install the server: {INSTALL_SERVER}", file=sys.stderr)
        else:
            known = [*BUILTIN, *found]
            print(f"convserve: unknown command {name!r} (commands: {', '.join(known)}; see convserve --help)", file=sys.stderr)
        return 2
    try:
        command: Command = found[name].load()
    except ImportError as exc:
        print(f"convserve: the server is not installed ({exc}); install the server: {INSTALL_SERVER}", file=sys.stderr)
        return 2
    return command(arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
