"""The client-side parts of ``convserve.torch`` (no server): tensor conversion rules and ConvTranspose's output_size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import convserve

torch = pytest.importorskip("torch")
import convserve.torch  # noqa: E402


def test_numpy_arguments_pass_unchanged() -> None:
    x, w = np.ones((1, 1, 4)), np.ones((1, 1, 2))
    got = convserve.torch.layer_arguments(x, w, None)
    assert got[0] is x and got[1] is w and got[2] is None and got[3] is None


def test_tensors_become_detached_numpy_and_the_result_a_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convserve.torch, "_warned", False)
    x = torch.arange(6.0, dtype=torch.float64).reshape(1, 2, 3).requires_grad_()
    w = torch.nn.Parameter(torch.ones(1, 2, 2))
    with pytest.warns(convserve.errors.GradientNotComputedWarning, match="input, weight required grad"):
        array, weight, bias, restore = convserve.torch.layer_arguments(x, w, None)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64 and isinstance(weight, np.ndarray) and bias is None
    np.testing.assert_array_equal(array, x.detach().numpy())
    assert restore is not None
    back = restore(np.zeros((1, 1, 2)))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float64 and not back.requires_grad and back.device == x.device


def test_conjugate_and_negative_views_are_resolved() -> None:
    x = torch.randn(2, 3)
    np.testing.assert_array_equal(convserve.torch.to_numpy(torch.neg(x.t()), "input", []), -x.t().numpy())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_refusals_name_the_field_and_the_fix() -> None:
    cases = [
        (torch.ones(2, dtype=torch.float16), "tensor.float()"),
        (torch.ones(2, dtype=torch.bfloat16), "precision"),
        (torch.ones(2).to_sparse(), "to_dense"),
        (torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8), "dequantize"),
        (torch.ones(2, device="meta"), "meta"),
    ]
    for tensor, hint in cases:
        with pytest.raises(convserve.InvalidArgumentError, match="weight: ") as caught:
            convserve.torch.to_numpy(tensor, "weight", [])
        assert hint in str(caught.value)


@pytest.mark.parametrize("kind", ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"])
def test_output_padding_from_output_size_equals_torchs(kind: str) -> None:
    k = int(kind[-2])
    for stride, padding, dilation, kernel in itertools.product([1, 2, 3], [0, 1], [1, 2], [2, 3]):
        module = getattr(torch.nn, kind)(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
        x = torch.ones((1, 1) + (5,) * k)
        smallest = (5 - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
        for extra in range(stride):
            size = [smallest + extra] * k
            ours = convserve.torch.transpose_output_padding(module, x.shape, size)
            theirs = module._output_padding(x, size, module.stride, module.padding, module.kernel_size, k, module.dilation)
            assert ours == list(theirs)
        with pytest.raises(ValueError, match="valid sizes range"):
            convserve.torch.transpose_output_padding(module, x.shape, [smallest + stride] * k)
    with pytest.raises(ValueError, match="must have"):
        convserve.torch.transpose_output_padding(getattr(torch.nn, kind)(1, 1, 2), (1, 1) + (4,) * k, [3] * (k + 1))
