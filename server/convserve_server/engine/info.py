"""What a call did: the method that ran, its compute time and any warnings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallInfo:
    """Facts about one engine call, returned when ``return_info=True``.

    Attributes
    ----------
    method : str
        The method that ran (``"direct"``, ``"fft"``, ``"overlap_add"``, ``"gemm"``...).
    compute_seconds : float
        Wall time of the computation itself.
    warnings : tuple of str
        Anything the caller should know (for example NaN present in an input).
    """

    method: str
    compute_seconds: float
    warnings: tuple[str, ...] = field(default=())
