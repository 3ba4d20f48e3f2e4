"""The gallery's facts as quick in-process tests of the client: dice, blurs, edges, an echo, a CNN layer.

The runnable gallery, with pictures, is ``examples/``: run ``python examples/dice.py`` (and the others)
against a server. This file is their pytest twin: ``python -m pytest tests/e2e/test_gallery.py``, or
``python tests/e2e/test_gallery.py``, which runs pytest on it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.signal as ss

import convserve


def test_sum_of_two_dice(client: convserve.Client) -> None:
    die = np.full(6, 1 / 6)
    two_dice = client.convolve(die, die)  # P(sum = 2), ..., P(sum = 12)
    counts = np.array([1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1]) / 36
    np.testing.assert_allclose(two_dice, counts, atol=1e-15)
    assert int(np.argmax(two_dice)) + 2 == 7
    # Exact with integer counts: the number of ways to roll each sum.
    np.testing.assert_array_equal(client.convolve(np.ones(6, np.int64), np.ones(6, np.int64)), counts * 36)


def test_box_and_gaussian_blur(client: convserve.Client) -> None:
    image = np.zeros((32, 32), np.float32)
    image[16, 16] = 1.0
    box = client.convolve(image, np.full((3, 3), 1 / 9, np.float32), mode="same")
    np.testing.assert_allclose(box[15:18, 15:18], np.full((3, 3), 1 / 9), atol=1e-7)
    assert box.sum() == np.float32(1.0) or abs(float(box.sum()) - 1.0) < 1e-6
    t = np.arange(-3, 4)
    g = np.exp(-(t**2) / 2.0)
    gaussian = np.outer(g, g) / np.outer(g, g).sum()
    blurred = client.convolve(image.astype(np.float64), gaussian, mode="same")
    np.testing.assert_allclose(blurred[13:20, 13:20], gaussian, atol=1e-15)  # the impulse response


def test_sobel_edges(client: convserve.Client) -> None:
    image = np.zeros((20, 20))
    image[:, 10:] = 1.0  # a vertical edge
    sobel_x = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float)
    gx = client.convolve(image, sobel_x, mode="same", boundary="edge")
    assert np.all(np.abs(gx[:, 9:11]) == 4) and np.all(gx[:, :8] == 0) and np.all(gx[:, 12:] == 0)


def test_echo_with_a_two_spike_kernel(client: convserve.Client) -> None:
    rate = 8000
    audio = np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    delay = rate // 4
    kernel = np.zeros(delay + 1)
    kernel[0], kernel[delay] = 1.0, 0.5  # the sound, then an echo at half volume 250 ms later
    echoed = client.convolve(audio, kernel)
    expected = np.concatenate([audio, np.zeros(delay)])
    expected[delay:] += 0.5 * audio
    np.testing.assert_allclose(echoed, expected, atol=1e-9)


def test_cnn_layer_with_stride_2_and_zero_padding(client: convserve.Client) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = client.conv_layer(x, w, stride=2, padding=1)
    assert y.shape == (1, 4, 4, 4)  # floor((8 + 2*1 - 3) / 2) + 1
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding 1
    expected = np.stack([sum(ss.correlate(padded[0, c], w[o, c], mode="valid") for c in range(3))[::2, ::2] for o in range(4)])[None]
    assert np.max(np.abs(y - expected)) <= 1e-5 * np.abs(expected).max()


def test_deep_learning_convolution_is_cross_correlation(client: convserve.Client) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 12))
    k = rng.standard_normal((3, 3))
    layer = client.conv_layer(x[None, None], k[None, None])[0, 0]
    np.testing.assert_allclose(layer, client.correlate(x, k, mode="valid"), atol=1e-12)
    np.testing.assert_allclose(layer, client.convolve(x, k[::-1, ::-1], mode="valid"), atol=1e-12)  # flip the kernel
    np.testing.assert_allclose(layer, ss.correlate(x, k, mode="valid"), atol=1e-12)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
