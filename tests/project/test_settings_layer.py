"""Settings travel one way: flags and ``CONVSERVE_*`` variables -> Settings -> EngineConfig -> the engine.

- Only ``convserve_server/settings.py`` reads (or writes) the process environment.
- Every engine knob is a setting of the same name and default, so it has a flag and a variable.
- Every setting is a flag of ``convserve serve`` and shown in its ``--help``.
- A real server started with engine knobs in its environment runs its engine with them (seen
  through GetServerInfo, which reports the engine's FFTW threads and planner effort).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import convserve
from convserve_server.engine import config as engine_config
from convserve_server.settings import Settings, env_name

from tests.conftest import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
SCANNED = (ROOT / "server" / "convserve_server", ROOT / "client" / "convserve")
GENERATED = ROOT / "client" / "convserve" / "v1"
# The files that may touch the environment, each with its reason. The client reads no variable
# of its own (gRPC's C core reads GRPC_* itself, outside Python), so it has no entry.
ENVIRONMENT_READERS = {
    "server/convserve_server/settings.py": "the settings layer: CONVSERVE_* variables -> Settings",
    "client/convserve/_environment.py": "the client's defaults: CONVSERVE_TARGET and CONVSERVE_TOKEN for the command line, compat and dask",
}
ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_uses(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for every use of the process environment through ``os`` in ``path``."""
    tree = ast.parse(path.read_text())
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names.update(alias.asname or alias.name for alias in node.names if alias.name == "os")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ENVIRONMENT_NAMES:
                    yield node.lineno, f"from os import {alias.name}"
        elif isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id in os_names:
                yield node.lineno, f"{node.value.id}.{node.attr}"


def test_only_the_settings_layer_touches_the_environment() -> None:
    """No module of the server or the client reads or writes os.environ, except settings.py."""
    files = [path for folder in SCANNED for path in sorted(folder.rglob("*.py")) if GENERATED not in path.parents]
    assert len(files) > 50
    uses = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        if str(path.relative_to(ROOT)) not in ENVIRONMENT_READERS
        for line, what in sorted(environment_uses(path))
    ]
    assert not uses, "read settings (or the engine's config) instead of the environment:\n" + "\n".join(uses)
    assert all((ROOT / name).is_file() for name in ENVIRONMENT_READERS)


def test_the_environment_check_sees_every_form(tmp_path: Path) -> None:
    """The check itself: attribute access, aliases and ``from os import``."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport os as _os\nfrom os import getenv\nfrom os import path\n"
        "def f():\n    os.environ['X'] = '1'\n    return _os.getenv('Y'), os.path.join('a'), os.putenv\n"
    )
    assert sorted(what for _, what in environment_uses(sample)) == ["_os.getenv", "from os import getenv", "os.environ", "os.putenv"]


def test_every_engine_knob_is_a_setting_with_the_same_default() -> None:
    """EngineConfig's fields are Settings fields of the same type and default, and the server can build one from the other."""
    settings_fields = {item.name: item for item in dataclasses.fields(Settings)}
    engine_fields = {item.name: item for item in dataclasses.fields(engine_config.EngineConfig)}
    assert set(engine_config.FIELDS) == set(engine_fields) and len(engine_fields) >= 12
    missing = sorted(set(engine_config.FIELDS) - set(settings_fields))
    assert not missing, f"engine knobs without a setting: {missing}"
    defaults, engine_defaults = Settings(), engine_config.EngineConfig()
    differ = [
        f"{name}: Settings {getattr(defaults, name)!r} ({settings_fields[name].type}), "
        f"EngineConfig {getattr(engine_defaults, name)!r} ({engine_fields[name].type})"
        for name in engine_config.FIELDS
        if getattr(defaults, name) != getattr(engine_defaults, name)
        or type(getattr(defaults, name)) is not type(getattr(engine_defaults, name))
        or str(settings_fields[name].type) != str(engine_fields[name].type)
    ]
    assert not differ, "settings and engine knobs differ:\n" + "\n".join(differ)
    built = engine_config.EngineConfig(**{name: getattr(defaults, name) for name in engine_config.FIELDS})
    assert built == engine_defaults


def serve_help() -> str:
    """``convserve serve --help``, as the console script prints it (wide, so no name is wrapped)."""
    result = subprocess.run(
        [sys.executable, "-m", "convserve_server", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_setting_is_a_flag_in_serve_help() -> None:
    """Each setting shows as ``--name`` (bools also ``--no-name``) with its ``CONVSERVE_*`` variable."""
    text = serve_help()
    tokens = set(text.replace(",", " ").split())
    missing = []
    for item in dataclasses.fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        wanted = [flag, env_name(item.name)]
        if str(item.type) == "bool":
            wanted.append("--no-" + flag[2:])
        missing += [f"{item.name}: {name}" for name in wanted if name not in tokens and name not in text]
    assert not missing, "settings missing from `convserve serve --help`:\n" + "\n".join(missing)


def test_the_servers_engine_runs_with_the_knobs_of_its_environment() -> None:
    """CONVSERVE_FFTW_THREADS and CONVSERVE_FFTW_PLANNER_EFFORT reach the engine of a real server.

    GetServerInfo reports the engine's own values (its FFTW threads per transform, and its planner
    effort in the wisdom summary), not the settings object; both differ from their defaults here.
    """
    assert engine_config.EngineConfig().fftw_planner_effort == "FFTW_ESTIMATE"
    running = start_server("--log-level", "WARNING", env={"CONVSERVE_FFTW_THREADS": "7", "CONVSERVE_FFTW_PLANNER_EFFORT": "fftw_measure"})
    try:
        with convserve.Client(running.target, timeout=60) as client:
            info = client.server_info()
    finally:
        assert stop_server(running) == 0
    assert info.fftw_threads == 7, info
    assert "FFTW_MEASURE" in info.wisdom and "FFTW_ESTIMATE" not in info.wisdom, info.wisdom
