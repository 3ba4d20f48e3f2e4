"""What the file commands share: their error type, warnings on stderr, and the optional [cli] imports."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

INSTALL_CLI = "pip install 'convserve[cli]'"

# exit codes of the file commands
EXIT_FAILED = 1  # the call failed: server error, unreachable, deadline
EXIT_USAGE = 2  # bad arguments or input: the user can fix the command line


class CliError(Exception):
    """A failure the command reports as one line on stderr, with its exit code (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    print(f"convserve: warning: {message}", file=sys.stderr, flush=True)


def need(module: str, package: str, purpose: str) -> ModuleType:
    """Import an optional dependency of the [cli] extra, or fail with the install hint.

    Parameters
    ----------
    module : str
        The import name (``PIL.Image``, ``soundfile``, ``tqdm``).
    package : str
        The distribution that provides it (``Pillow``, ``soundfile``, ``tqdm``).
    purpose : str
        What needs it, for the message (``reading .png``).

    Raises
    ------
    CliError
        The module cannot be imported (exit code 2).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # includes a module blocked with sys.modules[name] = None
        raise CliError(f"{purpose} needs {package}, which is not installed ({exc}): {INSTALL_CLI}") from None
    except OSError as exc:  # soundfile without its libsndfile
        raise CliError(f"{purpose} needs {package}, which cannot load ({exc}): {INSTALL_CLI}") from None
