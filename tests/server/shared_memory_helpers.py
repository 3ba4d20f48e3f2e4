"""What the shared-memory tests (tests/server/test_shared_memory*.py) share: their random generator,
the capability of the ``region`` fixture (tests/server/conftest.py), a request over such a region,
this process's regions and whether the server holds a file open. A plain module: pytest collects
nothing here."""

from __future__ import annotations

import os
import secrets

import numpy as np

from convserve._shared_memory import HEADER_SIZE
from convserve.v1 import convserve_pb2 as pb

RNG = np.random.default_rng(21)


def our_regions() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"convserve_{os.getpid()}_")}


CAPABILITY = secrets.token_bytes(16)


def _request(
    name: str,
    in1_offset: int = HEADER_SIZE,
    in1_shape: tuple[int, ...] = (8,),
    result_size: int = 1024,
    result_name: str | None = None,
    capability: bytes = CAPABILITY,
) -> pb.SharedSignalRequest:
    return pb.SharedSignalRequest(
        options=pb.SignalRequest(),
        in1=pb.SharedTensor(region=name, offset=in1_offset, dtype=pb.DTYPE_FLOAT64, shape=in1_shape, capability=capability),
        in2=pb.SharedTensor(region=name, offset=1024, dtype=pb.DTYPE_FLOAT64, shape=[3], capability=capability),
        result=pb.SharedBuffer(region=result_name or name, offset=2048, size=result_size, capability=capability),
    )


def _server_has_open(pid: int, path: str) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False
