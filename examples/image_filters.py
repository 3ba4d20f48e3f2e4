"""Box blur, Gaussian blur and Sobel edges of a photograph, each one 2-D convolution on the server.

The photograph is scikit-image's ``camera`` (512 x 512, 8-bit grey), which ships inside the scikit-image
package: nothing is downloaded.

Run a server (``convserve serve``), then ``python examples/image_filters.py``: it writes ``image_filters.png``.
"""

from __future__ import annotations

import numpy as np
import skimage.data
from matplotlib.figure import Figure

from _common import connect, parse_args, save_figure, save_results


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 2-D Gaussian of standard deviation ``sigma`` pixels, cut at 3 sigma."""
    t = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    g = np.exp(-(t**2) / (2 * sigma**2))
    return np.outer(g, g).astype(np.float32) / np.float32(np.outer(g, g).sum())


def main() -> None:
    """Filter the photograph four ways on the server and draw the results side by side."""
    args = parse_args(__doc__)
    image = skimage.data.camera().astype(np.float32) / 255  # (512, 512) in [0, 1]
    if args.small:
        image = np.ascontiguousarray(image[::4, ::4])  # (128, 128)
    box = np.full((9, 9), 1 / 81, np.float32)  # the mean of a 9 x 9 neighbourhood
    gaussian = gaussian_kernel(3.0)  # 19 x 19
    sobel_x = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)  # as a convolution kernel: d/dx, smoothed along y
    sobel_y = sobel_x.T.copy()
    with connect(args.target) as client:
        # mode="same" keeps the image's size; boundary="reflect" mirrors it at its edges (OpenCV's default border).
        boxed = client.convolve(image, box, mode="same", boundary="reflect")
        blurred = client.convolve(image, gaussian, mode="same", boundary="reflect")
        gx = client.convolve(image, sobel_x, mode="same", boundary="reflect")
        gy = client.convolve(image, sobel_y, mode="same", boundary="reflect")
    edges = np.hypot(gx, gy)  # the gradient's magnitude
    print(f"filtered a {image.shape[0]} x {image.shape[1]} photograph: box {box.shape}, Gaussian {gaussian.shape} (sigma 3), Sobel {sobel_x.shape}")
    row, column = (int(i) for i in np.unravel_index(edges.argmax(), edges.shape))
    print(f"strongest edge {edges.max():.2f} at row {row}, column {column}; the results are {boxed.dtype}, as the image")

    figure = Figure(figsize=(8, 8.3))
    panels = figure.subplots(2, 2)
    shown = ((image, "the photograph (skimage.data.camera)"), (boxed, "box blur: 9 x 9 mean"), (blurred, "Gaussian blur: sigma = 3 px"))
    for axes, (picture, title) in zip(panels.flat, shown):
        axes.imshow(picture, cmap="gray", vmin=0, vmax=1)
        axes.set_title(title, fontsize=10)
    panels[1, 1].imshow(edges, cmap="magma", vmin=0, vmax=float(np.percentile(edges, 99.5)))
    panels[1, 1].set_title("Sobel edges: hypot(gx, gy)", fontsize=10)
    for axes in panels.flat:
        axes.set_axis_off()
    save_figure(figure, args.out, "image_filters")
    save_results(args, "image_filters", image=image, box=box, gaussian=gaussian, sobel_x=sobel_x, boxed=boxed, blurred=blurred, gx=gx, gy=gy)


if __name__ == "__main__":
    main()
