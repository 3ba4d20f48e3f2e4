"""glibc malloc settings of the server process: keep large freed blocks for reuse.

By default glibc serves every allocation above 128 KiB-32 MiB (its dynamic threshold) with a
fresh ``mmap`` and returns it on free, so each request's messages, tensors and results fault
their pages in anew: 2.5-15 us per 4 KiB page here (measured on the development host). In one process,
building and serializing a response of 1 MiB took 3.7-4.8 ms with the defaults and 0.2 ms with
the settings below; 16 MiB 66-70 ms against 11-12 ms; 128 MiB 530-580 ms against 86 ms (with
1 GiB). Over the wire, interleaved on three servers: a 1 MiB unary round trip took 16.2 ms with
glibc's defaults, 10.1 ms at 32 MiB and 10.8 ms at 1 GiB; 16 MiB took 308, 288 and 161 ms. But
at 1 GiB a 128 MiB unary call's peak RSS was 5.0x its bytes against 3.5x at 32 MiB, so the
default (32 MiB) serves the unary sizes (up to 4 MiB) and 1 MiB chunks, and leaves big arrays to
``mmap``.

:func:`configure` raises the mmap threshold and the trim threshold to ``retain_bytes`` and keeps
every thread on the main arena (heaps of other arenas cannot grow past 64 MiB, so their large
blocks would be mmapped anyway). The cost is that up to ``retain_bytes`` of freed memory stays
with the process for the next request instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# mallopt takes an int.
_INT_MAX = 2**31 - 1


def configure(retain_bytes: int) -> str:
    """Apply the settings (``retain_bytes`` 0: leave glibc's defaults); return what happened.

    Parameters
    ----------
    retain_bytes : int
        Largest block served from the heap instead of ``mmap``, and most free memory kept at the
        top of the heap; capped at 2 GiB - 1 (mallopt takes an int).

    Returns
    -------
    str
        A one-line description for the server's log.
    """
    if retain_bytes <= 0:
        return "glibc malloc defaults"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc: malloc settings left alone"
    value = ctypes.c_int(min(retain_bytes, _INT_MAX))
    accepted = [bool(mallopt(M_MMAP_THRESHOLD, value)), bool(mallopt(M_TRIM_THRESHOLD, value)), bool(mallopt(M_ARENA_MAX, ctypes.c_int(1)))]
    if not all(accepted):
        return f"malloc settings partly refused (mmap threshold, trim threshold, one arena: {accepted})"
    return f"malloc keeps blocks up to {value.value} bytes for reuse (mmap and trim thresholds), one arena"
