"""The file commands' progress bar without a server: when it is drawn, what it counts, and without tqdm."""

from __future__ import annotations

import io
import sys

import pytest

from convserve import _cli_progress
from convserve._cli_common import CliError


class Screen(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def on_screen(monkeypatch: pytest.MonkeyPatch) -> Screen:
    """Make stderr a terminal (in the test itself: pytest's capture sets sys.stderr again after the fixtures)."""
    screen = Screen()
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def test_drawn_on_a_terminal_only_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    on_screen(monkeypatch)
    assert _cli_progress.Bar(None, "job", 10).callback is not None
    assert _cli_progress.Bar(False, "job", 10).callback is None  # --no-progress
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: a pipe, a log file
    assert _cli_progress.Bar(None, "job", 10).callback is None
    assert _cli_progress.Bar(True, "job", 10).callback is not None  # --progress


def test_a_short_job_on_a_terminal_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    monkeypatch.setattr(_cli_progress, "SHOW_AFTER_SECONDS", 1e9)  # "short": whatever this machine's speed
    with _cli_progress.Bar(None, "job", 100) as bar:
        bar(0, 100)
        bar(100, 100)
    assert screen.getvalue() == ""


def test_a_forced_bar_counts_bytes_then_says_computing_and_done(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    with _cli_progress.Bar(True, "convolve x.npy", 2048) as bar:
        bar(0, 2048)
        bar(1024, 2048)
        assert bar.bar.n == 1024 and bar.bar.unit == "B"
        bar(0, 2048)  # a retried chunked call starts again
        assert bar.bar.n == 0
        bar(2048, 2048)
        assert "computing" in screen.getvalue().rsplit("\r", 1)[-1]
    frames = screen.getvalue().split("\r")
    assert "convolve x.npy" in frames[-1] and "100%" in frames[-1] and "done" in frames[-1]


def test_tiles_are_counted_as_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    with _cli_progress.Bar(True, "job", 10**6) as bar:
        bar(0, 4)  # a total other than the input's bytes: tiles
        bar(4, 4)
        assert bar.bar.unit == " tiles"
    assert "4/4" in screen.getvalue() and "computing" not in screen.getvalue()


def test_a_failed_call_leaves_a_failed_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    with pytest.raises(RuntimeError):
        with _cli_progress.Bar(True, "job", 10) as bar:
            bar(0, 10)
            raise RuntimeError("the call failed")
    assert "failed" in screen.getvalue().rsplit("\r", 1)[-1]


def test_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    automatic = _cli_progress.Bar(None, "job", 10)
    assert automatic.callback is None and "pip install 'convserve[cli]'" in screen.getvalue()  # a warning; the job goes on
    with pytest.raises(CliError, match=r"pip install 'convserve\[cli\]'") as raised:
        _cli_progress.Bar(True, "job", 10)  # --progress asked for it
    assert raised.value.code == 2
