"""The server's status of an asyncio streaming call, kept from being overwritten (grpc/grpc#36066).

When the server ends a client-streaming call while a write of the client is pending (a busy
server refusing a chunked upload at its header, say), grpc.aio first records the server's status
and then overwrites it with ``INTERNAL: Internal error from Core`` as the pending write fails. The
caller would see INTERNAL ("a server bug") instead of RESOURCE_EXHAUSTED with its pushback, and the
client could not apply its retry rule. The blocking API reports the server's status; this module
makes the asyncio client do the same: it reads the first status gRPC records for the call (in the
call's done callback, where it is still the server's) and uses it in place of that INTERNAL.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import grpc

_CORE_WRITE_FAILURE = "Internal error from Core"


def _settled(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The value of a grpc.aio accessor coroutine that has nothing to wait for (the call is done)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise LookupError("the call has no status yet")


class StatusWitness:
    """Remembers the first status of one grpc.aio streaming call."""

    def __init__(self, call: Any) -> None:
        self._first: grpc.aio.AioRpcError | None = None
        call.add_done_callback(self._done)

    def _done(self, call: Any) -> None:
        try:
            code = _settled(call.code())
            if code == grpc.StatusCode.OK:
                return
            self._first = grpc.aio.AioRpcError(
                code, grpc.aio.Metadata(), _settled(call.trailing_metadata()), _settled(call.details()), _settled(call.debug_error_string())
            )
        except Exception:  # noqa: BLE001 - a grpc.aio that works differently: keep what gRPC reports
            self._first = None

    def error(self, rpc_error: grpc.RpcError) -> grpc.RpcError:
        """The server's error when gRPC replaced it by its own INTERNAL for a failed write, else ``rpc_error``."""
        failed_write = (
            hasattr(rpc_error, "code")
            and rpc_error.code() == grpc.StatusCode.INTERNAL
            and hasattr(rpc_error, "details")
            and rpc_error.details() == _CORE_WRITE_FAILURE
        )
        if failed_write and self._first is not None and self._first.details() != _CORE_WRITE_FAILURE:
            return self._first
        return rpc_error
