"""The file commands' command line without a server: defaults, bad arguments, --version, ``python -m convserve``, missing extras."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import convserve
from convserve import _cli_args, cli
from convserve._cli_common import CliError

CLI_ENV = {key: value for key, value in os.environ.items() if key not in ("CONVSERVE_TARGET", "CONVSERVE_TOKEN")}


def run_module(*arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m convserve ARGUMENTS``."""
    return subprocess.run([sys.executable, "-m", "convserve", *arguments], capture_output=True, text=True, timeout=60, env=env or CLI_ENV, cwd=cwd)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVSERVE_TARGET", raising=False)
    args = _cli_args.parse("convolve", ["in.png", "box:3", "-o", "out.png"])
    assert (args.target, args.timeout, args.method, args.mode, args.boundary, args.progress) == ("127.0.0.1:50051", 60.0, "auto", None, None, None)
    assert (args.kernel, args.kernel_file, args.alpha, args.ir_norm, args.ir_link) == ("box:3", None, "keep", -1.0, True)


def test_target_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_TARGET", "127.0.0.9:7000")
    monkeypatch.setenv("CONVSERVE_TOKEN", "secret")
    args = _cli_args.parse("correlate", ["in.npy", "box:3", "-o", "out.npy"])
    assert args.target == "127.0.0.9:7000" and args.token == "secret"
    assert _cli_args.parse("correlate", ["in.npy", "box:3", "-o", "o.npy", "--target", "127.0.0.1:1"]).target == "127.0.0.1:1"


@pytest.mark.parametrize("command", ["convolve", "correlate"])
def test_help_prints_every_option_and_exits_0(command: str) -> None:
    """``--help`` formats the usage line (a bare ``%`` in a metavar or help text would crash it)."""
    done = run_module(command, "--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for option in ("--mode", "--method", "--boundary", "--axes", "--output-dtype", "--rate", "--scale", "--bias", "--target", "--kernel-file"):
        assert option in done.stdout, option


def test_kernel_may_follow_the_options() -> None:
    args = _cli_args.parse("convolve", ["in.png", "-o", "out.png", "--mode", "valid", "box:3"])
    assert (args.input, args.kernel, args.output, args.mode) == ("in.png", "box:3", "out.png", "valid")


def test_option_values() -> None:
    args = _cli_args.parse(
        "convolve",
        ["i.npy", "-o", "o.npy", "--kernel-file", "k.txt", "--axes", "0,-1", "--timeout", "none", "--tiles", "auto", "--bias", "50%", "--no-progress"],
    )
    assert args.kernel is None and args.kernel_file == "k.txt" and args.axes == (0, -1) and args.timeout is None
    assert args.tiles == "auto" and args.bias == (50.0, True) and args.progress is False
    assert _cli_args.parse("convolve", ["i.npy", "x", "-o", "o.npy", "--tiles", "3", "--bias", "-2", "--progress"]).tiles == 3
    assert _cli_args.normal_axes((0, -1), 3) == (0, 2)
    with pytest.raises(CliError, match="out of range"):
        _cli_args.normal_axes((3,), 3)
    with pytest.raises(CliError, match="twice"):
        _cli_args.normal_axes((1, -2), 3)


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--mode", "sideways"], "invalid choice: 'sideways'"),
        (["--axes", "0,x"], "--axes"),
        (["--timeout", "-1"], "positive"),
        (["--tiles", "0"], "positive integer"),
        (["--rate", "fast"], "positive number"),
        (["--bias", "lots"], "percentage"),
        (["--target", ""], "host:port"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(extra: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli_args.parse("convolve", ["in.npy", "box:3", "-o", "out.npy", *extra])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("convserve convolve: error:")


def test_missing_output_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli_args.parse("convolve", ["in.npy", "box:3"])
    assert "-o/--output" in capsys.readouterr().err


def test_version_names_the_client_and_the_server_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"convserve {convserve.__version__}"
    try:
        assert lines[1:] == [f"convserve-server {metadata.version('convserve-server')}"]
    except metadata.PackageNotFoundError:
        assert lines[1:] == []


def test_python_dash_m_convserve_is_the_convserve_command() -> None:
    module = run_module("--version")
    assert module.returncode == 0 and module.stdout.startswith(f"convserve {convserve.__version__}")
    helped = run_module("--help")
    assert helped.returncode == 0 and "convolve" in helped.stdout and "correlate" in helped.stdout
    script = shutil.which("convserve")
    if script is not None:  # the console script of the installed distribution
        for arguments in (["--version"], ["--help"]):
            same = subprocess.run([script, *arguments], capture_output=True, text=True, timeout=60, env=CLI_ENV)
            assert (same.returncode, same.stdout) == (0, run_module(*arguments).stdout)
    bare = run_module()
    assert bare.returncode == 2 and "usage: convserve" in bare.stderr


@pytest.mark.parametrize(
    "blocked,input_name,extra",
    [
        ("PIL", "in.png", []),
        ("soundfile", "in.wav", []),
        ("tqdm", "in.npy", ["--progress"]),
    ],
)
def test_a_missing_cli_extra_says_how_to_install_it(tmp_path: Path, blocked: str, input_name: str, extra: list[str]) -> None:
    """Without Pillow, soundfile or tqdm: the install hint and exit 2, before any server is needed."""
    (tmp_path / input_name).write_bytes(b"not read")
    np.save(tmp_path / "in.npy", np.ones(4))
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; from convserve.cli import main; "
        f"sys.exit(main(['convolve', {input_name!r}, 'box:3', '-o', 'out.npy', '--target', '127.0.0.1:1', *{extra!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=CLI_ENV)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'convserve[cli]'" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out.npy").exists()


def test_the_file_commands_never_import_the_server(tmp_path: Path) -> None:
    """Everything a file command loads, up to the call, comes from the client: the server's package is blocked."""
    np.save(tmp_path / "in.npy", np.ones(4))
    code = (
        "import sys; sys.modules['convserve_server'] = None; from convserve.cli import main; "
        "sys.exit(main(['convolve', 'in.npy', 'box:3', '-o', 'o.npy', '--target', '127.0.0.1:1', '--timeout', '1', '--progress']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=CLI_ENV)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "Traceback" not in done.stderr, done.stderr
