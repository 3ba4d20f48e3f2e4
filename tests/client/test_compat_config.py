"""``convserve.compat.configure`` without a server: options checked at once, replaced clients closed, but only once their calls are done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import convserve
import convserve.compat
from convserve.compat import _config


@pytest.fixture()
def closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[convserve.Client]]:
    """The clients closed during the test, in order."""
    seen: list[convserve.Client] = []
    original = convserve.Client.close

    def close(self: convserve.Client) -> None:
        seen.append(self)
        original(self)

    monkeypatch.setattr(convserve.Client, "close", close)
    convserve.compat.configure(None)
    yield seen
    convserve.compat.configure(None)


def test_a_misspelt_option_fails_in_configure(closed: list[convserve.Client]) -> None:
    convserve.compat.configure("127.0.0.1:7011", timeout=4)
    with pytest.raises(TypeError, match="timout"):
        convserve.compat.configure("127.0.0.1:7012", timout=3)
    assert convserve.compat.settings() == ("127.0.0.1:7011", {"timeout": 4})  # nothing changed


def test_a_replaced_client_is_closed_after_its_calls_in_flight(closed: list[convserve.Client]) -> None:
    convserve.compat.configure("127.0.0.1:7013")
    with _config.lease() as first:  # a call in flight on another thread
        convserve.compat.configure("127.0.0.1:7014")
        assert first not in closed  # it finishes on the client it started on
        second = convserve.compat.default_client()
        assert second.target == "127.0.0.1:7014"
    assert closed == [first]
    convserve.compat.configure("127.0.0.1:7015")  # nothing in flight: closed at once
    assert closed == [first, second]


def test_a_changed_environment_releases_the_replaced_client(closed: list[convserve.Client], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_config.ENVIRONMENT, "127.0.0.1:7016")
    first = convserve.compat.default_client()
    monkeypatch.setenv(_config.ENVIRONMENT, "127.0.0.1:7017")
    second = convserve.compat.default_client()
    assert second is not first and second.target == "127.0.0.1:7017" and closed == [first]
