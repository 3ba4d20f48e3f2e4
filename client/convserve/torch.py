"""``convserve.torch``: torch tensors and ``nn.Conv*`` modules on the service.

Needs the ``torch`` extra (``pip install "convserve[torch]"``). Importing ``convserve`` or this
module never imports torch: tensors are recognised only when torch is already imported.

:meth:`convserve.Client.conv_layer`, :meth:`~convserve.Client.conv_transpose` and
:meth:`~convserve.Client.register_weights` (and their :class:`~convserve.AsyncClient` twins) take
torch tensors for ``input``, ``weight`` and ``bias``, each on its own (a numpy input with an
``nn.Parameter`` weight is fine). The rules:

- **Gradients.** A tensor that requires grad (an ``nn.Parameter``, an activation in a graph) is
  detached and sent. The server computes no gradient: the result has ``requires_grad=False`` and
  a :class:`~convserve.errors.GradientNotComputedWarning` says so, once per process.
- **Result type.** When ``input`` is a tensor, the result is a tensor on the input's device, of the
  server's result dtype (the input's, when input and weight share their dtype, as torch needs);
  otherwise a numpy array.
- **Devices.** A CUDA (or any non-CPU) tensor is copied to the CPU, sent, and the result moved back
  to the input's device. ``meta`` tensors hold no values and are refused.
- **Layouts.** Non-contiguous tensors are sent by value (one copy, as numpy makes); sparse and
  quantized tensors are refused (call ``.to_dense()`` / ``.dequantize()`` first).
- **Dtypes.** float32 and float64 go as they are. float16 and bfloat16 are refused with an
  :class:`~convserve.errors.InvalidArgumentError`: the server computes float32 and float64 only, and
  a silent conversion would change the precision of the result. Call ``.float()`` first.

:func:`forward` runs a whole ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` module.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from convserve._options import invalid
from convserve.errors import GradientNotComputedWarning

_warned = False
_warn_lock = threading.Lock()
Restore = Callable[[npt.NDArray[Any]], Any] | None  # turns a numpy result back into the input's kind (None: leave it numpy)


def _torch() -> Any:
    """The torch module, imported on first use (needs the torch extra)."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError('convserve.torch needs torch: pip install "convserve[torch]"') from exc


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``torch.Tensor`` (False without importing torch when torch is not imported yet)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def warn_no_gradient(fields: Sequence[str]) -> None:
    """Warn, once per process, that the server computes no gradient for these tensors."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    names = ", ".join(fields)
    level, frame = 1, sys._getframe(0)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] == "convserve":
        level, frame = level + 1, frame.f_back  # point at the caller's line, outside convserve
    warnings.warn(
        f"convserve: {names} required grad; the server computes no gradient, so the result has requires_grad=False and "
        "backward() will not reach these tensors through this call (warned once per process)",
        GradientNotComputedWarning,
        stacklevel=level,
    )


def to_numpy(value: Any, field: str, needs_grad: list[str]) -> Any:
    """A tensor's values as a numpy array (detached, on the CPU); anything else unchanged.

    Appends ``field`` to ``needs_grad`` when the tensor required grad.

    Raises
    ------
    InvalidArgumentError
        float16/bfloat16, sparse, quantized and meta tensors (each with what to do instead).
    """
    if not is_tensor(value):
        return value
    torch = sys.modules["torch"]
    if value.dtype in (torch.float16, torch.bfloat16):
        raise invalid(
            field,
            f"a {value.dtype} tensor: the server computes float32 and float64 only, and converting it silently would change "
            "the precision of the result; convert it first (tensor.float())",
        )
    if value.layout != torch.strided:
        raise invalid(field, f"a {value.layout} tensor; convert it first (tensor.to_dense())")
    if value.is_quantized:
        raise invalid(field, "a quantized tensor; convert it first (tensor.dequantize())")
    if value.device.type == "meta":
        raise invalid(field, "a tensor on the 'meta' device holds no values")
    if value.requires_grad:
        needs_grad.append(field)
    return value.detach().cpu().resolve_conj().resolve_neg().numpy()


def restorer(input: Any) -> Restore:
    """How the result goes back to the caller: a tensor on ``input``'s device when ``input`` is a tensor."""
    if not is_tensor(input):
        return None
    device = input.device

    def restore(result: npt.NDArray[Any]) -> Any:
        tensor = sys.modules["torch"].from_numpy(np.ascontiguousarray(result))  # shares the result's memory
        return tensor if device.type == "cpu" else tensor.to(device)

    return restore


