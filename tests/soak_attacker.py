"""A hostile neighbour for the soak test: names another process's shared-memory regions.

Usage: ``python soak_attacker.py TARGET VICTIM_PID``. It lists ``/dev/shm/convserve_<pid>_*``
(names anyone can list), and for each region asks the server to read it as an input and to write
a result into it, with no capability and with a guessed one. It prints one JSON object: how many
requests it tried and the count of each status code; the victim's data must never come back.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import sys

import grpc

from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

HEADER_BYTES = 64  # the region header the client writes (magic + capability); data starts after it


def main() -> int:
    """Attack every region of the victim and print the tally."""
    target, victim = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"convserve_{victim}_"))
    tally: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ConvolutionServiceStub(channel)
        for name in names:
            for capability in (b"", secrets.token_bytes(16)):
                tensor = pb.SharedTensor(region=name, offset=HEADER_BYTES, dtype=pb.DTYPE_FLOAT64, shape=[1024], capability=capability)
                kernel = pb.SharedTensor(region=name, offset=HEADER_BYTES, dtype=pb.DTYPE_FLOAT64, shape=[1], capability=capability)
                result = pb.SharedBuffer(region=name, offset=HEADER_BYTES, size=1024 * 8 * 2, capability=capability)
                request = pb.SharedSignalRequest(options=pb.SignalRequest(), in1=tensor, in2=kernel, result=result)
                tally["tried"] += 1
                try:
                    stub.ConvolveShared(request, timeout=10)
                    tally["OK"] += 1
                except grpc.RpcError as error:
                    tally[error.code().name] += 1
    print(json.dumps(dict(tally)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
