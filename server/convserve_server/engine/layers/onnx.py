"""The ``onnxruntime`` ConvLayer path: one ONNX ``Conv`` (+ ``Relu``) run by ONNX Runtime's CPU kernels.

ONNX Runtime's CPU execution provider runs ``Conv`` on MLAS, a hand-tuned GEMM / depthwise /
pointwise kernel library that pre-packs the weights once per session and fuses the bias and
the ReLU into the kernel's epilogue. Measured here it matches or beats torch's CPU convolution
on every benchmark layer (see ``docs/conv_layer.md``), so it is the float32 workhorse.

The model is tiny (one or two nodes, the weights as an initializer) and is encoded by hand as
protobuf bytes (:func:`~convserve_server.engine.layers.onnx_model.conv_model_bytes`), so the
server needs ``onnxruntime`` only, not the ``onnx`` package. A session is specialised to one
input shape (but any batch size) and one set of options; sessions are kept in the weights'
``prepared`` store (the registered weights' one, or
:mod:`convserve_server.engine.layers.prepared`'s for inline weights). All sessions of the
process share one ONNX Runtime thread pool (:func:`global_pools`), so one layer's spinning
workers never compete with the next layer's.

ONNX Runtime is optional: :func:`available` says whether it imports, and the policy falls
back to the numpy paths without it. It runs float32 only (its CPU ``Conv`` has no float64).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convserve_server.engine import cancellation, config, resources
from convserve_server.engine.layers import pooling_taps
from convserve_server.engine.layers.onnx_model import conv_model_bytes, conv_out_spatial
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

# The cores this process may run on, read once by the engine (affinity, not the machine's count).
_CPUS = resources.CORES


def available() -> bool:
    """Return True when ``onnxruntime`` imports and is not disabled.

    The engine configuration's ``layer_onnxruntime = False`` disables the path (the numpy paths
    then serve).
    """
    return _ort is not None and config.current().layer_onnxruntime


# --------------------------------------------------------------------------- sessions


# Whether this process's sessions share ONNX Runtime's global thread pools: decided once, when the
# first session is made (the pools must exist before ONNX Runtime's environment does).
_GLOBAL_POOLS: bool | None = None
_GLOBAL_LOCK = threading.Lock()


def global_pools() -> bool:
    """Whether sessions run on one process-wide ONNX Runtime thread pool (set up on first use).

    Each session otherwise owns a pool whose workers spin for a while after every run, so the
    next layer's session (another pool) competes with them for the cores. Measured with 2
    threads, a chain of six N8 C32 28x28 3x3 layers (six sessions) took 26-80 ms (median)
    with a pool per session against 4.3-4.5 ms with the shared pool; one layer alone ran at the
    same speed either way (0.62 against 0.66 ms). The shared pool spins (its workers wait for
    the next parallel section without sleeping), so it is used when the configuration's
    ``layer_ort_spin`` is on when the process makes its first session; otherwise every session
    gets its own non-spinning pool. The choice holds for the process (ONNX Runtime refuses
    sessions with their own pools once the shared one exists).
    """
    global _GLOBAL_POOLS
    with _GLOBAL_LOCK:
        if _GLOBAL_POOLS is None:
            _GLOBAL_POOLS = False
            if _ort is not None and config.current().layer_ort_spin:
                try:
                    _ort_state.set_global_thread_pool_sizes(_CPUS, 1)
                    _GLOBAL_POOLS = True
                except Exception:  # pragma: no cover - an ONNX Runtime without global pools
                    pass
        return _GLOBAL_POOLS


def session_threads(threads: int) -> int:
    """The thread count a session for a request's share of ``threads`` is keyed by (0: the shared pool)."""
    return 0 if global_pools() else threads