def layer_arguments(input: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any, Restore]:
    """A layer call's tensors as numpy arrays, and how to give its result back (see the module's rules)."""
    if sys.modules.get("torch") is None:
        return input, weight, bias, None
    needs_grad: list[str] = []
    restore = restorer(input)
    converted = tuple(to_numpy(value, name, needs_grad) for value, name in ((input, "input"), (weight, "weight"), (bias, "bias")))
    if needs_grad:
        warn_no_gradient(needs_grad)
    return converted[0], converted[1], converted[2], restore


def forward(client: Any, module: Any, input: Any, output_size: Sequence[int] | None = None) -> Any:
    """Run an ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` module's forward on the server.

    The module's weight, bias, stride, padding (numbers, ``"same"`` or ``"valid"``), dilation,
    groups and padding_mode (``zeros``, ``reflect``, ``replicate``, ``circular``), and for a
    transpose its output_padding, are read from the module; its own ``forward`` and hooks do not run.

    Parameters
    ----------
    client : convserve.Client or convserve.AsyncClient
        The service. With an AsyncClient the call returns an awaitable.
    module : torch.nn.Module
        An initialised ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d`` (or a subclass).
    input : torch.Tensor or array_like
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``.
    output_size : sequence of int, optional
        Transposes only, as ``ConvTranspose2d.forward(input, output_size)``: the wanted spatial
        size (or ``(N, C, *spatial)``); it decides the output padding.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        As ``module(input)`` under ``torch.no_grad()``: a tensor when ``input`` is one (see the
        module's rules), ``requires_grad=False``.

    Raises
    ------
    TypeError
        ``module`` is not one of those convolution modules.
    ValueError
        An uninitialised lazy module, ``output_size`` on a ``ConvNd``, an ``output_size`` out of reach.

    Examples
    --------
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect")   # doctest: +SKIP
    >>> y = convserve.torch.forward(client, conv, torch.randn(1, 3, 32, 32))    # doctest: +SKIP
    """
    nn = _torch().nn
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        _initialised(module, nn)
        if module.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(module).__name__}; got {module.padding_mode!r}")
        output_padding = module.output_padding if output_size is None else transpose_output_padding(module, np.shape(input), output_size)
        return client.conv_transpose(input, module.weight, module.bias, module.stride, module.padding, output_padding, module.groups, module.dilation)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        _initialised(module, nn)
        if output_size is not None:
            raise ValueError(f"output_size applies to ConvTranspose modules only; got {type(module).__name__}")
        return client.conv_layer(input, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups, module.padding_mode)
    raise TypeError(
        f"convserve.torch.forward runs nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d modules only; got {type(module).__module__}.{type(module).__name__}"
    )


def _initialised(module: Any, nn: Any) -> None:
    """Refuse a lazy module whose parameters have no shape yet."""
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{type(module).__name__} is not initialised yet; run it once on an input locally (lazy modules learn in_channels then)")


def transpose_output_padding(module: Any, input_shape: Sequence[int], output_size: Sequence[int]) -> list[int]:
    """The output padding that gives ``output_size``, as ``ConvTransposeNd.forward(input, output_size)`` computes it."""
    k = len(module.kernel_size)
    size = [int(s) for s in output_size]
    if len(size) not in (k, k + 2):
        raise ValueError(f"{type(module).__name__}: output_size must have {k} or {k + 2} elements (got {len(size)})")
    size = size[-k:]
    spatial = [int(n) for n in input_shape[-k:]]
    smallest = [(spatial[d] - 1) * module.stride[d] - 2 * module.padding[d] + module.dilation[d] * (module.kernel_size[d] - 1) + 1 for d in range(k)]
    largest = [low + module.stride[d] - 1 for d, low in enumerate(smallest)]
    if any(not low <= n <= high for n, low, high in zip(size, smallest, largest)):
        raise ValueError(f"requested an output size of {size}, but valid sizes range from {smallest} to {largest} (for an input of {spatial})")
    padding = [n - low for n, low in zip(size, smallest)]
    return padding
