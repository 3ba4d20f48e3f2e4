"""An interpreter that another uid (``nobody``) can run, with grpcio, protobuf and the stubs.

The installed interpreter's packages may be unreachable for another uid (under /root, say), so
they are copied into a world-readable temporary directory. Attacker tests run their scripts
through :func:`as_nobody` with ``PYTHONPATH`` set to that directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import grpc


def as_nobody(*command: str) -> list[str]:
    """``command`` run as the user nobody (setpriv)."""
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def why_not() -> str | None:
    """Why no other uid can be used here, or None when it can."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv to run an attacker under another uid"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no user nobody"
    return None


@contextmanager
def nobody_python(scripts: dict[str, str]) -> Iterator[tuple[str, str] | None]:
    """(interpreter, directory) that nobody can run, with ``scripts`` (name -> text) in the directory; None if impossible."""
    if why_not() is not None:
        yield None
        return
    import google.protobuf
    import typing_extensions

    import convserve.v1

    directory = tempfile.mkdtemp(prefix="convserve_attacker_env_", dir="/tmp")
    try:
        os.chmod(directory, 0o755)
        shutil.copytree(os.path.dirname(grpc.__file__), os.path.join(directory, "grpc"))
        protobuf = os.path.dirname(google.protobuf.__file__)
        shutil.copytree(protobuf, os.path.join(directory, "google", "protobuf"))
        upb = os.path.join(os.path.dirname(protobuf), "_upb")
        if os.path.isdir(upb):
            shutil.copytree(upb, os.path.join(directory, "google", "_upb"))
        shutil.copy(typing_extensions.__file__, directory)
        shutil.copytree(os.path.dirname(convserve.v1.__file__), os.path.join(directory, "convserve", "v1"))
        open(os.path.join(directory, "convserve", "__init__.py"), "w").close()
        for name, text in scripts.items():
            with open(os.path.join(directory, name), "w") as script:
                script.write(text)
        subprocess.run(["chmod", "-R", "o+rX", directory], check=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for interpreter in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
            check = subprocess.run(
                as_nobody(interpreter, "-c", "import grpc, sys; print('%d.%d' % sys.version_info[:2])"),
                capture_output=True,
                text=True,
                env={"PYTHONPATH": directory},
                cwd="/",
            )
            if check.returncode == 0 and check.stdout.strip() == version:
                yield interpreter, directory
                return
        yield None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
