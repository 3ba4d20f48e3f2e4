"""Torch tensors through a real server: gradients refused loudly, tensors back, dtypes kept, against torch itself."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import convserve
from tests.conftest import RunningServer

torch = pytest.importorskip("torch")
import convserve.torch  # noqa: E402  (after the skip: the torch extra may be missing)
from convserve.errors import GradientNotComputedWarning  # noqa: E402

nn = torch.nn


@pytest.fixture()
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget that the once-per-process warning was given, for this test only."""
    monkeypatch.setattr(convserve.torch, "_warned", False)
    yield


def test_requires_grad_and_parameters_come_back_as_tensors_with_one_warning(client: convserve.Client, fresh_warning: None) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    with pytest.warns(GradientNotComputedWarning, match="input, weight, bias required grad") as caught:
        y = client.conv_layer(x, conv.weight, conv.bias, padding=1)
    assert len([w for w in caught if issubclass(w.category, GradientNotComputedWarning)]) == 1
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and not y.requires_grad and y.device == x.device
    with torch.no_grad():
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientNotComputedWarning)  # once per process: the second call is quiet
        again = client.conv_layer(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(again, y)


def test_the_warning_is_given_once_per_process(server: RunningServer) -> None:
    code = (
        "import warnings, torch, convserve, convserve.errors\n"
        "warnings.simplefilter('always')\n"
        f"c = convserve.Client({server.target!r})\n"
        "w = torch.nn.Parameter(torch.ones(2, 1, 3))\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        c.conv_layer(torch.ones(1, 1, 5), w)\n"
        "        c.conv_transpose(torch.ones(1, 2, 5, requires_grad=True), w)\n"
        "print(sum(issubclass(s.category, convserve.errors.GradientNotComputedWarning) for s in seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept_and_mixed_arguments(client: convserve.Client, dtype: torch.dtype, fresh_warning: None) -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(2, 3, 4, stride=2).to(dtype)
    x = torch.randn(3, 2, 17, dtype=dtype)
    y = client.conv_layer(x, conv.weight.detach().numpy(), None, stride=2)  # tensor input, numpy weight
    assert isinstance(y, torch.Tensor) and y.dtype == dtype
    with torch.no_grad():
        expected = nn.functional.conv1d(x, conv.weight, None, stride=2)
    torch.testing.assert_close(y, expected)
    with pytest.warns(GradientNotComputedWarning, match="weight, bias required grad"):
        as_numpy = client.conv_layer(x.numpy(), conv.weight, conv.bias, stride=2)  # numpy input, Parameter weight: numpy out
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == x.numpy().dtype
    with torch.no_grad():
        np.testing.assert_allclose(as_numpy, conv(x).numpy(), rtol=1e-5, atol=1e-5)
    result, info = client.conv_layer(x, conv.weight, conv.bias, stride=2, return_info=True)
    assert isinstance(result, torch.Tensor) and info.method


def test_non_contiguous_tensors_are_sent_by_value(client: convserve.Client) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 10, 3, 7).transpose(1, 2)  # (2, 3, 10, 7), a strided view
    w = torch.randn(5, 3, 2, 2)[:, :, :, :]
    w_view = torch.randn(2, 2, 3, 5).permute(3, 2, 0, 1)  # (5, 3, 2, 2), not contiguous
    assert not x.is_contiguous() and not w_view.is_contiguous()
    for weight in (w, w_view):
        torch.testing.assert_close(client.conv_layer(x, weight), nn.functional.conv2d(x, weight), rtol=1e-5, atol=1e-5)


def test_refusals_are_clear(client: convserve.Client) -> None:
    w = torch.ones(1, 1, 3)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(convserve.InvalidArgumentError, match=r"input: a torch\.(float16|bfloat16) tensor.*tensor\.float\(\)"):
            client.conv_layer(torch.ones(1, 1, 5, dtype=dtype), w)
        with pytest.raises(convserve.InvalidArgumentError, match="weight: a torch"):
            client.conv_transpose(torch.ones(1, 1, 5), w.to(dtype))
    with pytest.raises(convserve.InvalidArgumentError, match="meta"):
        client.conv_layer(torch.ones(1, 1, 5, device="meta"), w)
    with pytest.raises(convserve.InvalidArgumentError, match="to_dense"):
        client.conv_layer(torch.ones(1, 1, 5).to_sparse(), w)


def test_registered_parameters(client: convserve.Client, fresh_warning: None) -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3)
    with pytest.warns(GradientNotComputedWarning, match="weight, bias"):
        weights = client.register_weights(conv.weight, conv.bias)
    x = torch.randn(1, 2, 6, 6)
    y = client.conv_layer(x, weights)
    with torch.no_grad():
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


