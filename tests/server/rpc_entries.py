"""The RPC table's entry of a request message, for tests that hold a message but no RPC.

The server never dispatches by message type: each servicer method names its entry of
``convserve_server.transport.rpcs``. These tests check headers and estimates of many message
types in one loop, so they look the entry up here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convserve_server.admission.weights import Entry
from convserve_server.settings import Settings
from convserve_server.transport import rpcs

# Convolve's entry for a SignalRequest (Correlate's checks and estimate are the same).
BY_MESSAGE = {spec.message: spec for spec in (rpcs.CONVOLVE, rpcs.CONV_LAYER, rpcs.CONV_TRANSPOSE, rpcs.REGISTER_WEIGHTS, rpcs.CONVOLVE_STREAM)}


def check_headers(request: Any, settings: Settings, only: Iterable[str] | None = None) -> None:
    """The header checks of the request's RPC."""
    BY_MESSAGE[type(request)].check_headers(request, settings, only)


def estimate(request: Any, entry: Entry | None = None) -> int:
    """The working-memory estimate admission makes for the request's RPC."""
    return BY_MESSAGE[type(request)].estimated(request, entry)
