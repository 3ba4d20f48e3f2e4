"""The convolution layer of a CNN, with every number shown: the classic animated demo, computed on the server.

A 5 x 5 x 3 input (zero-padded by 1 to 7 x 7 x 3), two 3 x 3 x 3 filters with a bias each, stride 2:
the output is 3 x 3 x 2. Each output number is the sum of a filter times the 3 x 3 x 3 window under it,
plus the bias (a cross-correlation, as in every deep-learning framework). ``client.conv_layer`` computes it
as ``torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)`` would.

Run a server (``convserve serve``), then ``python examples/cnn_layer.py``: it writes ``cnn_layer.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from _common import connect, parse_args, save_figure, save_results


def draw_numbers(axes: Axes, values: np.ndarray, left: float, top: float, colour: str, pad: int = 0) -> None:
    """Draw a 2-D array as a table of numbers with its top-left cell at (left, top); ``pad`` rim cells grey."""
    rows, columns = values.shape
    for i in range(rows):
        for j in range(columns):
            rim = i < pad or j < pad or i >= rows - pad or j >= columns - pad
            axes.add_patch(Rectangle((left + j, top + i), 1, 1, facecolor="#e6e6e6" if rim else colour, edgecolor="white"))
            axes.text(left + j + 0.5, top + i + 0.5, f"{values[i, j]:g}", ha="center", va="center", fontsize=9)


def outline(axes: Axes, left: float, top: float, size: int) -> None:
    """Draw a red square of ``size`` cells around the cells starting at (left, top)."""
    axes.add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="tab:red", linewidth=2.5))


def main() -> None:
    """Run the layer on the server and draw the input, the filters, the biases and the output as numbers."""
    args = parse_args(__doc__)
    rng = np.random.default_rng(231)  # small integers, as in the demo, so every sum can be checked by hand
    x = rng.integers(0, 3, (3, 5, 5)).astype(np.float64)  # (C_in, H, W)
    w = rng.integers(-1, 2, (2, 3, 3, 3)).astype(np.float64)  # (C_out, C_in, kH, kW): the filters w0 and w1
    b = np.array([1.0, 0.0])  # the biases b0 and b1
    with connect(args.target) as client:
        out = client.conv_layer(x, w, b, stride=2, padding=1)  # unbatched input, as torch accepts: (C_out, 3, 3)
    print(f"input {x.shape} (zero-padded to 3 x 7 x 7), filters {w.shape}, stride 2 -> output {out.shape}")
    print("output:", out.astype(int).tolist())

    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    i, j = 1, 2  # the output cell explained in the picture, for filter w0
    window = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
    per_channel = (window * w[0]).sum(axis=(1, 2))

    figure = Figure(figsize=(11, 9.4))
    axes = figure.add_axes((0, 0, 1, 1))
    for c in range(3):
        top = 1.5 + 8 * c
        axes.text(0, top - 0.3, f"x[{c}]  (input channel {c}, zero padding in grey)", fontsize=9)
        draw_numbers(axes, padded[c], 0, top, "#cfe2f3", pad=1)
        outline(axes, 2 * j, top + 2 * i, 3)
        for f, left in ((0, 9.5), (1, 14.5)):
            axes.text(left, 3.5 + 4 * c - 0.3, f"w{f}[{c}]", fontsize=9)
            draw_numbers(axes, w[f, c], left, 3.5 + 4 * c, "#f4cccc" if f == 0 else "#fce5cd")
        outline(axes, 9.5, 3.5 + 4 * c, 3)
    for f, left in ((0, 9.5), (1, 14.5)):
        axes.text(left, 0.2, f"filter w{f}  (3 x 3 x 3)", fontsize=10, weight="bold")
        axes.text(left, 15.7, f"bias b{f}", fontsize=9)
        draw_numbers(axes, b[f : f + 1, None], left, 16, "#d9ead3")
        axes.text(20, 3.5 + 5 * f - 0.3, f"output channel {f}", fontsize=9)
        draw_numbers(axes, out[f], 20, 3.5 + 5 * f, "#d9d2e9")
    outline(axes, 20 + j, 3.5 + i, 1)
    axes.text(0, 0.2, "input x  (3 x 5 x 5, pad 1)", fontsize=10, weight="bold")
    axes.text(20, 0.2, "output volume  (2 x 3 x 3)", fontsize=10, weight="bold")
    terms = " + ".join(f"({s:g})" for s in per_channel)
    axes.text(9.5, 19.5, f"stride 2: the window moves 2 cells at a time; (5 + 2 - 3) / 2 + 1 = 3.\nred: out[0, {i}, {j}] = sum(window * w0) + b0", fontsize=10)
    axes.text(9.5, 21, f"= {terms} + {b[0]:g} = {per_channel.sum() + b[0]:g}", fontsize=10, color="tab:red")
    axes.text(9.5, 22.8, "client.conv_layer(x, w, b, stride=2, padding=1)", fontsize=10, family="monospace")
    axes.set_xlim(-0.5, 24)
    axes.set_ylim(25, -1)  # rows go down, as in the arrays
    axes.set_aspect("equal")
    axes.set_axis_off()
    save_figure(figure, args.out, "cnn_layer")
    save_results(args, "cnn_layer", x=x, w=w, b=b, out=out)


if __name__ == "__main__":
    main()
