"""Entry point of the ``convserve`` command; its commands come from the installed packages.

A package adds a command through an entry point of the group ``convserve.commands`` (the server
registers ``serve``, ``health`` and ``calibrate``): the entry point names a callable that takes the
command's arguments and returns its exit code. The client never imports the server; in a client-only
install, a server command says which extra to install instead of failing with an import error.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Callable, Sequence

GROUP = "convserve.commands"
SERVER_COMMANDS = ("serve", "health", "calibrate")  # what the server package registers
INSTALL_SERVER = "pip install 'convserve[server]'" + " (or reinstall it, so that its commands are registered)"

Command = Callable[[Sequence[str]], int]


def commands() -> dict[str, metadata.EntryPoint]:
    """The installed commands by name (entry points of the group ``convserve.commands``)."""
    return {entry.name: entry for entry in sorted(metadata.entry_points(group=GROUP), key=lambda entry: entry.name)}


def _summary(entry: metadata.EntryPoint) -> str:
    """The first line of a command's docstring (loading it), or why it cannot run."""
    try:
        command = entry.load()
    except ImportError:
        return f"(not available: install the server: {INSTALL_SERVER})"
    return next(iter((command.__doc__ or "").strip().splitlines()), "")


def _usage(found: dict[str, metadata.EntryPoint]) -> str:
    """The text of ``convserve --help``: the commands found."""
    lines = ["usage: convserve <command> [arguments]", "", "Convolution as a gRPC service.", "", "commands:"]
    lines += [f"  {name:<10} {_summary(entry)}" for name, entry in found.items()]
    if not found:
        lines.append(f"  (none installed: install the server: {INSTALL_SERVER})")
    lines += ["", "`convserve <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convserve`` command; return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not arguments or arguments[0] in ("-h", "--help"):
        print(_usage(found), file=sys.stdout if arguments else sys.stderr)
        return 0 if arguments else 2
    name = arguments[0]
    if name not in found:
        if name in SERVER_COMMANDS:
            print(f"convserve: `{name}` needs the server; install the server: {INSTALL_SERVER}", file=sys.stderr)
        else:
            print(f"convserve: unknown command {name!r} (commands: {', '.join(found) or 'none'}; see convserve --help)", file=sys.stderr)
        return 2
    try:
        command: Command = found[name].load()
    except ImportError as exc:
        print(f"convserve: the server is not installed ({exc}); install the server: {INSTALL_SERVER}", file=sys.stderr)
        return 2
    return command(arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
