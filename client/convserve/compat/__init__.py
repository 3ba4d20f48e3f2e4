"""``convserve.compat``: drop-in modules with scipy's own signatures, computed on the service.

``from convserve.compat import signal, ndimage`` gives ``signal.convolve``, ``correlate``,
``fftconvolve``, ``oaconvolve``, ``convolve2d``, ``correlate2d`` and ``ndimage.convolve``,
``correlate`` with scipy's argument names, defaults, result shapes and dtypes. scipy itself is
not needed. Every function talks to one server, named once: :func:`configure`, else the
``CONVSERVE_TARGET`` environment variable, else ``127.0.0.1:50051``; ``convserve.dask`` uses the
same one when it is given no ``target``. :func:`configure` checks its options against
:class:`convserve.Client`'s at once; the client it replaces (as a changed ``CONVSERVE_TARGET``
does) is closed once the calls in flight on it, on any thread, are done.

Where convserve differs from scipy on purpose, an integer result that would wrap around raises
:class:`convserve.OutOfRangeError` (an OverflowError) naming a dtype that holds it: cast an input
to it (``signal``), or pass it as ``output=`` (``ndimage``).
"""

from __future__ import annotations

from convserve.compat._config import ENVIRONMENT, configure, default_client, settings

__all__ = ["ENVIRONMENT", "configure", "default_client", "settings"]
