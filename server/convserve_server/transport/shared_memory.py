"""Same-host shared memory: the server reads and writes regions the client created, never unlinks them.

A region is used only by whoever can prove it may (docs/shared_memory.md):

- Names: only ``convserve`` followed by letters, digits, ``_``, ``-`` and ``.`` (the whole name:
  no paths, no newline, no other program's regions). The region is opened in ``/dev/shm`` through
  a directory descriptor with ``O_NOFOLLOW`` (a symbolic link is refused), and must be a regular
  file on that file system.
- Capability: the client writes a random 128-bit capability into the region's header and sends
  it with every call (``convserve._shared_memory``). The server reads the header through the descriptor and
  compares it in constant time before it reads or writes anything else; a missing or wrong one
  is :class:`PermissionDenied`. A local process that cannot read the region cannot learn it, so
  naming someone else's region in a request gets it nothing.
- Identity and size: each call opens the region anew and checks it with ``fstat`` (device,
  inode, size). Nothing is kept between calls: a client that unlinks a region and creates another
  under the same name gets its new content used, and the server never keeps an unlinked region
  alive.
- No mapping of client memory: inputs are read with ``preadv`` into arrays the server owns and
  the result is written with ``pwritev`` (one copy in, one copy out). A client that shrinks its
  region, even during a call, makes those calls return short counts, never SIGBUS, and the call
  ends with INVALID_ARGUMENT ("the region shrank during the call").
"""

from __future__ import annotations

import errno
import hmac
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve._shared_memory import CAPABILITY_SIZE, HEADER_SIZE, MAGIC
from convserve.v1 import convserve_pb2 as pb

from convserve_server.admission import limits
from convserve_server.admission.requests import as_engine_error, check_declared
from convserve_server.admission.workers import WorkerPool
from convserve_server.engine.info import CallInfo
from convserve_server.engine.signal.convolution import execute
from convserve_server.engine.signal.planner import plan_signal_call
from convserve_server.errors import FailedPrecondition, InvalidArgumentError, PermissionDenied
from convserve_server.settings import Settings
from convserve_server.transport import decode, encode
from convserve_server.transport.calls import CallRecord
from convserve_server.transport.rpcs import RpcSpec

SHM_DIR = "/dev/shm"
NAME = re.compile(r"convserve[A-Za-z0-9_.-]{0,200}")  # always used with fullmatch
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_ALIGN = 64
_PIECE = 1 << 30  # largest single preadv/pwritev (Linux moves at most 2 GiB - 4 KiB per call)


_DENIED = "the capability does not match the region's (send the capability of the region's header, which only the client that created the region knows)"


def _shrank(field: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}.region", "the region shrank during the call (its size changed); keep a region's size while a call uses it")


_dir_lock = threading.Lock()
_dir: tuple[int, int] | None = None  # (descriptor of SHM_DIR, its st_dev)


def _shm_dir() -> tuple[int, int]:
    """A descriptor of ``/dev/shm`` (opened once) and the device it is on."""
    global _dir
    with _dir_lock:
        if _dir is None:
            fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            _dir = (fd, os.fstat(fd).st_dev)
        return _dir


