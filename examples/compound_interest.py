"""Compound interest as a convolution: yearly deposits convolved with the growth of one deposit.

A deposit of 1 grows to ``(1 + rate) ** k`` after ``k`` years. The balance after year ``n`` is the sum of every
deposit so far, each grown for the years since it was paid: ``sum_t deposits[t] * growth[n - t]``, the
convolution of the deposits with the growth. For equal deposits it matches the closed-form future value of
an annuity, ``deposit * ((1 + rate) ** years - 1) / rate``.

Run a server (``convserve serve``), then ``python examples/compound_interest.py``: it writes ``compound_interest.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from _common import connect, parse_args, save_figure, save_results


def main() -> None:
    """Compute the balance year by year on the server, check it against the closed form, and draw it."""
    args = parse_args(__doc__)
    years, rate, deposit = (10 if args.small else 30), 0.05, 1000.0
    deposits = np.full(years, deposit)  # paid at the end of years 1 .. years; any schedule works the same way
    growth = (1 + rate) ** np.arange(years)  # what 1 paid in is worth 0, 1, 2, ... years later
    with connect(args.target) as client:
        balance = client.convolve(deposits, growth)[:years]  # the balance at the end of years 1 .. years
    closed_form = deposit * ((1 + rate) ** np.arange(1, years + 1) - 1) / rate
    error = float(np.max(np.abs(balance - closed_form) / closed_form))
    print(f"{years} yearly deposits of {deposit:,.0f} at {rate:.0%}: {balance[-1]:,.2f} (closed form {closed_form[-1]:,.2f}, relative error {error:.1e})")

    figure = Figure(figsize=(11, 4))
    inputs, result = figure.subplots(1, 2, width_ratios=(1, 1.6))
    year = np.arange(1, years + 1)
    inputs.bar(year, deposits, color="tab:gray", label="deposits (paid once a year)")
    inputs.plot(year, deposit * growth, "o-", color="tab:green", label=f"one deposit, growing at {rate:.0%} a year")
    inputs.set_xlabel("year")
    inputs.set_title("the two inputs", fontsize=10)
    inputs.legend(fontsize=8, loc="upper left")
    # Each deposit's own growth curve, shifted to the year it was paid: their sum is the convolution.
    layers = np.zeros((years, years))
    for paid in range(years):
        layers[paid, paid:] = deposits[paid] * growth[: years - paid]
    result.stackplot(year, layers, colors=colormaps["viridis"](np.linspace(0, 1, years)), alpha=0.85)
    result.plot(year, closed_form, "k.", markersize=7, label="closed form: deposit * ((1 + r)^n - 1) / r")
    result.plot(year, np.cumsum(deposits), "--", color="tab:red", label="money paid in")
    result.set_xlabel("year")
    result.set_ylabel("balance")
    result.set_title(f"convolve(deposits, growth): {balance[-1]:,.0f} after {years} years (one colour per deposit)", fontsize=10)
    result.legend(fontsize=8, loc="upper left")
    save_figure(figure, args.out, "compound_interest")
    save_results(args, "compound_interest", deposits=deposits, growth=growth, balance=balance, closed_form=closed_form, rate=rate)


if __name__ == "__main__":
    main()
