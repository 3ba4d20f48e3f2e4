"""The README's settings table lists every setting, by flag and variable, as the README promises."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from convserve_server.settings import Settings, env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_settings_table() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    missing = []
    for item in dataclasses.fields(Settings):
        flag = "`--" + item.name.replace("_", "-") + "`"
        if not any(flag in row and env_name(item.name) in row for row in rows):
            missing.append(item.name)
    assert not missing, f"settings missing from the README's table: {missing}"


def test_the_readme_settings_table_names_only_real_settings_and_the_bool_forms() -> None:
    """Every flag in the table is a setting, and each on/off setting shows its ``--no-`` form."""
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    names = {item.name for item in dataclasses.fields(Settings)}
    flags = {flag for row in rows for flag in re.findall(r"`--([a-z0-9-]+)`", row.split("|")[1])}
    invented = sorted(flag for flag in flags if flag.replace("-", "_") not in names and not (flag.startswith("no-") and flag[3:].replace("-", "_") in names))
    assert not invented, f"the README's settings table names flags that are not settings: {invented}"
    bools = [item.name for item in dataclasses.fields(Settings) if str(item.type) == "bool"]
    missing = [name for name in bools if "no-" + name.replace("_", "-") not in flags]
    assert not missing, f"on/off settings whose --no- flag the README's table does not show: {missing}"


def test_the_readme_says_no_engine_module_reads_the_environment() -> None:
    """The engine's knobs are settings now; the README no longer tells readers to set engine-only variables."""
    prose = [line for line in README.splitlines() if not line.startswith("| `--")]
    stale = [line.strip() for line in prose if re.search(r"CONVSERVE_(LAYER|FFTW)_\w+=", line)]
    assert not stale, f"README lines that set an engine variable outside the settings table: {stale}"
