"""OpenCV's 2-D filter in bands of output rows, on the engine's threads, each band checked while in cache.

The engine splits the rows itself, over the request's share of the cores this process may run on
(``resources.run_split``). Each thread filters its rows in bands of about :data:`BAND_BYTES` of
output, small enough that OpenCV does not split a band over its own threads, writing straight into
the result, and checks each band (:func:`.info.has_nonfinite`, one sum) while it is still in the core's cache; so the
NaN/Inf check costs no pass over memory. Measured here (2 cores, medians of 21, float32, same
mode) against one multi-threaded ``cv2.filter2D`` plus the check over its result:

====================  ===========================  =================
image, kernel         filter2D + check (filter2D)  bands, 2 threads
====================  ===========================  =================
2048^2, 3x3           2.09 ms (1.66)               1.75 ms
2048^2, 7x7           5.59 ms (4.96)               4.69 ms
4096^2, 3x3           14.3 ms (11.8)               12.4 ms
4096^2, 7x7           47.9 ms (43.8)               24.5 ms
====================  ===========================  =================

Band ``[a, b)`` of the output reads the source rows it needs, ``[a - ay, b + M - 1 - ay)``
clipped to the image, with the anchor moved so that its first output row is row ``a``. OpenCV
writes as many rows as it reads; the extra rows at the bottom land on the next band's rows,
which the same thread writes next (a band whose spill would reach another thread's rows writes
through a scratch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from convserve_server.engine import cancellation, resources
from convserve_server.engine.info import has_nonfinite

# Output bytes per band: small enough to stay in a core's cache while it is summed, and for
# OpenCV not to split the band over its own threads (measured best from 0.5 to 1 MiB; 4 MiB
# bands of a 4096-wide image took twice as long).
BAND_BYTES = 1024 * 1024
# Below this many output bytes one thread filters the whole image in one call (a hand-off to
# another thread costs more than it saves).
MIN_SPLIT_BYTES = 2 * 1024 * 1024


def filter_rows(
    cv2: Any,
    src: npt.NDArray[Any],
    kernel: npt.NDArray[Any],
    anchor: tuple[int, int],
    first: int,
    rows: int,
    ddepth: int,
    dtype: np.dtype[Any],
) -> tuple[npt.NDArray[Any], bool]:
    """Rows ``first .. first + rows - 1`` of ``cv2.filter2D(src, ddepth, kernel, anchor=anchor)``.

    Zero border (``BORDER_CONSTANT``); every column of ``src`` is kept. Returns the rows (a
    C-contiguous array of ``dtype``) and whether they hold NaN or Inf.
    """
    cols = src.shape[1]
    spare = max(0, min(kernel.shape[0], src.shape[0]) - 1)  # OpenCV writes up to this many rows past a band
    buffer = np.empty((rows + spare, cols), dtype=dtype)
    threads = resources.thread_limit(resources.CORES)
    parts = 1 if rows * cols * dtype.itemsize < MIN_SPLIT_BYTES or rows < 2 * threads else threads
    band = max(1, BAND_BYTES // max(1, cols * dtype.itemsize))

    def share(lo: int, hi: int) -> bool:
        return _share(cv2, src, kernel, anchor, buffer, first, first + lo, first + hi, hi == rows, band, ddepth)

    nonfinite = any(resources.run_split(share, rows, parts))
    if spare > rows:  # a few rows of a tall kernel: do not keep the spare rows alive with the result
        return buffer[:rows].copy(), nonfinite
    return buffer[:rows], nonfinite


def _share(
    cv2: Any,
    src: npt.NDArray[Any],
    kernel: npt.NDArray[Any],
    anchor: tuple[int, int],
    buffer: npt.NDArray[Any],
    first: int,
    start: int,
    stop: int,
    last: bool,
    band: int,
    ddepth: int,
) -> bool:
    """Filter output rows ``[start, stop)`` band by band into ``buffer`` (row ``first`` at 0); whether any is non-finite."""
    n, m = src.shape[0], kernel.shape[0]
    ax, ay = anchor
    nonfinite = False
    with np.errstate(invalid="ignore", over="ignore"):
        for a in range(start, stop, band):
            cancellation.check()
            b = min(stop, a + band)
            lo, hi = max(0, a - ay), min(n, b + m - 1 - ay)
            local_anchor = (ax, ay - (a - lo))
            if last or a + (hi - lo) <= stop:  # the spill rows are this thread's next band, or spare rows
                target = buffer[a - first : a - first + (hi - lo)]
                written = cv2.filter2D(src[lo:hi], ddepth, kernel, dst=target, anchor=local_anchor, borderType=cv2.BORDER_CONSTANT)
                if written is not target:  # OpenCV made a new array (it could not write in place)
                    buffer[a - first : b - first] = written[: b - a]
            else:  # the spill would land on another thread's rows
                scratch = cv2.filter2D(src[lo:hi], ddepth, kernel, anchor=local_anchor, borderType=cv2.BORDER_CONSTANT)
                buffer[a - first : b - first] = scratch[: b - a]
            nonfinite = nonfinite or has_nonfinite(buffer[a - first : b - first], guarded=False)
    return nonfinite
