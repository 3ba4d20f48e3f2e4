"""What the fuzz tests (tests/e2e/test_fuzz_*.py) share: hypothesis strategies for hostile and
valid tensors, the statuses the contract allows, call helpers that return a status instead of
raising, the size rules for declared tensors, numpy's reference answer and a client-made
shared-memory region. A plain module: pytest collects nothing here."""

from __future__ import annotations

import math
import secrets
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck
from hypothesis import strategies as st

from convserve import InvalidArgumentError, codec
from convserve._shared_memory import HEADER_SIZE, header
from convserve.v1 import convserve_pb2 as pb

DIMENSION = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**62, 2**63 - 1, -(2**63)]))
TENSORS = st.builds(
    pb.Tensor,
    dtype=st.integers(0, 16),
    shape=st.lists(DIMENSION, max_size=4),
    data=st.binary(max_size=96),
)
VALID_TENSORS = st.builds(
    lambda dtype, shape, seed: codec.encode(np.random.default_rng(seed).integers(-3, 4, shape).astype(dtype)),
    dtype=st.sampled_from(["uint8", "int16", "int64", "float16", "float32", "float64", "complex64", "bool"]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**16),
)
ANY_TENSOR = st.one_of(TENSORS, VALID_TENSORS)
INTS = st.lists(st.integers(-2, 2**40), max_size=4)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}
OK, INVALID, OUT_OF_RANGE, EXHAUSTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_ELEMENTS = 2**24  # the session server's --max-elements (tests/conftest.py)
SHARED_MAX_ELEMENTS = 2**20  # the shared-memory server's, below
PUSHBACK = "grpc-retry-pushback-ms"
FUNCTION_FIXTURE = [HealthCheck.function_scoped_fixture]


def _status(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=30)  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _outcome(call: Any, request: object) -> tuple[grpc.StatusCode, dict[str, str], Any]:
    """A unary call's status, trailing metadata and response (None unless OK)."""
    try:
        response, rpc = call.with_call(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ()), None  # type: ignore[attr-defined]
    return OK, dict(rpc.trailing_metadata() or ()), response


def _stream_outcome(call: Any, messages: list[object]) -> tuple[grpc.StatusCode, dict[str, str], list[Any]]:
    """Send ``messages`` on a streaming RPC, read every reply: the final status, trailers and replies."""
    replies: list[Any] = []
    responses = call(iter(messages), timeout=30)
    try:
        for reply in responses:
            replies.append(reply)
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ()), replies  # type: ignore[attr-defined]
    return OK, dict(responses.trailing_metadata() or ()), replies


def _stream_status(call: object, messages: list[object]) -> grpc.StatusCode:
    """Send ``messages`` on a streaming RPC and read every reply; the final status."""
    return _stream_outcome(call, messages)[0]


def _declared(tensor: pb.Tensor, limit: int) -> str:
    """What the size rules make of a tensor's declared dtype and shape, by the contract:
    'malformed' (INVALID_ARGUMENT), 'huge' (well formed, more than ``limit`` elements:
    RESOURCE_EXHAUSTED with pushback -1) or 'ok'."""
    try:
        _, shape, _ = codec.check_declared(tensor.dtype, tensor.shape, "t")
    except InvalidArgumentError:
        return "malformed"
    return "huge" if math.prod(shape) > limit else "ok"


def _assert_never_fits(code: grpc.StatusCode, trailers: dict[str, str], what: object) -> None:
    assert code == EXHAUSTED, (code, what)
    assert trailers.get(PUSHBACK) == "-1", (trailers, what)


def _reference_signal(in1: np.ndarray, in2: np.ndarray, correlate: bool) -> np.ndarray:
    wide = np.int64 if in1.dtype.kind in "iu" else np.complex128 if np.iscomplexobj(in1) else np.float64
    kernel = np.conj(in2[::-1]) if correlate else in2
    return np.convolve(in1.astype(wide), kernel.astype(wide))


class _Region:
    """A region made as the client makes one (``convserve._shared_memory``): 0600, the 64-byte header, then data."""

    def __init__(self, purpose: str, size: int = 1 << 16) -> None:
        self.memory = shared_memory.SharedMemory(name=f"convserve_fuzz_{secrets.token_hex(4)}_{purpose}", create=True, size=size)
        self.capability = secrets.token_bytes(16)
        self.memory.buf[:HEADER_SIZE] = header(self.capability)

    @property
    def name(self) -> str:
        return self.memory.name.lstrip("/")

    def snapshot(self) -> bytes:
        return bytes(self.memory.buf)

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()
