"""Engine results -> response messages: the result tensor and its ComputeInfo."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from convserve import codec
from convserve.v1 import convserve_pb2 as pb

from convserve_server.engine.info import CallInfo


def compute_info(info: CallInfo) -> pb.ComputeInfo:
    """The ComputeInfo message of an engine CallInfo."""
    return pb.ComputeInfo(method=info.method, compute_seconds=info.compute_seconds, warnings=list(info.warnings))


def result_into(tensor: pb.Tensor, array: npt.NDArray[Any]) -> None:
    """Encode a result array into the response's tensor field (no message is copied)."""
    codec.encode_into(tensor, np.asarray(array), "result")


def declared_result(dtype: np.dtype[Any], shape: tuple[int, ...]) -> pb.Tensor:
    """A result's header without data (its bytes went to the client's shared memory)."""
    return pb.Tensor(dtype=codec.dtype_code(dtype, "result"), shape=shape)
