"""Structured logging: one JSON object per line (or plain text), with the request id of each call.

Everything the server process writes to stderr from Python goes through here: log records,
warnings (``warnings.warn``, numpy's RuntimeWarning...), and exceptions that escape a thread or
the main program, so that a log collector never meets a raw multi-line traceback. (gRPC's C core
writes its own lines to stderr, at ERROR only by default: ``GRPC_VERBOSITY``.)
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from types import TracebackType
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed through ``extra`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
WARNINGS_LOGGER = "py.warnings"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message and the ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        """The record's UTC time to the millisecond (the formatted second is kept: a server logs many lines per second)."""
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: one WARNING record with the category and the source."""
    logging.getLogger(WARNINGS_LOGGER).warning(str(message), extra={"category": category.__name__, "source": f"{filename}:{lineno}"})


def _log_uncaught(kind: str, exc_type: type[BaseException], exc: BaseException | None, traceback: TracebackType | None, **fields: Any) -> None:
    logging.getLogger("convserve.server").error(f"uncaught {exc_type.__name__} in {kind}", exc_info=(exc_type, exc or exc_type(), traceback), extra=fields)


def _excepthook(exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    _log_uncaught("the main thread", exc_type, exc, traceback)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(f"thread {args.thread.name if args.thread else '?'}", args.exc_type, args.exc_value, args.exc_traceback)


def _unraisablehook(unraisable: Any) -> None:
    _log_uncaught("a finalizer (ignored)", unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback, object=repr(unraisable.object))


def configure(level: str, fmt: str) -> None:
    """Send logs, warnings and uncaught exceptions to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    warnings.showwarning = _show_warning
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
