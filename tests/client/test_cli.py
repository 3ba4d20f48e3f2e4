"""The ``convserve`` command: defaults, settings from flags and variables, clean start and stop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convserve_server import settings as settings_module
from convserve_server.cli import build_parser

from tests.conftest import start_server, stop_server


def test_defaults_listen_on_loopback_50051() -> None:
    settings = settings_module.load({}, environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 50051)


def test_flags_win_over_environment_over_defaults() -> None:
    env = {"CONVSERVE_PORT": "6000", "CONVSERVE_WORKERS": "1", "CONVSERVE_MAX_CONCURRENT_REQUESTS": "3"}
    assert settings_module.load({}, environ=env).port == 6000
    args = vars(build_parser().parse_args(["serve", "--port", "7000"]))
    settings = settings_module.load(args, environ=env)
    assert settings.port == 7000 and settings.workers == 1 and settings.max_concurrent_requests == 3


@pytest.mark.parametrize(
    "env,word",
    [
        ({"CONVSERVE_PORT": "seventy"}, "CONVSERVE_PORT"),
        ({"CONVSERVE_WORKERS": "0"}, "workers"),
        ({"CONVSERVE_LOG_LEVEL": "LOUD"}, "log_level"),
    ],
)
def test_invalid_setting_stops_start_up_with_one_line(env: dict[str, str], word: str) -> None:
    result = subprocess.run([sys.executable, "-m", "convserve_server", "serve"], capture_output=True, text=True, env={**os.environ, **env}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0]


def test_port_in_use_is_a_clear_error() -> None:
    first = start_server()
    try:
        port = first.target.rsplit(":", 1)[1]
        result = subprocess.run(
            [sys.executable, "-m", "convserve_server", "serve", "--port", port, "--metrics-port", "-1"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1
        assert port in result.stderr and "in use" in result.stderr
    finally:
        assert stop_server(first) == 0


def test_sigterm_stops_cleanly_with_exit_code_0() -> None:
    server = start_server()
    assert stop_server(server) == 0


def test_health_command(server) -> None:  # type: ignore[no-untyped-def]
    ok = subprocess.run([sys.executable, "-m", "convserve_server", "health", "--target", server.target], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    down = subprocess.run(
        [sys.executable, "-m", "convserve_server", "health", "--target", "127.0.0.1:1", "--timeout", "1"], capture_output=True, text=True, timeout=30
    )
    assert down.returncode == 1


def test_client_only_install_says_which_package(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "convserve_server.py").write_text("raise ImportError('No module named convserve_server')\n")
    code = "import sys; from convserve.cli import main; sys.exit(main(['serve']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=30)
    assert result.returncode == 2 and "pip install convserve-server" in result.stderr and "Traceback" not in result.stderr


def test_server_commands_are_entry_points() -> None:
    from convserve import cli

    found = cli.commands()
    assert {name: found[name].value for name in ("serve", "health", "calibrate")} == {
        "serve": "convserve_server.cli:serve_command",
        "health": "convserve_server.cli:health_command",
        "calibrate": "convserve_server.cli:calibrate_command",
    }


def test_help_lists_the_commands_found(capsys: pytest.CaptureFixture[str]) -> None:
    from convserve import cli

    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.split("commands:\n", 1)[1].splitlines() if line.startswith("  ")]
    assert listed == ["convolve", "correlate", *sorted(set(cli.commands()) - {"convolve", "correlate"})]
    assert {"serve", "health", "calibrate"} <= set(listed)


def test_without_the_server_its_commands_say_which_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from convserve import cli

    monkeypatch.setattr(cli, "commands", dict)
    for command in ("serve", "health", "calibrate"):
        assert cli.main([command]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "pip install convserve-server" in lines[0] and "pip install ./client ./server" in lines[0]
    assert cli.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "pip install convserve-server" in help_text and "convolve" in help_text
    assert cli.main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_server_commands_without_the_server_dependencies_say_how_to_install_them() -> None:
    """A client-only install has the server's code but not its dependencies: a hint, not a traceback."""
    code = "import sys; sys.modules['pyfftw'] = None; from convserve.cli import main; sys.exit(main(['serve', '--port', '0']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert "pip install convserve-server" in done.stderr and "pyfftw" in done.stderr and "Traceback" not in done.stderr, done.stderr
