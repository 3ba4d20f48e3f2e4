"""The generated code is fresh and the thin client loads neither pyFFTW nor server code."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_proto.py"), str(tmp_path)], check=True, capture_output=True)
    fresh = tmp_path / "convserve" / "v1"
    committed = ROOT / "client" / "convserve" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    match, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, f"stale generated files {mismatch + errors}: run scripts/generate_proto.py"


def test_thin_client_imports_no_fftw_and_no_server() -> None:
    code = (
        "import sys, convserve, convserve.codec, convserve.errors;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyfftw', 'convserve_server', 'scipy')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_thin_client_works_when_pyfftw_cannot_be_imported(tmp_path: Path) -> None:
    (tmp_path / "pyfftw.py").write_text("raise ImportError('pyfftw is not installed')\n")
    code = "import convserve, numpy; print(convserve.codec.decode(convserve.codec.encode(numpy.arange(3))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "[0 1 2]" in result.stdout


def test_engine_imports_no_grpc() -> None:
    code = "import sys, convserve_server.engine; sys.exit(1 if any(m.startswith('grpc') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
