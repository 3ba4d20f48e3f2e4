"""The server's malloc settings: applied through mallopt on glibc, off when asked."""

from __future__ import annotations

import subprocess
import sys

from convserve_server.ops import allocator
from convserve_server import settings


def test_zero_leaves_the_defaults() -> None:
    assert allocator.configure(0) == "glibc malloc defaults"


def test_glibc_accepts_the_settings_in_a_fresh_process() -> None:
    code = "from convserve_server.ops import allocator; print(allocator.configure(1 << 30))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "keeps blocks up to 1073741824 bytes" in out, out


def test_negative_retain_bytes_is_a_setting_error() -> None:
    try:
        settings.load({"malloc_retain_bytes": -1}, environ={})
    except settings.SettingsError as error:
        assert "malloc_retain_bytes" in str(error)
    else:
        raise AssertionError("a negative malloc_retain_bytes was accepted")
