"""The ``onnxruntime`` ConvLayer path: one ONNX ``Conv`` (+ ``Relu``) run by ONNX Runtime's CPU kernels.

ONNX Runtime's CPU execution provider runs ``Conv`` on MLAS, a hand-tuned GEMM / depthwise /
pointwise kernel library that pre-packs the weights once per session and fuses the bias and
the ReLU into the kernel's epilogue. Measured here it matches or beats torch's CPU convolution
on every benchmark layer (see ``docs/conv_layer.md``), so it is the float32 workhorse.

The model is tiny (one or two nodes, the weights as an initializer) and is encoded here by
hand as protobuf bytes (:func:`conv_model_bytes`), so the server needs ``onnxruntime`` only,
not the ``onnx`` package. A session is specialised to one input shape (but any batch size), one set of
options and one thread count; sessions are kept in the weights' ``prepared`` store (the registered
weights' one, or :mod:`.layer_cache`'s for inline weights).

ONNX Runtime is optional: :func:`available` says whether it imports, and the policy falls
back to the numpy paths without it. It runs float32 only (its CPU ``Conv`` has no float64).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import cancellation, resources
from convserve_server.engine.layers import prepared as layer_cache, pooling_taps as layer_pool
from convserve_server.engine.layers.pooling import PoolSpec

try:  # optional: the numpy paths serve without it
    import onnxruntime as _ort
    from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    _ort = None
    _ort_state = None

_ERROR_NAMES = (
    "Fail",
    "InvalidArgument",
    "InvalidGraph",
    "InvalidProtobuf",
    "NoModel",
    "NoSuchFile",
    "NotImplemented",
    "RuntimeException",
    "EPFail",
    "ModelLoaded",
)
# What a failed session creation or run raises; the caller falls back to numpy on these.
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,) + tuple(
    getattr(_ort_state, name) for name in _ERROR_NAMES if isinstance(getattr(_ort_state, name, None), type)
)

# os.cpu_count() reads /sys on every call (7 us here): read it once.
_CPUS = os.cpu_count() or 1

# ONNX enums (onnx.proto): TensorProto.DataType and AttributeProto.AttributeType.
_FLOAT = 1
_ATTR_INT = 2
_ATTR_INTS = 7
_IR_VERSION = 8
_OPSET = 17


def available() -> bool:
    """Return True when ``onnxruntime`` imports and is not disabled.

    ``CONVSERVE_LAYER_ONNXRUNTIME=0`` disables the path (the numpy paths then serve).
    """
    return _ort is not None and os.environ.get("CONVSERVE_LAYER_ONNXRUNTIME", "1") not in ("0", "false", "no")


# --------------------------------------------------------------------------- protobuf encoding


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
    body += _field_bytes(3, op_type.lower()) + _field_bytes(4, op_type)
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

    Returns
    -------
    bytes
        A serialized ``ModelProto`` (IR version 8, opset 17) with input ``x`` and output ``y``.
    """
    nd = len(strides)
    attributes = [
        _attr_ints("kernel_shape", list(weight.shape[2:])),
        _attr_ints("strides", list(strides)),
        _attr_ints("dilations", list(dilations)),
        _attr_ints("pads", [b for b, _ in pads] + [a for _, a in pads]),
        _attr_int("group", groups),
    ]
    assert len(pads) == nd
    conv_inputs = ["x", "w"] + (["b"] if bias is not None else [])
    names = ["c"] + (["r"] if relu else []) + (["p"] if pool is not None else [])
    names[-1] = "y"
    graph = _field_bytes(1, _node("Conv", conv_inputs, [names[0]], attributes))
    if relu:
        graph += _field_bytes(1, _node("Relu", [names[0]], [names[1]], []))
    if pool is not None:
        pool_attributes = [
            _attr_ints("kernel_shape", list(pool.kernel_size)),
            _attr_ints("strides", list(pool.stride)),
            _attr_ints("pads", list(pool.padding) * 2),
        ]
        if pool.kind == "avg":
            pool_attributes.append(_attr_int("count_include_pad", 1))
        op = "MaxPool" if pool.kind == "max" else "AveragePool"
        graph += _field_bytes(1, _node(op, [names[-2]], ["y"], pool_attributes))
    graph += _field_bytes(2, "convserve_conv_layer")
    graph += _field_bytes(5, _tensor("w", weight))
    if bias is not None:
        graph += _field_bytes(5, _tensor("b", bias))
    graph += _field_bytes(11, _value_info("x", ("N",) + tuple(input_shape[1:])))
    out_spatial = _conv_out_spatial(input_shape, weight.shape, strides, pads, dilations)
    if pool is not None:
        out_spatial = pool.output_shape
    graph += _field_bytes(12, _value_info("y", ("N", weight.shape[0]) + out_spatial))
    opset = _field_bytes(1, "") + _field_varint(2, _OPSET)
    return _field_varint(1, _IR_VERSION) + _field_bytes(2, "convserve") + _field_bytes(7, graph) + _field_bytes(8, opset)


