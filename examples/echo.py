"""An echo is a convolution with a two-spike kernel: the sound itself, then a quieter copy later.

The sound is synthesised (three plucked notes), so nothing is downloaded. The kernel is 1 at time 0 and
``gain`` at ``delay`` seconds; convolving the sound with it adds the delayed, quieter copy.

Run a server (``convserve serve``), then ``python examples/echo.py``: it writes ``echo.png`` (the waveforms)
and ``echo.wav`` (the echoed sound, 16-bit PCM) to listen to.
"""

from __future__ import annotations

import numpy as np
import soundfile
from matplotlib.figure import Figure

from _common import connect, parse_args, save_figure, save_results


def plucked_notes(rate: int) -> np.ndarray:
    """Three decaying notes (A4, C#5, E5 with two overtones each), 1 second at ``rate`` samples a second."""
    t = np.arange(rate) / rate
    sound = np.zeros(rate)
    for start, frequency in ((0.0, 440.0), (0.25, 554.37), (0.5, 659.26)):
        since = t - start
        envelope = np.where(since >= 0, np.exp(-since.clip(0) * 9), 0.0)
        sound += envelope * sum(np.sin(2 * np.pi * frequency * n * since) / n**2 for n in (1, 2, 3))
    return sound / np.abs(sound).max() * 0.6


def main() -> None:
    """Convolve the notes with the echo kernel on the server; plot the waveforms and write the .wav."""
    args = parse_args(__doc__)
    rate = 8000 if args.small else 22050  # samples a second
    delay, gain = 0.35, 0.5  # the echo comes 350 ms later at half the amplitude
    sound = plucked_notes(rate)
    kernel = np.zeros(round(delay * rate) + 1)
    kernel[0], kernel[-1] = 1.0, gain  # the two spikes
    with connect(args.target) as client:
        echoed, info = client.convolve(sound, kernel, return_info=True)  # full mode: the echo's tail is kept
    print(f"{len(sound)} samples at {rate} Hz * a {len(kernel)}-sample kernel -> {len(echoed)} samples ({len(echoed) / rate:.2f} s) by {info.method}")
    wav = args.out / "echo.wav"
    soundfile.write(wav, echoed / np.abs(echoed).max() * 0.9, rate, subtype="PCM_16")  # scaled so that nothing clips
    print(f"wrote {wav}")

    figure = Figure(figsize=(10, 6))
    dry, spikes, wet = figure.subplots(3, 1, sharex=True)
    seconds = np.arange(len(echoed)) / rate
    dry.plot(seconds[: len(sound)], sound, color="tab:blue", linewidth=0.5)
    dry.set_title("the sound: three plucked notes", fontsize=10)
    spikes.vlines(np.flatnonzero(kernel) / rate, 0, kernel[kernel != 0], color="tab:red", linewidth=2)
    spikes.plot(np.flatnonzero(kernel) / rate, kernel[kernel != 0], "o", color="tab:red")
    spikes.set_ylim(0, 1.15)
    spikes.set_title(f"the kernel: 1 at 0 s and {gain} at {delay} s (zeros between)", fontsize=10)
    wet.plot(seconds, echoed, color="tab:purple", linewidth=0.5, label="convolve(sound, kernel)")
    echo_alone = echoed - np.concatenate([sound, np.zeros(len(kernel) - 1)])
    wet.plot(seconds, echo_alone, color="tab:orange", linewidth=0.5, alpha=0.8, label=f"of which the echo: {gain} x the sound, {delay} s later")
    wet.set_title(f"the sound with its echo, {len(echoed) / rate:.2f} s", fontsize=10)
    wet.legend(fontsize=8, loc="upper right", framealpha=0.9)
    wet.set_xlabel("time (s)")
    save_figure(figure, args.out, "echo")
    save_results(args, "echo", sound=sound, kernel=kernel, echoed=echoed, rate=rate)


if __name__ == "__main__":
    main()
