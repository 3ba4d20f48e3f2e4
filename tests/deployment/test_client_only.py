"""The `convserve` distribution alone, in a fresh virtualenv: the thin client and nothing of the server.

One install (a copy of client/ into a new venv, as a user would `pip install ./client`) serves every
test here; pip takes grpcio, protobuf and numpy from its cache or the index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPENDENCIES = ("grpcio", "protobuf", "numpy")
VENV_OWN = {"pip", "setuptools"}
# What the three require in turn (grpcio needs typing-extensions), read from the venv's metadata.
CLOSURE = (
    "import json, re; from importlib import metadata\n"
    "todo, seen = list(json.loads(input())), set()\n"
    "while todo:\n"
    "    name = re.split(r'[^A-Za-z0-9_.-]', todo.pop(), maxsplit=1)[0].lower().replace('_', '-')\n"
    "    if name in seen: continue\n"
    "    seen.add(name)\n"
    "    todo += [r for r in metadata.requires(name) or [] if 'extra ==' not in r]\n"
    "print(json.dumps(sorted(seen)))\n"
)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with only `pip install <copy of client/>` in it; returns its bin folder."""
    base = tmp_path_factory.mktemp("client-only")
    source = base / "client"
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv.create(base / "venv", with_pip=True)
    bin_dir = base / "venv" / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return bin_dir


def _run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=bin_dir)


def test_the_server_cannot_be_imported_but_the_client_works(client_venv: Path) -> None:
    code = (
        "import importlib.util, numpy, convserve;"
        "assert importlib.util.find_spec('convserve_server') is None, 'server code installed';"
        "assert importlib.util.find_spec('pyfftw') is None;"
        "print(convserve.__version__, convserve.codec.decode(convserve.codec.encode(numpy.arange(3))))"
    )
    done = _run(client_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == _version() and "[0 1 2]" in done.stdout


@pytest.mark.parametrize("command", ["serve", "health", "calibrate"])
def test_each_server_command_says_how_to_install_the_server(client_venv: Path, command: str) -> None:
    done = _run(client_venv, "convserve", command)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr, done.stderr
    assert "pip install convserve-server" in done.stderr, done.stderr


def test_nothing_beyond_grpcio_protobuf_and_numpy_is_installed(client_venv: Path) -> None:
    done = _run(client_venv, "python", "-m", "pip", "list", "--format", "json", "--disable-pip-version-check")
    assert done.returncode == 0, done.stderr
    installed = {item["name"].lower().replace("_", "-") for item in json.loads(done.stdout)} - VENV_OWN
    closure = subprocess.run([str(client_venv / "python"), "-c", CLOSURE], input=json.dumps(CLIENT_DEPENDENCIES), capture_output=True, text=True, check=True)
    allowed = set(json.loads(closure.stdout)) | {"convserve"}
    assert {"convserve", *CLIENT_DEPENDENCIES} <= installed
    assert installed - allowed == set(), f"the client pulled in more than grpcio, protobuf and numpy: {sorted(installed - allowed)}"
    code = "import json; from importlib import metadata; print(json.dumps(metadata.requires('convserve')))"
    requires = subprocess.run([str(client_venv / "python"), "-c", code], capture_output=True, text=True)
    base = [r for r in json.loads(requires.stdout) if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0] for r in base) == sorted(CLIENT_DEPENDENCIES), base


def test_the_file_commands_work_in_a_client_only_install(client_venv: Path, tmp_path: Path) -> None:
    """``convserve convolve`` on .npy needs no extra; against a real server it gives numpy's answer."""
    x = np.random.default_rng(5).standard_normal(1000)
    np.save(tmp_path / "x.npy", x)
    server = start_server()
    try:
        done = _run(client_venv, "convserve", "convolve", str(tmp_path / "x.npy"), "box:3", "-o", str(tmp_path / "y.npy"), "--target", server.target)
    finally:
        stop_server(server)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.convolve(x, np.ones(3) / 3), atol=1e-12)


def test_an_image_without_the_cli_extra_says_how_to_install_it(client_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never read: Pillow is missing first
    done = _run(client_venv, "convserve", "convolve", str(tmp_path / "x.png"), "box:3", "-o", str(tmp_path / "y.png"))
    assert done.returncode == 2 and "pip install 'convserve[cli]'" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_unreachable_server_is_one_line_and_exit_1(client_venv: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones(8))
    done = _run(
        client_venv, "convserve", "convolve", str(tmp_path / "x.npy"), "box:3", "-o", str(tmp_path / "y.npy"), "--target", "127.0.0.1:1", "--timeout", "2"
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "y.npy").exists()


def test_version_names_only_the_client(client_venv: Path) -> None:
    done = _run(client_venv, "python", "-m", "convserve", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"convserve {_version()}", done.stdout + done.stderr


def _version() -> str:
    namespace: dict[str, str] = {}
    exec((ROOT / "client" / "convserve" / "_version.py").read_text(), namespace)
    return namespace["__version__"]


def test_the_server_distribution_pins_the_client_of_its_own_version() -> None:
    """One version serves both: the server's metadata (built from server/setup.py) requires convserve==it."""
    from importlib import metadata

    assert metadata.version("convserve-server") == metadata.version("convserve") == _version()
    assert f"convserve=={_version()}" in (metadata.requires("convserve-server") or [])


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    sys.exit(pytest.main([__file__, "-q"]))
