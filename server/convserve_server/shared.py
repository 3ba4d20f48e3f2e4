"""Same-host shared memory: the server attaches to regions the client created, never unlinks them.

Only names made of letters, digits, ``_``, ``-`` and ``.`` that start with ``convserve`` are
accepted (no paths, and no other program's regions). Every view is checked to lie inside its
region. On Python < 3.13 attaching registers the region with this process's resource tracker,
which would unlink it when the server exits; the registration is undone at once.

Attachments are kept across calls (a small LRU) because mapping a region anew costs a page fault
per 4 KiB page on first touch (82 ms for 128 MiB here); an attachment whose region the client
has unlinked is detached at the next call, so the server never keeps a released region alive
for long.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from . import wire
from .engine.errors import InvalidArgumentError
from .engine.info import CallInfo
from .engine.planner import plan_signal_call
from .engine.signal import execute
from .settings import Settings

NAME = re.compile(r"^convserve[A-Za-z0-9_.-]{0,200}$")


MAX_ATTACHED = 8


class AttachmentCache:
    """Attached regions kept across calls, least recently used first out."""

    def __init__(self, limit: int = MAX_ATTACHED) -> None:
        self.limit = limit
        self._regions: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, field: str) -> shared_memory.SharedMemory:
        """The attachment of ``name`` (attached now if needed)."""
        with self._lock:
            self._drop_unlinked()
            region = self._regions.get(name)
            if region is not None:
                self._regions.move_to_end(name)
                return region
        region = _attach(name, field)
        with self._lock:
            self._regions[name] = region
            while len(self._regions) > self.limit:
                _detach(self._regions.popitem(last=False)[1])
        return region

    def _drop_unlinked(self) -> None:
        for name in [n for n in self._regions if not os.path.exists(f"/dev/shm/{n}")]:
            _detach(self._regions.pop(name))

    def clear(self) -> None:
        """Detach from every region."""
        with self._lock:
            while self._regions:
                _detach(self._regions.popitem()[1])


ATTACHED = AttachmentCache()


class Regions:
    """The regions one request uses, and views into them."""

    def __init__(self, cache: AttachmentCache) -> None:
        self._cache = cache

    def _region(self, name: str, field: str) -> shared_memory.SharedMemory:
        if not NAME.match(name) or ".." in name:
            raise InvalidArgumentError(f"{field}.region", f"{name!r} is not a convserve region name "
                                       "(convserve followed by letters, digits, '_', '-', '.')")
        return self._cache.get(name, field)

    def tensor(self, shared: pb.SharedTensor, field: str, max_elements: int) -> npt.NDArray[Any]:
        """A read-only view of a shared input tensor, after checking it lies inside its region."""
        try:
            dtype, shape, nbytes = codec.check_declared(shared.dtype, shared.shape, field, max_elements)
        except ValueError as exc:
            violations = getattr(exc, "field_violations", ())
            name, text = violations[0] if violations else (field, str(exc))
            raise InvalidArgumentError(name, text) from None
        region = self._region(shared.region, field)
        _inside(shared.offset, nbytes, region.size, field)
        view = np.ndarray(shape, dtype=dtype, buffer=region.buf, offset=shared.offset)
        view.flags.writeable = False
        return view

    def output(self, buffer: pb.SharedBuffer, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """A writable view for the result, after checking it fits the buffer and the region."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > buffer.size:
            raise InvalidArgumentError("result.size", f"the result {list(shape)} of {dtype.name} needs {nbytes} bytes; "
                                       f"the buffer has {buffer.size}")
        region = self._region(buffer.region, "result")
        _inside(buffer.offset, buffer.size, region.size, "result")
        return np.ndarray(shape, dtype=dtype.newbyteorder("<"), buffer=region.buf, offset=buffer.offset)


def _inside(offset: int, nbytes: int, size: int, field: str) -> None:
    if offset < 0 or offset + nbytes > size:
        raise InvalidArgumentError(f"{field}.offset", f"bytes {offset}..{offset + nbytes} are outside the region of {size} bytes")


def _attach(name: str, field: str) -> shared_memory.SharedMemory:
    """Attach to an existing region without taking ownership (never unlinked by this process)."""
    try:
        if sys.version_info >= (3, 13):
            region = shared_memory.SharedMemory(name=name, create=False, track=False)  # type: ignore[call-arg,unused-ignore]
        else:
            region = shared_memory.SharedMemory(name=name, create=False)
            resource_tracker.unregister(region._name, "shared_memory")  # type: ignore[attr-defined]
    except FileNotFoundError:
        raise InvalidArgumentError(f"{field}.region", f"no shared-memory region named {name!r} on this host") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{field}.region", f"cannot attach to {name!r}: {exc}") from None
    return region


def _detach(region: shared_memory.SharedMemory) -> None:
    try:
        region.close()
    except BufferError:  # a view is still referenced (say, by a traceback): unmapped once collected
        pass


@contextmanager
def regions() -> Iterator[Regions]:
    """The regions a request names, attached through the shared attachment cache."""
    yield Regions(ATTACHED)


def compute(request: pb.SharedSignalRequest, correlate: bool, settings: Settings,
            check_output: Callable[[tuple[int, ...], np.dtype[Any]], None]) -> tuple[np.dtype[Any], tuple[int, ...], CallInfo]:
    """Attach, compute, write the result into the client's buffer, detach (on a worker thread)."""
    limit = settings.max_elements
    with regions() as attached:
        arrays = {"in1": attached.tensor(request.in1, "in1", limit), "in2": attached.tensor(request.in2, "in2", limit)}
        plan = plan_signal_call(**wire.signal_arguments(request.options, settings, arrays), correlate=correlate)
        del arrays
        check_output(plan.output_shape, plan.out_dtype)
        started = time.perf_counter()
        result = execute(plan)
        info = CallInfo(plan.method, time.perf_counter() - started, tuple(plan.warnings))
        dtype, shape = plan.out_dtype, plan.output_shape
        del plan  # drop every view of the regions before they are detached
        target = attached.output(request.result, dtype, shape)
        np.copyto(target, result)
        del target
    return dtype, shape, info
