"""The ONNX model of one ConvLayer call, encoded by hand as protobuf bytes.

:func:`conv_model_bytes` writes ``y = [Pool]([Relu](Conv(x, weight, bias)))`` as a serialized
``ModelProto`` (one to three nodes, or a ``Conv`` per group between ``Split`` and ``Concat``; the
weights as initializers), so the server needs the
``onnxruntime`` package only, not ``onnx`` (31 MB). The ``onnxruntime`` path
(:mod:`convserve_server.engine.layers.onnx`) makes its sessions from these bytes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine.layers.pooling import PoolSpec

# ONNX enums (onnx.proto): TensorProto.DataType and AttributeProto.AttributeType.
_FLOAT = 1
_ATTR_INT = 2
_ATTR_INTS = 7
_IR_VERSION = 8
_OPSET = 17


def _varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _attr_ints(name: str, values: tuple[int, ...] | list[int]) -> bytes:
    """An ``AttributeProto`` of type INTS."""
    body = _field_bytes(1, name) + b"".join(_field_varint(8, v) for v in values) + _field_varint(20, _ATTR_INTS)
    return body


def _attr_int(name: str, value: int) -> bytes:
    """An ``AttributeProto`` of type INT."""
    return _field_bytes(1, name) + _field_varint(3, value) + _field_varint(20, _ATTR_INT)


def _tensor(name: str, array: NDArray[np.float32]) -> bytes:
    """A float32 ``TensorProto`` with raw little-endian data."""
    dims = b"".join(_field_varint(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return dims + _field_varint(2, _FLOAT) + _field_bytes(8, name) + _field_bytes(9, raw)


def _value_info(name: str, shape: tuple[int | str, ...]) -> bytes:
    """A float32 ``ValueInfoProto``: ints are fixed sizes, strings symbolic ones."""
    dims = b"".join(_field_bytes(1, _field_bytes(2, d) if isinstance(d, str) else _field_varint(1, d)) for d in shape)
    tensor_type = _field_varint(1, _FLOAT) + _field_bytes(2, dims)
    return _field_bytes(1, name) + _field_bytes(2, _field_bytes(1, tensor_type))


def _node(op_type: str, inputs: list[str], outputs: list[str], attributes: list[bytes]) -> bytes:
    """A ``NodeProto``."""
    body = b"".join(_field_bytes(1, i) for i in inputs) + b"".join(_field_bytes(2, o) for o in outputs)
    body += _field_bytes(3, f"{op_type.lower()}_{outputs[0]}") + _field_bytes(4, op_type)
    return body + b"".join(_field_bytes(5, a) for a in attributes)


def conv_model_bytes(
    input_shape: tuple[int, ...],
    weight: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
    groups: int,
    relu: bool,
    pool: PoolSpec | None = None,
    split_groups: bool = False,
) -> bytes:
    """Encode an ONNX model ``y = [Pool]([Relu](Conv(x, weight, bias)))`` as protobuf bytes.

    Parameters
    ----------
    input_shape : tuple of int
        ``(N, C_in, *spatial)``; the batch size ``N`` is left symbolic (one session serves
        every batch size), the rest is fixed.
    weight, bias : ndarray
        float32 ``(C_out, C_in / groups, *kernel)`` and ``(C_out,)`` or None.
    strides, dilations : tuple of int
        Per spatial dimension.
    pads : list of (int, int)
        Zero padding (before, after) per spatial dimension.
    groups : int
        Channel groups.
    relu : bool
        Append a ``Relu`` (ONNX Runtime fuses it into the convolution).
    pool : PoolSpec, optional
        Append a ``MaxPool`` or ``AveragePool`` (``count_include_pad=1``, floor mode) with
        torch's default semantics: max ignores the padding, average counts it as zeros.
    split_groups : bool
        Write a grouped convolution as ``Split`` -> one dense ``Conv`` per group -> ``Concat``
        (MLAS then runs each group in its dense kernels; see
        :func:`convserve_server.engine.layers.onnx.split_groups`).

    Returns
    -------
    bytes
        A serialized ``ModelProto`` (IR version 8, opset 17) with input ``x`` and output ``y``.
    """
    assert len(pads) == len(strides)
    split = split_groups and groups > 1
    attributes = [
        _attr_ints("kernel_shape", list(weight.shape[2:])),
        _attr_ints("strides", list(strides)),
        _attr_ints("dilations", list(dilations)),
        _attr_ints("pads", [b for b, _ in pads] + [a for _, a in pads]),
        _attr_int("group", 1 if split else groups),
    ]
    names = ["c"] + (["r"] if relu else []) + (["p"] if pool is not None else [])
    names[-1] = "y"
    graph = _conv_nodes(attributes, groups if split else 1, bias is not None, relu, names[1 if relu else 0])
    if pool is not None:
        graph += _field_bytes(1, _pool_node(pool, names[-2]))
    graph += _field_bytes(2, "convserve_conv_layer")
    graph += _initializers(weight, bias, groups if split else 1)
    graph += _field_bytes(11, _value_info("x", ("N",) + tuple(input_shape[1:])))
    out_spatial = conv_out_spatial(input_shape, weight.shape, strides, pads, dilations)
    if pool is not None:
        out_spatial = pool.output_shape
    graph += _field_bytes(12, _value_info("y", ("N", weight.shape[0]) + out_spatial))
    opset = _field_bytes(1, "") + _field_varint(2, _OPSET)
    return _field_varint(1, _IR_VERSION) + _field_bytes(2, "convserve") + _field_bytes(7, graph) + _field_bytes(8, opset)


def _conv_nodes(attributes: list[bytes], parts: int, bias: bool, relu: bool, output: str) -> bytes:
    """The graph's ``Conv`` (+ ``Relu``) nodes from ``x`` to ``output``: one ``Conv``, or ``Split`` -> a ``Conv`` per part -> ``Concat``.

    Each part's ``Relu`` follows its ``Conv`` directly, so ONNX Runtime fuses the two.
    """
    if parts == 1:
        graph = _field_bytes(1, _node("Conv", ["x", "w"] + (["b"] if bias else []), ["c" if relu else output], attributes))
        return graph + (_field_bytes(1, _node("Relu", ["c"], [output], [])) if relu else b"")
    names = [f"x{g}" for g in range(parts)]
    graph = _field_bytes(1, _node("Split", ["x"], names, [_attr_int("axis", 1)]))
    for g in range(parts):
        graph += _field_bytes(1, _node("Conv", [names[g], f"w{g}"] + ([f"b{g}"] if bias else []), [f"c{g}"], attributes))
        if relu:
            graph += _field_bytes(1, _node("Relu", [f"c{g}"], [f"r{g}"], []))
    stage = "r" if relu else "c"
    return graph + _field_bytes(1, _node("Concat", [f"{stage}{g}" for g in range(parts)], [output], [_attr_int("axis", 1)]))


def _pool_node(pool: PoolSpec, source: str) -> bytes:
    """A ``MaxPool`` or ``AveragePool`` node from ``source`` to ``y`` (torch's defaults: floor mode, average counting the padding)."""
    attributes = [
        _attr_ints("kernel_shape", list(pool.kernel_size)),
        _attr_ints("strides", list(pool.stride)),
        _attr_ints("pads", list(pool.padding) * 2),
    ]
    if pool.kind == "avg":
        attributes.append(_attr_int("count_include_pad", 1))
    return _node("MaxPool" if pool.kind == "max" else "AveragePool", [source], ["y"], attributes)


def _initializers(weight: NDArray[np.float32], bias: NDArray[np.float32] | None, parts: int) -> bytes:
    """The weights (and bias) as initializers: ``w``/``b``, or ``w0``/``b0``... one per part of the output channels."""
    if parts == 1:
        return _field_bytes(5, _tensor("w", weight)) + (_field_bytes(5, _tensor("b", bias)) if bias is not None else b"")
    per = weight.shape[0] // parts
    out = b""
    for g in range(parts):
        out += _field_bytes(5, _tensor(f"w{g}", weight[g * per : (g + 1) * per]))
        if bias is not None:
            out += _field_bytes(5, _tensor(f"b{g}", bias[g * per : (g + 1) * per]))
    return out


def conv_out_spatial(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
) -> tuple[int, ...]:
    """The convolution's output spatial shape (torch's / ONNX's floor rule)."""
    return tuple((size + b + a - (d * (k - 1) + 1)) // s + 1 for size, (b, a), d, k, s in zip(input_shape[2:], pads, dilations, weight_shape[2:], strides))
