"""``convserve calibrate`` measures this host and writes the cost model's constants where the settings say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from convserve_server.engine.signal import cost_model


def test_calibrate_writes_the_file_the_calibration_setting_names(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    env = dict(os.environ, HOME=str(tmp_path), CONVSERVE_CALIBRATION=str(path))
    result = subprocess.run(
        [sys.executable, "-m", "convserve_server.calibrate", "--repeats", "1"], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    assert f"saved {path}" in result.stdout
    data = json.loads(path.read_text())
    assert data["version"] == cost_model.CALIBRATION_VERSION
    assert set(data["constants"]) == set(cost_model.DEFAULTS) and all(value > 0 for value in data["constants"].values())
    assert cost_model.load(str(path)) == f"calibration {path}"
    cost_model.load()  # back to this process's own constants
