"""``convserve.compat``: drop-in modules with scipy's own signatures, computed on the service.

``from convserve.compat import signal, ndimage`` gives ``signal.convolve``, ``correlate``,
``fftconvolve``, ``oaconvolve``, ``convolve2d``, ``correlate2d`` and ``ndimage.convolve``,
``correlate`` with scipy's argument names, defaults, result shapes and dtypes. scipy itself is
not needed. Every function talks to one server, named once: :func:`configure`, else the
``CONVSERVE_TARGET`` environment variable, else ``127.0.0.1:50051``; ``convserve.dask`` uses the
same one when it is given no ``target``.

Where convserve differs from scipy on purpose, an integer result that would wrap around raises
:class:`convserve.OutOfRangeError` (an OverflowError) naming a dtype that holds it.
"""

from __future__ import annotations

from convserve.compat._config import ENVIRONMENT, configure, default_client, settings

__all__ = ["ENVIRONMENT", "configure", "default_client", "settings"]
