"""The floor a convserve call is measured against: a raw gRPC echo of the same bytes.

The server is a ``grpc.aio`` server in a process of its own, as convserve's is. It echoes a
``convserve.v1.Tensor`` message, unary, or a stream of them (one chunk per message). Its client is
the same kind of sync stub the default ``convserve.Client`` uses, and does what convserve's client
does with the bytes: numpy -> bytes -> protobuf message on the way out, and message -> numpy on the
way back (the streamed echo assembles its chunks into one preallocated array).

Run the server alone: ``python bench/echo_floor.py`` (prints ``echo listening on 127.0.0.1:PORT``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
from convserve.v1 import convserve_pb2 as pb

MIB = 2**20
CHUNK = MIB
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


async def _unary(request: pb.Tensor, context: Any) -> pb.Tensor:
    return request


async def _stream(requests: AsyncIterator[pb.Tensor], context: Any) -> AsyncIterator[pb.Tensor]:
    async for request in requests:
        yield request


async def serve() -> None:
    """Serve the echo on a free loopback port until killed; print the port first."""
    server = grpc.aio.server(options=UNLIMITED)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, pb.Tensor.FromString, pb.Tensor.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(_stream, pb.Tensor.FromString, pb.Tensor.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


class EchoClient:
    """The echo server in a child process, and a sync client of it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        target = self.process.stdout.readline().split()[-1]
        self.pid = self.process.pid
        self.channel = grpc.insecure_channel(target, options=UNLIMITED)
        self.unary = self.channel.unary_unary("/bench.Echo/Unary", pb.Tensor.SerializeToString, pb.Tensor.FromString)
        self.stream = self.channel.stream_stream("/bench.Echo/Stream", pb.Tensor.SerializeToString, pb.Tensor.FromString)
        grpc.channel_ready_future(self.channel).result(timeout=10)

    def echo_unary(self, array: np.ndarray) -> np.ndarray:
        """One message each way."""
        reply = self.unary(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=array.shape, data=array.tobytes()))
        return np.frombuffer(reply.data, array.dtype).reshape(array.shape)

    def echo_stream(self, array: np.ndarray) -> np.ndarray:
        """1 MiB chunks each way, assembled into one preallocated array."""
        view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))

        def chunks() -> Iterator[pb.Tensor]:
            for start in range(0, len(view), CHUNK):
                yield pb.Tensor(data=view[start : start + CHUNK].tobytes())

        result = np.empty_like(array)
        received = memoryview(result.reshape(-1).view(np.uint8))
        offset = 0
        for piece in self.stream(chunks()):
            received[offset : offset + len(piece.data)] = piece.data
            offset += len(piece.data)
        return result

    def close(self) -> None:
        """Close the channel and end the server process."""
        self.channel.close()
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(serve())
