"""The progress bar of the file commands (tqdm on stderr), driven by the client's ``progress(done, total)`` callback.

The client reports bytes handed to gRPC on a one-shot call (chunk by chunk when chunked) and tiles
done on a tiled one. After the last byte went out the bar says ``computing`` and keeps its clock
running until the result is back.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

from convserve._cli_common import INSTALL_CLI, CliError, need, warn

TICK_SECONDS = 0.5  # how often the bar's clock is redrawn while nothing is reported
SHOW_AFTER_SECONDS = 1.0  # an automatic bar appears only on jobs that take longer than this


def wanted(flag: bool | None) -> bool:
    """Whether to draw a bar: ``--progress`` (True), ``--no-progress`` (False), else when stderr is a terminal."""
    if flag is not None:
        return flag
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Bar:
    """A ``progress`` callback that draws a tqdm bar; use it as a context manager around the call.

    Parameters
    ----------
    flag : bool or None
        ``--progress`` / ``--no-progress`` / neither (a bar when stderr is a terminal).
    label : str
        What the bar shows first (the command and the input's name).
    input_bytes : int
        The bytes of the one-shot call (input plus kernel): a total equal to it counts bytes, any
        other counts tiles.
    """

    def __init__(self, flag: bool | None, label: str, input_bytes: int) -> None:
        self.enabled = wanted(flag)
        self.forced = flag is True
        self.label = label
        self.input_bytes = input_bytes
        self.bar: Any = None
        self.shown_from: float | None = None  # monotonic time from which the bar is drawn (set by the first report)
        self.counts_bytes = False
        self.done = 0
        self.total: int | None = None
        self._tqdm: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.enabled:
            try:
                self._tqdm = need("tqdm", "tqdm", "the progress bar").tqdm
            except CliError:
                if self.forced:
                    raise
                warn(f"no progress bar: tqdm is not installed ({INSTALL_CLI})")
                self.enabled = False

    @property
    def callback(self) -> Any:
        """The callable to pass as ``progress=`` (None when no bar is drawn)."""
        return self if self.enabled else None

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self.shown_from is None:
                self.shown_from = time.monotonic() + (0.0 if self.forced else SHOW_AFTER_SECONDS)
                self.counts_bytes = total == self.input_bytes
            self.done, self.total = done, total  # done may go back to 0: a retried chunked call sends again
            self._draw()

    def _draw(self) -> None:
        """Draw the bar, once the job has run long enough to show one.

        The tqdm bar is created at its first draw, with no delay of its own: a bar that tqdm thinks
        was never drawn is not finished with a newline on close, and the next line would land on it.
        """
        if self.shown_from is None or self.total is None:
            return
        if self.bar is None:
            if time.monotonic() < self.shown_from:
                return
            self.bar = self._tqdm(
                total=self.total,
                desc=self.label,
                unit="B" if self.counts_bytes else " tiles",
                unit_scale=self.counts_bytes,
                unit_divisor=1024,
                file=sys.stderr,
                delay=0,
                dynamic_ncols=True,
                leave=True,
            )
        self.bar.total = self.total
        self.bar.n = self.done
        if self.done >= self.total and self.counts_bytes:  # every byte is out: the server computes
            self.bar.set_postfix_str("computing", refresh=False)
        self.bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self._lock:
                self._draw()

    def __enter__(self) -> Bar:
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, name="convserve-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self.bar is not None:
                self.bar.set_postfix_str("done" if kind is None else "failed", refresh=False)
                self.bar.close()