# --------------------------------------------------------------------------- sessions


def _new_session(model: bytes, threads: int) -> Any:
    """An ``InferenceSession`` for ``model`` on ``threads`` intra-op threads."""
    assert _ort is not None
    options = _ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = _ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers wait for the next parallel section without sleeping. Measured on the
    # benchmark layers with 2 threads: without spinning ONNX Runtime runs at its 1-thread speed
    # (0.9-1.5x torch); with it 0.15-0.9x torch. ``CONVSERVE_LAYER_ORT_SPIN=0`` turns it off
    # (for hosts where the cores are shared with other busy processes).
    spin = os.environ.get("CONVSERVE_LAYER_ORT_SPIN", "1") not in ("0", "false", "no")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return _ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
    groups: int,
    relu: bool,
    prepared: MutableMapping[Any, Any],
    pool: PoolSpec | None = None,
) -> NDArray[np.float32]:
    """Run the convolution (+ bias, + ReLU, + pooling) with ONNX Runtime.

    Parameters
    ----------
    x : ndarray
        float32 ``(N, C_in, *spatial)``, already padded for non-zero padding modes.
    weight, bias, strides, pads, dilations, groups, relu, pool
        As :func:`conv_model_bytes`.
    prepared : MutableMapping
        The per-weights store; the session is kept there under
        ``("onnxruntime", shape without batch, options, bias digest, threads)``.

    Returns
    -------
    ndarray
        float32 ``(N, C_out, *out_spatial)``.
    """
    threads = resources.thread_limit(_CPUS)
    if cancellation.current() is None:  # library use: one run of the whole layer
        return _run_part(x, weight, bias, strides, pads, dilations, groups, relu, prepared, pool, threads, None)
    # Served: ORT checks its terminate flag only between the graph's nodes, so the layer runs in
    # pieces of about CHUNK_MACS multiply-adds (batch slices of one session; within one sample,
    # slices of output rows, or of output channels when there is one row), with a cancellation
    # check between pieces and the watcher terminating the running piece's Relu/Pool nodes.
    c_out = weight.shape[0]
    conv_spatial = _conv_out_spatial(tuple(x.shape), weight.shape, strides, pads, dilations)
    out_spatial = pool.output_shape if pool is not None else conv_spatial
    per_sample = c_out * math.prod(conv_spatial) * math.prod(weight.shape[1:])
    batch = max(1, min(x.shape[0], CHUNK_MACS // max(1, per_sample)))
    units = groups if groups > 1 else c_out  # a piece takes whole groups (or any channels if one group)
    parts = max(1, min(units, -(-per_sample // CHUNK_MACS)))
    bounds = [units * i // parts for i in range(parts + 1)]
    per_unit = c_out // units
    if parts > 1 and conv_spatial[0] > 1:  # row pieces of one session (a pool then runs on the whole)
        conv = np.empty((x.shape[0], c_out) + tuple(conv_spatial), dtype=np.float32)
        _run_rows(x, weight, bias, strides, pads, dilations, groups, relu, prepared, threads, batch, min(conv_spatial[0], parts), conv)
        return conv if pool is None else layer_pool.pool(conv, pool)
    out = np.empty((x.shape[0], c_out) + tuple(out_spatial), dtype=np.float32)
    for first in range(0, x.shape[0], batch):
        xs = x[first : first + batch]
        for lo, hi in itertools.pairwise(bounds):
            cancellation.check()
            rows = slice(lo * per_unit, hi * per_unit)
            xg = xs if groups == 1 else xs[:, lo * (x.shape[1] // groups) : hi * (x.shape[1] // groups)]
            w_part = weight if parts == 1 else weight[rows]
            b_part = None if bias is None else (bias if parts == 1 else bias[rows])
            out[first : first + batch, rows] = _run_part(
                xg,
                w_part,
                b_part,
                strides,
                pads,
                dilations,
                groups if groups == 1 else hi - lo,
                relu,
                prepared,
                pool,
                threads,
                None if parts == 1 else (lo, hi),
            )
    cancellation.check()
    return out


def _run_rows(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
    groups: int,
    relu: bool,
    prepared: MutableMapping[Any, Any],
    threads: int,
    batch: int,
    pieces: int,
    out: NDArray[np.float32],
) -> None:
    """Fill ``out`` in ``pieces`` slices of output rows (the first spatial axis), all of one shape
    so that one session runs them all (sessions' spinning workers would compete): the rows'
    padding is applied to the input once, and the last slice overlaps the one before it."""
    rows_out = out.shape[2]
    stride, dilation, (top, bottom) = strides[0], dilations[0], pads[0]
    if top or bottom:
        x = np.pad(x, [(0, 0), (0, 0), (top, bottom)] + [(0, 0)] * (x.ndim - 3))
    reach = dilation * (weight.shape[2] - 1) + 1
    size = -(-rows_out // pieces)
    piece_pads = [(0, 0)] + list(pads[1:])
    for first in range(0, x.shape[0], batch):
        for r0 in range(0, rows_out, size):
            cancellation.check()
            r0 = min(r0, rows_out - size)
            piece = x[first : first + batch, :, r0 * stride : (r0 + size - 1) * stride + reach]
            out[first : first + batch, :, r0 : r0 + size] = _run_part(
                piece, weight, bias, strides, piece_pads, dilations, groups, relu, prepared, None, threads, None
            )
    cancellation.check()


# Multiply-adds of one ORT run when served (about 0.1-0.5 s on one core of the project's machines).
CHUNK_MACS = 2_000_000_000


def _run_part(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
    groups: int,
    relu: bool,
    prepared: MutableMapping[Any, Any],
    pool: PoolSpec | None,
    threads: int,
    part: tuple[int, int] | None,
) -> NDArray[np.float32]:
    """One ORT run (the session cached in ``prepared``; ``part``: the channel or group slice of the
    weights it holds), terminated if the request is cancelled."""
    pool_key = None if pool is None else (pool.kind, pool.kernel_size, pool.stride, pool.padding)
    key = ("onnxruntime", tuple(x.shape[1:]), strides, tuple(pads), dilations, groups, relu, pool_key, layer_cache.digest(bias), threads) + (
        () if part is None else ("part",) + part
    )
    session = prepared.get(key)
    if session is None:
        model = conv_model_bytes(tuple(x.shape), np.ascontiguousarray(weight), bias, strides, pads, dilations, groups, relu, pool)
        session = _new_session(model, threads)
        prepared[key] = session
    feed = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if cancellation.current() is None:
        result: NDArray[np.float32] = session.run(None, feed)[0]
        return result
    options = _ort.RunOptions()

    def terminate() -> None:
        options.terminate = True

    try:
        with cancellation.on_cancel(terminate):
            result = session.run(None, feed, options)[0]
    except Exception:
        cancellation.check()  # a terminated run is Cancelled, not an engine failure
        raise
    return result


def _conv_out_spatial(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    strides: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilations: tuple[int, ...],
) -> tuple[int, ...]:
    """The convolution's output spatial shape (torch's / ONNX's floor rule)."""
    return tuple((size + b + a - (d * (k - 1) + 1)) // s + 1 for size, (b, a), d, k, s in zip(input_shape[2:], pads, dilations, weight_shape[2:], strides))
