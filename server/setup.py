"""The dynamic half of the `convserve-server` metadata: its version, and its pin on the same `convserve`.

The version lives in one place, client/convserve/_version.py. Built from an sdist, where that file is
not beside this one, the version comes from the sdist's own PKG-INFO.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

# The server: the FFT engine and grpcio's standard services, on top of the client of the same version.
SERVER_DEPENDENCIES = [
    "pyfftw>=0.15",
    "opencv-python-headless>=4.10",
    "grpcio-health-checking>=1.85.1",
    "grpcio-reflection>=1.85.1",
    "grpcio-status>=1.85.1",
    "prometheus-client>=0.20",
    "onnxruntime>=1.20",
    "ducc0>=0.36",  # the second FFT backend, chosen per shape class by the calibrated cost model
]


def version() -> str:
    """The version from client/convserve/_version.py, or from PKG-INFO in an sdist."""
    source = HERE.parent / "client" / "convserve" / "_version.py"
    if source.is_file():
        found = re.search(r'^__version__ = "([^"]+)"$', source.read_text(), re.MULTILINE)
    else:
        found = re.search(r"^Version: (\S+)$", (HERE / "PKG-INFO").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no version found beside {HERE}")
    return found.group(1)


setup(version=version(), install_requires=[f"convserve=={version()}", *SERVER_DEPENDENCIES])
