"""A load process for the soak test: threads of mixed calls through the default client.

Usage: ``python soak_load.py TARGET SECONDS THREADS [--shared-memory]``. Every thread loops over a
mix of calls (tiny and 64 KiB unary, chunked 6 MiB, a CNN layer, a short stream and, with
``--shared-memory``, a shared-memory call) until SECONDS have passed or it has made
``MAX_CALLS_PER_THREAD`` calls. It prints one JSON object: the count of each outcome (``OK`` or
the exception class name) and of wrong answers, then exits 0 however the calls ended.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from typing import Any

import numpy as np

import convserve

MAX_CALLS_PER_THREAD = 400


def _calls(client: convserve.Client, shared: convserve.Client | None, rng: np.random.Generator) -> list[Any]:
    """(name, function, reference) triples; each function makes one call and returns its result."""
    tiny, kernel = rng.standard_normal(6), rng.standard_normal(3)
    medium = rng.standard_normal(8192)  # 64 KiB
    large = rng.standard_normal(6 * 2**20 // 8)  # 6 MiB: chunked
    short = rng.standard_normal(5)
    image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    blocks = [rng.standard_normal(256) for _ in range(4)]
    calls = [
        ("tiny", lambda: client.convolve(tiny, kernel), np.convolve(tiny, kernel)),
        ("medium", lambda: client.convolve(medium, kernel, mode="same"), np.convolve(medium, kernel, mode="same")),
        ("chunked", lambda: client.convolve(large, short, method="direct"), None),
        ("layer", lambda: client.conv_layer(image, weight, padding=1), None),
        ("stream", lambda: np.concatenate(list(client.convolve_stream(iter(blocks), kernel))), np.convolve(np.concatenate(blocks), kernel)),
    ]
    if shared is not None:
        signal = rng.standard_normal(2**18)  # 2 MiB: over the shared-memory threshold
        calls.append(("shared", lambda: shared.convolve(signal, short), np.convolve(signal, short)))
    return calls


def main() -> int:
    """Run the load and print the tally."""
    target, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    use_shared = "--shared-memory" in sys.argv[4:]
    tally: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    ends = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = np.random.default_rng(index)
        with convserve.Client(target) as client:
            shared = convserve.Client(target, shared_memory=True) if use_shared else None
            try:
                calls = _calls(client, shared, rng)
                for count in range(MAX_CALLS_PER_THREAD):
                    if time.monotonic() >= ends:
                        break
                    name, call, reference = calls[(index + count) % len(calls)]
                    try:
                        result = call()
                        outcome = "OK"
                        if reference is not None and not np.allclose(result, reference, rtol=1e-9, atol=1e-9):
                            outcome = "WRONG"
                    except convserve.ConvserveError as error:
                        outcome = type(error).__name__
                    with lock:
                        tally[outcome] += 1
                        tally[f"{name}:{outcome}"] += 1
            finally:
                if shared is not None:
                    shared.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(json.dumps(dict(tally)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
