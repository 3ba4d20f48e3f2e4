"""Convolution versus cross-correlation: convolution flips the kernel, correlation does not.

Convolving an impulse gives back the kernel as it is, stamped where the impulse was; correlating it gives
the kernel flipped (reversed in 1-D, turned by 180 degrees in 2-D). So ``correlate(x, k)`` equals
``convolve(x, k flipped)``, and a CNN's "convolution" layer is in fact a correlation.

Run a server (``convserve serve``), then ``python examples/conv_vs_corr.py``: it writes ``conv_vs_corr.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from _common import connect, parse_args, save_figure, save_results

LETTER_F = np.array(  # an asymmetric kernel, so that every flip shows
    [
        [1, 1, 1, 1, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ],
    np.int64,
)


def main() -> None:
    """Convolve and correlate impulses with asymmetric kernels in 1-D and 2-D, and draw all of them."""
    args = parse_args(__doc__)
    signal = np.zeros(20, np.int64)
    signal[[3, 12]] = [1, 2]  # two impulses
    ramp = np.array([1, 2, 3, 4], np.int64)  # a rising kernel
    image = np.zeros((15, 24), np.int64)
    image[4, 5] = image[9, 16] = 1  # two bright pixels
    with connect(args.target) as client:
        convolved_1d = client.convolve(signal, ramp)  # integers stay exact
        correlated_1d = client.correlate(signal, ramp)
        convolved_2d = client.convolve(image, LETTER_F, mode="same")
        correlated_2d = client.correlate(image, LETTER_F, mode="same")
        flipped = client.convolve(image, LETTER_F[::-1, ::-1], mode="same")  # convolution with the kernel turned by 180 degrees
        layer = client.conv_layer(image[None].astype(np.float64), LETTER_F[None, None].astype(np.float64), padding=2)[0]  # a CNN layer
    difference = int(np.abs(correlated_2d - flipped).max())
    print(f"1-D: convolve gives {convolved_1d[3:7].tolist()} at the first impulse, correlate {correlated_1d[3:7].tolist()} (full mode, indices 3 to 6)")
    same_as_layer = np.array_equal(layer, correlated_2d)
    print(f"2-D: correlate(x, F) == convolve(x, F turned 180 degrees): max difference {difference}; conv_layer == correlate: {same_as_layer}")

    figure = Figure(figsize=(13, 5.6), layout="constrained")
    top, bottom = figure.subplots(2, 4, height_ratios=(1, 1.5))
    for axes, values, title in (
        (top[0], signal, "the signal x: two impulses"),
        (top[1], ramp, "the kernel k = [1, 2, 3, 4]"),
        (top[2], convolved_1d, "convolve(x, k): k as it is"),
        (top[3], correlated_1d, "correlate(x, k): k reversed"),
    ):
        axes.stem(values, basefmt=" ")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("index")
    for axes, picture, title in (
        (bottom[0], image, "the image x: two bright pixels"),
        (bottom[1], LETTER_F, "the kernel F"),
        (bottom[2], convolved_2d, "convolve(x, F): F as it is"),
        (bottom[3], correlated_2d, "correlate(x, F): F turned 180 degrees\n(what a CNN layer computes)"),
    ):
        axes.imshow(picture, cmap="Blues", vmin=0, vmax=1.2)
        axes.set_title(title, fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    save_figure(figure, args.out, "conv_vs_corr")
    save_results(
        args,
        "conv_vs_corr",
        signal=signal,
        ramp=ramp,
        image=image,
        kernel=LETTER_F,
        convolved_1d=convolved_1d,
        correlated_1d=correlated_1d,
        convolved_2d=convolved_2d,
        correlated_2d=correlated_2d,
        flipped=flipped,
        layer=layer,
    )


if __name__ == "__main__":
    main()
