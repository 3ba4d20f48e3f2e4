"""The sum of two dice, and of three: the distribution of a sum is the convolution of the distributions.

Run a server (``convserve serve``), then ``python examples/dice.py``: it writes ``dice.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from _common import connect, parse_args, save_figure, save_results


def main() -> None:
    """Convolve one die's distribution with itself, then once more, and draw both as bar charts."""
    args = parse_args(__doc__)
    die = np.full(6, 1 / 6)  # P(1) .. P(6)
    ways = np.ones(6, np.int64)  # one way to roll each face
    with connect(args.target) as client:
        two_dice = client.convolve(die, die)  # P(2) .. P(12)
        three_dice = client.convolve(two_dice, die)  # P(3) .. P(18)
        ways_two = client.convolve(ways, ways)  # integers stay exact: the number of ways to roll each sum
        ways_three = client.convolve(ways_two, ways)
    print(f"two dice: most likely sum {ways_two.argmax() + 2}, P = {two_dice.max():.4f} ({ways_two.max()}/36)")
    likeliest = np.flatnonzero(ways_three == ways_three.max()) + 3  # 10 and 11, a tie
    print(f"three dice: most likely sums {likeliest.tolist()}, P = {three_dice.max():.4f} ({ways_three.max()}/216)")

    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2, sharey=True)
    for axes, distribution, ways_to_roll, dice in ((left, two_dice, ways_two, 2), (right, three_dice, ways_three, 3)):
        sums = np.arange(dice, 6 * dice + 1)
        bars = axes.bar(sums, distribution, color="tab:blue" if dice == 2 else "tab:orange")
        axes.bar_label(bars, labels=[str(n) for n in ways_to_roll], fontsize=7, padding=1)
        axes.set_xticks(sums)
        axes.set_xlabel(f"sum of {dice} dice")
        call = "convolve(die, die)" if dice == 2 else "convolve(two_dice, die)"
        axes.set_title(f"{dice} dice: {call}; labels: ways out of {6**dice}", fontsize=10)
    left.set_ylabel("probability")
    save_figure(figure, args.out, "dice")
    save_results(args, "dice", die=die, two_dice=two_dice, three_dice=three_dice, ways_two=ways_two, ways_three=ways_three)


if __name__ == "__main__":
    main()
