"""The settings table (docs/operations.md) lists every flag of ``convserve serve --help``, with its variable and its real default.

The table once lived in the README; the old check walked the fields of ``Settings``, not the flags
the command accepts, and ignored the default column. This one starts from the command's own help.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from convserve_server.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
CORES = os.cpu_count() or 1
UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _rows(text: str) -> list[list[str]]:
    """The cells of every table row whose first cell is a flag."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| `--")]


@pytest.fixture(scope="module")
def help_flags() -> set[str]:
    """Every long option ``convserve serve --help`` prints (``--help`` itself excluded)."""
    result = subprocess.run([sys.executable, "-m", "convserve_server", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    flags = set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", result.stdout)) - {"help"}
    assert len(flags) >= 40, sorted(flags)
    return flags


def test_every_flag_of_serve_help_is_in_the_settings_table(help_flags: set[str]) -> None:
    """Each flag (and each ``--no-`` form) is in a row of the table, with the setting's variable on that row."""
    rows = _rows(OPERATIONS)
    missing = []
    for flag in sorted(help_flags):
        name = flag.removeprefix("no-").replace("-", "_")
        row = next((cells for cells in rows if f"`--{flag}`" in cells[0]), None)
        if row is None or (name in {f.name for f in dataclasses.fields(Settings)} and env_name(name) not in row[1]):
            missing.append(flag)
    assert not missing, f"flags of `convserve serve --help` missing from the settings table of docs/operations.md: {missing}"
    assert {"calibration", "allow-shared-memory", "no-allow-shared-memory"} <= help_flags


def test_the_settings_table_names_only_real_flags(help_flags: set[str]) -> None:
    documented = {flag for cells in _rows(OPERATIONS) for flag in re.findall(r"`--([a-z0-9-]+)`", cells[0])}
    invented = sorted(documented - help_flags)
    assert not invented, f"the settings table names flags `convserve serve` does not have: {invented}"


def _default(cell: str, item: dataclasses.Field[Any]) -> Any:
    """The value a default cell states: ``cores``, ``2 x cores``, ``512 MiB``, ``2^28``, ``off``/``on``, a number or a word."""
    text = cell.replace("`", "").strip()
    text = re.sub(r" \(.*\)$", "", text)  # "0 (off)" -> "0"
    if text in ("off", "empty"):
        return {"bool": False, "str": ""}.get(str(item.type), 0)
    if text == "on":
        return True
    if text in ("cores", "2 x cores"):
        return CORES * (2 if text.startswith("2") else 1)
    if sized := re.fullmatch(r"(\d+) (KiB|MiB|GiB)", text):
        return int(sized.group(1)) * UNITS[sized.group(2)]
    if power := re.fullmatch(r"(\d+)\^(\d+)", text):
        return int(power.group(1)) ** int(power.group(2))
    return {"int": int, "float": float}.get(str(item.type), str)(text)


def test_the_settings_table_states_the_real_defaults() -> None:
    by_flag = {"--" + item.name.replace("_", "-"): item for item in dataclasses.fields(Settings)}
    wrong = []
    for cells in _rows(OPERATIONS):
        for flag in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
            item = by_flag.get(flag)
            if item is None:
                continue  # a --no- form
            try:
                stated = _default(cells[2], item)
            except ValueError:
                stated = cells[2]
            if stated != item.default:
                wrong.append(f"{flag}: the table says {cells[2]!r}, the default is {item.default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_readme_points_to_the_settings_table() -> None:
    assert "docs/operations.md" in README and "convserve serve --help" in README


def test_no_prose_tells_readers_to_set_engine_only_variables() -> None:
    """The engine's knobs are settings now; neither the README nor the operations page sets engine variables outside the table."""
    prose = [line for text in (README, OPERATIONS) for line in text.splitlines() if not line.startswith("| `--")]
    stale = [line.strip() for line in prose if re.search(r"CONVSERVE_(LAYER|FFTW)_\w+=", line)]
    assert not stale, f"lines that set an engine variable outside the settings table: {stale}"
