"""A fill value is used by boundary='fill' only; given with another boundary it is refused, never ignored."""

from __future__ import annotations

import numpy as np
import pytest

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.signal.convolution import convolve


@pytest.mark.parametrize("boundary", ["wrap", "reflect", "symmetric", "edge"])
def test_a_fill_value_with_another_boundary_is_refused(boundary: str) -> None:
    with pytest.raises(InvalidArgumentError, match="fill_value"):
        convolve(np.arange(8.0), np.ones(3), mode="same", boundary=boundary, fill_value=5)
    result = convolve(np.arange(8.0), np.ones(3), mode="same", boundary=boundary, fill_value=0)  # the default: fine
    assert result.shape == (8,)


def test_a_fill_value_with_fill_is_used() -> None:
    result = convolve(np.zeros(4), np.ones(3), mode="same", boundary="fill", fill_value=2)
    np.testing.assert_array_equal(result, [2, 0, 0, 2])  # one sample of fill at each end
