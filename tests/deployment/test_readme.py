"""The README's settings table lists every setting, by flag and variable, as the README promises."""

from __future__ import annotations

import dataclasses
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
