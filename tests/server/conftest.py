"""Fixtures of the shared-memory tests (tests/server/test_shared_memory.py and
test_shared_memory_refusals.py): a server that allows shared memory, and a region with the
client's header."""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing import shared_memory

import pytest

from convserve._shared_memory import HEADER_SIZE, header

from tests.conftest import RunningServer, start_server, stop_server
from tests.server.shared_memory_helpers import CAPABILITY


@pytest.fixture(scope="module")
def shm_server() -> Iterator[RunningServer]:
    """A server with ``--allow-shared-memory``, one per test module."""
    server = start_server("--allow-shared-memory")
    yield server
    assert stop_server(server) == 0


@pytest.fixture()
def region() -> Iterator[shared_memory.SharedMemory]:
    """A 4 KiB region of this process with the client's header and CAPABILITY."""
    memory = shared_memory.SharedMemory(name=f"convserve_{os.getpid()}_test", create=True, size=4096)
    assert memory.buf is not None
    memory.buf[:HEADER_SIZE] = header(CAPABILITY)
    yield memory
    memory.close()
    memory.unlink()