def _new_session(model: bytes, threads: int) -> Any:
    """An ``InferenceSession`` for ``model``: on the shared pool (``threads == 0``) or on its own pool of ``threads`` intra-op threads."""
    assert _ort is not None
    options = _ort.SessionOptions()
    if threads == 0:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning workers wait for the next parallel section without sleeping. Measured on the
        # benchmark layers with 2 threads: without spinning ONNX Runtime runs at its 1-thread speed
        # (0.9-1.5x torch); with it 0.15-0.9x torch. The configuration's ``layer_ort_spin = False``
        # turns it off (for hosts where the cores are shared with other busy processes).
        spin = config.current().layer_ort_spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.execution_mode = _ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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
        As :func:`~convserve_server.engine.layers.onnx_model.conv_model_bytes`.
    prepared : MutableMapping
        The per-weights store; the session is kept there under
        ``("onnxruntime", shape without batch, options, bias bytes, threads)``.

    Returns
    -------
    ndarray
        float32 ``(N, C_out, *out_spatial)``.
    """
    if len(strides) == 1 and lift_1d(x.shape[1], weight.shape[0]):  # MLAS's 2-D kernels, on one row
        if pool is not None:
            pool = PoolSpec(pool.kind, (1,) + pool.kernel_size, (1,) + pool.stride, (0,) + pool.padding, (1,) + pool.output_shape)
        lifted = run(x[:, :, np.newaxis], weight[:, :, np.newaxis], bias, (1,) + strides, [(0, 0)] + pads, (1,) + dilations, groups, relu, prepared, pool)
        return lifted.reshape(lifted.shape[:2] + lifted.shape[3:])
    threads = session_threads(resources.thread_limit(_CPUS))
    if cancellation.current() is None:  # library use: one run of the whole layer
        return _run_part(x, weight, bias, strides, pads, dilations, groups, relu, prepared, pool, threads, None)
    # Served: ORT checks its terminate flag only between the graph's nodes, so the layer runs in
    # pieces of about CHUNK_MACS multiply-adds (batch slices of one session; within one sample,
    # slices of output rows, or of output channels when there is one row), with a cancellation
    # check between pieces and the watcher terminating the running piece's Relu/Pool nodes.
    c_out = weight.shape[0]
    conv_spatial = conv_out_spatial(tuple(x.shape), weight.shape, strides, pads, dilations)
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
        return conv if pool is None else pooling_taps.pool(conv, pool)
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


def lift_1d(c_in: int, c_out: int) -> bool:
    """Whether a 1-D layer of ``c_in`` input and ``c_out`` output channels runs as a 2-D layer of height 1.

    MLAS runs 1-D convolutions through im2col and a GEMM, and 2-D ones in its blocked-channel,
    depthwise and first-layer kernels. Measured side by side (2 threads, medians of 21 interleaved
    rounds), 1-D as 1-D against as 2-D: C256 1166 K64 6 s2 g4 0.44 against 0.21 ms (torch 0.22);
    N32 C64 42 K128 3 s2 d2 0.30 against 0.17 (torch 0.14); C3 9100 K16 15 s2 0.17 against
    0.08; N8 C64 19179 depthwise 11: 11.1 against 6.9; level on grouped layers with 2 channels
    per group. Single-channel inputs with many filters are the exception, where im2col's GEMM is
    one large product: C1 65536 K256 2 d3 5.5 against 7.1, C1 3468 K64 14 s2 1.09 against 1.15.
    """
    return not (c_in == 1 and c_out >= 64)


def split_groups(groups: int, weight_shape: tuple[int, ...]) -> bool:
    """Whether a grouped 2-D layer runs as one dense ``Conv`` per group (``Split`` -> ``Conv`` x groups -> ``Concat``).

    MLAS's blocked-channel kernels serve dense and depthwise layers only; a grouped layer runs
    through im2col and a GEMM per group. With kernels of 6x6 and up, dense convolutions per
    group were faster, measured side by side in ONNX Runtime (2 threads, medians of 15
    interleaved rounds): C16 36x36 K32 10x10 g2 0.63 against 0.48 ms (torch 0.41); C32 168x168
    K16 6x6 s3 g2 1.83 against 0.64 ms (torch 0.56); N2 C16 18x18 K256 7x7 g4 0.32 against 0.24 ms.
    With smaller kernels they were slower: C16 64x64 K16 5x5 g4 0.28 against 0.47 ms; 3x3 layers
    with g4 and g8 by 6-31%; 3-D layers by 3-21%.
    """
    kernel = weight_shape[2:]
    return groups > 1 and weight_shape[1] > 1 and len(kernel) == 2 and min(kernel) >= 6


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
    key = ("onnxruntime", tuple(x.shape[1:]), strides, tuple(pads), dilations, groups, relu, pool_key, b"" if bias is None else bias.tobytes(), threads) + (
        () if part is None else ("part",) + part
    )
    session = prepared.get(key)
    if session is None:
        split = split_groups(groups, weight.shape)
        model = conv_model_bytes(tuple(x.shape), np.ascontiguousarray(weight), bias, strides, pads, dilations, groups, relu, pool, split)
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