CONV_CASES = [
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=1, groups=2), (2, 4, 19)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", dilation=2, padding_mode="reflect"), (2, 2, 15)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=5, padding="valid", bias=False), (2, 17)),  # unbatched
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), padding_mode="circular"), (2, 3, 11, 9)),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4, padding_mode="replicate"), (1, 4, 10, 12)),
    (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=(2, 4), padding="same", padding_mode="zeros"), (1, 2, 8, 9)),
    (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1, padding_mode="reflect"), (1, 2, 7, 8, 6)),
]
TRANSPOSE_CASES = [
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 9)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), dilation=(2, 1)), (2, 3, 5, 6)),
    (nn.ConvTranspose3d, dict(in_channels=2, out_channels=2, kernel_size=2, stride=2, bias=False), (1, 2, 3, 4, 3)),
]


@pytest.mark.parametrize("kind,arguments,shape", CONV_CASES + TRANSPOSE_CASES, ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_forward_equals_the_module(client: convserve.Client, kind: type, arguments: dict[str, object], shape: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    module = kind(**arguments).double()
    x = torch.randn(*shape, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = convserve.torch.forward(client, module, x)
        with torch.no_grad():
            expected = module(x)  # torch warns about even kernels with padding="same"
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and not y.requires_grad and y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_transpose_output_size_as_torch(client: convserve.Client) -> None:
    torch.manual_seed(5)
    module = nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1)
    x = torch.randn(1, 2, 4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientNotComputedWarning)
        for size in ([10, 13], [12, 15], (1, 3, 11, 14)):
            with torch.no_grad():
                expected = module(x, output_size=size)
            torch.testing.assert_close(convserve.torch.forward(client, module, x, output_size=size), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=re.escape("valid sizes range from [10, 13] to [12, 15]")):
            convserve.torch.forward(client, module, x, output_size=[13, 13])
    with pytest.raises(ValueError, match=re.escape("valid sizes range from [10, 13] to [12, 15]")):
        module(x, output_size=[13, 13])  # torch's own message says the same


def test_forward_refuses_other_modules(client: convserve.Client) -> None:
    for module in (nn.Linear(3, 2), nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(1, 1, 1))):
        with pytest.raises(TypeError, match="nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d modules only"):
            convserve.torch.forward(client, module, torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="not initialised"):
        convserve.torch.forward(client, nn.LazyConv2d(2, 3), torch.ones(1, 1, 4, 4))
    transpose = nn.ConvTranspose1d(1, 1, 2)
    transpose.padding_mode = "reflect"  # torch refuses it at construction; a module changed later is refused too
    with pytest.raises(ValueError, match="Only 'zeros' padding mode"):
        convserve.torch.forward(client, transpose, torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match="output_size applies to ConvTranspose modules only"):
        convserve.torch.forward(client, nn.Conv1d(1, 1, 2), torch.ones(1, 1, 4), [3])


def test_forward_with_the_async_client(server: RunningServer) -> None:
    torch.manual_seed(6)
    conv = nn.Conv2d(1, 2, 3, padding="same", padding_mode="reflect")
    x = torch.randn(1, 1, 6, 7)

    async def run() -> torch.Tensor:
        async with convserve.AsyncClient(server.target) as aclient:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GradientNotComputedWarning)
                return await convserve.torch.forward(aclient, conv, x)

    y = asyncio.run(run())
    with torch.no_grad():
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_importing_convserve_torch_and_compat_does_not_import_torch() -> None:
    code = "import sys, convserve, convserve.torch, convserve.compat.signal, convserve.compat.ndimage; print('torch' in sys.modules, 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False False"