@dataclass
class Region:
    """One region opened for one call: its descriptor, identity and size."""

    name: str
    fd: int
    dev: int
    ino: int
    size: int

    def check_inside(self, offset: int, nbytes: int, field: str) -> None:
        """Refuse bytes ``offset .. offset + nbytes`` unless they lie in the data part of the region."""
        if offset < HEADER_SIZE:
            raise InvalidArgumentError(f"{field}.offset", f"offset {offset} is inside the region's header; data starts at byte {HEADER_SIZE}")
        if offset + nbytes > self.size:
            raise InvalidArgumentError(f"{field}.offset", f"bytes {offset}..{offset + nbytes} are outside the region of {self.size} bytes")

    def current_size(self, field: str) -> int:
        """The size now, after checking that the name still names this file."""
        try:
            now = os.stat(self.name, dir_fd=_shm_dir()[0], follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidArgumentError(f"{field}.region", "the region was unlinked during the call") from None
        if (now.st_dev, now.st_ino) != (self.dev, self.ino):
            raise InvalidArgumentError(f"{field}.region", "the region was replaced during the call")
        return os.fstat(self.fd).st_size

    def read(self, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int, field: str) -> npt.NDArray[Any]:
        """A new array of ``shape`` read from ``offset`` (one copy; a short read is a shrink)."""
        nbytes = math.prod(shape) * dtype.itemsize
        raw = np.empty(nbytes + _ALIGN, np.uint8)
        start = -raw.ctypes.data % _ALIGN
        raw = raw[start : start + nbytes]
        self._move(os.preadv, raw.data, offset, field, "read")
        return raw.view(dtype).reshape(shape)

    def write(self, array: npt.NDArray[Any], offset: int, field: str) -> None:
        """Write ``array`` (C-contiguous) at ``offset``; refuse if the region changed size meanwhile."""
        if self.current_size(field) != self.size:
            raise _shrank(field)
        self._move(os.pwritev, array.reshape(-1).view(np.uint8).data, offset, field, "write")
        if self.current_size(field) != self.size:  # shrunk during the write, which grew it back
            raise _shrank(field)

    def _move(self, io: Callable[[int, list[memoryview], int], int], view: memoryview, offset: int, field: str, verb: str) -> None:
        """``preadv`` or ``pwritev`` all of ``view`` at ``offset``, in pieces; a count of 0 is a shrink."""
        done = 0
        while done < len(view):
            try:
                count = io(self.fd, [view[done : done + _PIECE]], offset + done)
            except OSError as exc:
                raise InvalidArgumentError(f"{field}.region", f"cannot {verb} the region: {exc.strerror}") from None
            if count == 0:
                raise _shrank(field)
            done += count


def open_region(name: str, capability: bytes, field: str) -> Region:
    """Open ``name`` in /dev/shm after checking the name, the kind of file and the capability.

    Raises
    ------
    InvalidArgumentError
        On a name that is not a convserve region's, no such region, a symbolic link or a file that
        is not a regular file of /dev/shm.
    FailedPrecondition
        When this server's user may not open the region (it must run as the client's user).
    PermissionDenied
        When ``capability`` does not match the one in the region's header (or there is none).
    """
    if not NAME.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(f"{field}.region", f"{name[:80]!r} is not a convserve region name (convserve followed by letters, digits, '_', '-', '.')")
    directory, device = _shm_dir()
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        raise InvalidArgumentError(f"{field}.region", f"no shared-memory region named {name!r} on this host") from None
    except PermissionError:
        raise FailedPrecondition(
            f"{field}.region: this server's user may not open {name!r}; run the server as the client's user (docs/shared_memory.md)"
        ) from None
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidArgumentError(f"{field}.region", f"cannot open the region {name!r}: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_dev != device:
            raise InvalidArgumentError(f"{field}.region", f"{name!r} is not a shared-memory region")
        head = os.pread(fd, HEADER_SIZE, 0) if info.st_size >= HEADER_SIZE else b""
        stored = head[len(MAGIC) : len(MAGIC) + CAPABILITY_SIZE] if head[: len(MAGIC)] == MAGIC else b""
        if len(stored) != CAPABILITY_SIZE or len(capability) != CAPABILITY_SIZE or not hmac.compare_digest(stored, capability):
            raise PermissionDenied(f"{field}: {_DENIED}")
        return Region(name, fd, info.st_dev, info.st_ino, info.st_size)
    except BaseException:
        os.close(fd)
        raise


class Regions:
    """The regions one request names, each opened once for the call and closed after it."""

    def __init__(self) -> None:
        self._open: dict[str, Region] = {}
        self._capabilities: dict[str, bytes] = {}

    def region(self, name: str, capability: bytes, field: str) -> Region:
        """The region ``name``, opened and checked on first use in this call."""
        region = self._open.get(name)
        if region is None:
            region = self._open[name] = open_region(name, capability, field)
            self._capabilities[name] = capability
        elif not hmac.compare_digest(self._capabilities[name], capability):
            raise PermissionDenied(f"{field}: {_DENIED}")
        return region

    def tensor(self, shared: pb.SharedTensor, field: str, max_elements: int) -> npt.NDArray[Any]:
        """A copy of a shared input tensor, after checking it lies inside its region."""
        try:
            dtype, shape, nbytes = codec.check_declared(shared.dtype, shared.shape, field)
            limits.check_elements(shape, field, max_elements)
        except ValueError as exc:
            raise as_engine_error(exc, field) from None
        region = self.region(shared.region, shared.capability, field)
        region.check_inside(shared.offset, nbytes, field)
        return region.read(dtype, shape, shared.offset, field)

    def result_region(self, buffer: pb.SharedBuffer) -> Region:
        """The result buffer's region, after checking the buffer lies inside it."""
        region = self.region(buffer.region, buffer.capability, "result")
        if buffer.size < 0:
            raise InvalidArgumentError("result.size", f"size {buffer.size} is negative")
        region.check_inside(buffer.offset, buffer.size, "result")
        return region

    def write_result(self, buffer: pb.SharedBuffer, result: npt.NDArray[Any], dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        """Write the result into the client's buffer, after checking it fits."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > buffer.size:
            raise InvalidArgumentError("result.size", f"the result {list(shape)} of {dtype.name} needs {nbytes} bytes; the buffer has {buffer.size}")
        wanted = dtype.newbyteorder("<")
        if result.dtype == wanted and result.shape == shape and result.flags.c_contiguous:
            out = result
        else:
            out = np.empty(shape, wanted)
            np.copyto(out, result)
        self.result_region(buffer).write(out, buffer.offset, "result")

    def close(self) -> None:
        """Close every descriptor of this call."""
        while self._open:
            os.close(self._open.popitem()[1].fd)


@contextmanager
def regions() -> Iterator[Regions]:
    """The regions of one request; their descriptors are closed when it ends."""
    opened = Regions()
    try:
        yield opened
    finally:
        opened.close()


def compute(request: pb.SharedSignalRequest, correlate: bool, settings: Settings) -> tuple[np.dtype[Any], tuple[int, ...], CallInfo]:
    """Check every region's capability, read the inputs, compute, write the result (on a worker thread)."""
    limit = settings.max_elements
    with regions() as opened:
        for shared, field in ((request.in1, "in1"), (request.in2, "in2")):  # every capability before any data
            opened.region(shared.region, shared.capability, field)
        opened.result_region(request.result)
        arrays = {"in1": opened.tensor(request.in1, "in1", limit), "in2": opened.tensor(request.in2, "in2", limit)}
        plan = plan_signal_call(**decode.signal_arguments(request.options, settings, arrays), correlate=correlate)
        del arrays
        limits.check_result(plan.output_shape, plan.out_dtype, settings)
        started = time.perf_counter()
        result = execute(plan)
        info = CallInfo(plan.method, time.perf_counter() - started, tuple(plan.warnings))
        dtype, shape = plan.out_dtype, plan.output_shape
        del plan
        opened.write_result(request.result, result, dtype, shape)
    return dtype, shape, info


def _declared(request: pb.SharedSignalRequest) -> pb.SignalRequest:
    """The SignalRequest the call's options and shared tensors' headers declare (no data)."""
    if request.options.HasField("in1") or request.options.HasField("in2"):
        raise InvalidArgumentError("options", "in1 and in2 go in the shared tensors, not in options")
    declared = pb.SignalRequest()
    declared.CopyFrom(request.options)  # every option counts in the estimate (mode, boundary, output_dtype)
    declared.in1.CopyFrom(pb.Tensor(dtype=request.in1.dtype, shape=request.in1.shape))
    declared.in2.CopyFrom(pb.Tensor(dtype=request.in2.dtype, shape=request.in2.shape))
    return declared


async def serve(
    spec: RpcSpec, request: pb.SharedSignalRequest, context: grpc.aio.ServicerContext, settings: Settings, pool: WorkerPool, correlate: bool
) -> pb.SharedResponse:
    """Compute with inputs and result in the client's shared memory (opt-in: ``allow_shared_memory``)."""
    record = CallRecord(spec.name, context, 0)
    async with record.guard():
        if not settings.allow_shared_memory:
            raise FailedPrecondition("shared memory is off on this server; start it with --allow-shared-memory (and share /dev/shm with the client)")
        declared = _declared(request)
        spec.check(declared)
        for name in spec.tensor_fields:
            check_declared(getattr(declared, name), name, settings)
        nbytes = spec.estimated(declared)
        dtype, shape, info = await pool.run(compute, request, correlate, settings, nbytes=nbytes, inline=spec.inline(declared, None))
    record.ok(info.method, 0)
    return pb.SharedResponse(result=encode.declared_result(dtype, shape), info=encode.compute_info(info))
