"""What makes repeated ConvLayer calls cheap, checked for exactness against torch where it computes.

The memoised geometry and path choice (hits, errors never memoised, options that must not key
the memo), the policy's cost terms (MLAS's blocked-channel kernels, the FFT path's fixed cost,
the calibrated constants), ONNX Runtime's shared thread pool, sessions keyed by the bias's
bytes, the calibration of the layer constants, and the inline weights' fingerprint (verified
bit for bit, collisions never sharing a store).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from convserve_server.engine.errors import InvalidArgumentError
from convserve_server.engine.layers import onnx, planner, policy, prepared, tiling
from convserve_server.engine.layers.conv_layer import conv_layer, plan_layer
from convserve_server.engine.signal import cost_model

from tests.engine.layers.test_conv_layer_paths import problem

torch = pytest.importorskip("torch")
needs_ort = pytest.mark.skipif(not onnx.available(), reason="onnxruntime not installed")


def _torch(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **kw: Any) -> np.ndarray:
    fn = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[w.ndim]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on "same" with an even kernel
        y = fn(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b), **kw)
    return np.asarray(y.numpy())


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if got.dtype == np.float32 else 1e-12
    assert float(np.max(np.abs(got.astype(np.float64) - want))) <= tol * float(np.max(np.abs(want)))


def _arrays(xs: tuple[int, ...], ws: tuple[int, ...], dtype: Any = np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype), rng.standard_normal(ws[0]).astype(dtype)


def test_geometry_is_memoised_by_plain_options() -> None:
    x, w, b = _arrays((2, 3, 11, 13), (4, 3, 3, 3))
    pool = {"kind": "max", "kernel_size": 2}  # a call with pooling is checked in full (no signature memo)
    plan_layer(x, w, b, stride=(2, 1), padding=1, pool=pool)
    hits = planner._geometry_of.cache_info().hits
    again = plan_layer(x, w, b, stride=(2, 1), padding=1, pool=pool)
    assert planner._geometry_of.cache_info().hits == hits + 1
    assert again.out_spatial == (6, 13) and again.pads == ((1, 1), (1, 1))
    numpy_ints = plan_layer(x, w, b, stride=np.array([2, 1]), padding=np.int64(1))  # not a memo key, same geometry
    assert numpy_ints.out_spatial == again.out_spatial and planner._geometry_of.cache_info().hits == hits + 1


def test_a_checked_signature_skips_the_checks_and_plans_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w, b = _arrays((2, 3, 11, 13), (4, 3, 3, 3), seed=3)
    first = plan_layer(x, w, b, stride=(2, 1), padding=1, dilation=1, activation="relu")
    full = planner._plan
    calls: list[int] = []
    monkeypatch.setattr(planner, "_plan", lambda *a: calls.append(1) or full(*a))
    again = plan_layer(x, w, b, stride=(2, 1), padding=1, dilation=1, activation="relu")
    assert not calls and again.x is x and again.w is w and again.bias is b
    for field in ("batched", "strides", "dilations", "pads", "padding_mode", "groups", "out_spatial", "relu", "problem", "path"):
        assert getattr(again, field) == getattr(first, field), field
    unbatched = plan_layer(x[0], w, b, stride=(2, 1), padding=1, dilation=1, activation="relu")
    assert calls == [1] and not unbatched.batched and unbatched.x.shape == (1,) + x.shape[1:]
    plan_layer(x[0], w, b, stride=(2, 1), padding=1, dilation=1, activation="relu")
    assert calls == [1]
    for _ in range(2):  # a numpy int option and a non-ndarray bias are no signature: checked in full, every time
        plan_layer(x, w, b, stride=(np.int64(2), 1), padding=1, dilation=1, activation="relu")
        plan_layer(x, w, b.tolist(), stride=(2, 1), padding=1, dilation=1, activation="relu")
    assert len(calls) == 5


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(bias=np.zeros(4, np.float64)), "bias"),
        (dict(bias=np.zeros(5, np.float32)), "bias"),
        (dict(input=np.zeros((2, 3, 11, 13), ">f4")), "input"),
        (dict(input=np.zeros((2, 3, 11, 13), np.float64)), "weight"),
        (dict(input=np.zeros((2, 3, 1, 13), np.float32), padding=0), "weight"),
        (dict(activation="gelu"), "activation"),
        (dict(groups=2), "groups"),
        (dict(padding_mode="zero"), "padding_mode"),
    ],
)
def test_a_checked_signature_never_answers_for_a_bad_call(kw: dict[str, Any], field: str) -> None:
    x, w, b = _arrays((2, 3, 11, 13), (4, 3, 3, 3), seed=4)
    call = dict(input=x, weight=w, bias=b, padding=1, activation="relu")
    for _ in range(2):
        plan_layer(**call)  # the good call's signature is remembered
    for _ in range(2):
        with pytest.raises(InvalidArgumentError) as info:
            plan_layer(**(call | kw))
        assert info.value.field == field


@pytest.mark.parametrize(
    "kw,field", [(dict(stride=True), "stride"), (dict(stride=0), "stride"), (dict(padding=-1), "padding"), (dict(padding_mode="zero"), "padding_mode")]
)
def test_bad_options_raise_every_time_even_after_a_good_call(kw: dict[str, Any], field: str) -> None:
    x, w, b = _arrays((1, 2, 8, 8), (2, 2, 3, 3))
    plan_layer(x, w, b, stride=1, padding=1)  # 1 == True: a memo must not answer for stride=True
    for _ in range(2):
        with pytest.raises(InvalidArgumentError) as info:
            plan_layer(x, w, b, **kw)
        assert info.value.field == field


def test_memoised_plans_still_match_torch_for_float64_and_float32() -> None:
    for dtype in (np.float64, np.float32):
        x, w, b = _arrays((2, 4, 9, 10), (6, 2, 3, 3), dtype)
        for _ in range(2):  # second call: memoised geometry and choice
            _close(conv_layer(x, w, b, stride=2, padding=1, dilation=(1, 2), groups=2), _torch(x, w, b, stride=2, padding=1, dilation=(1, 2), groups=2))


def test_choice_memo_follows_the_configuration_and_the_constants(engine_config: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    p = problem((1, 16, 64, 64), (32, 16, 7, 7), 1, 3, 1)
    want = "onnxruntime" if onnx.available() else "im2col_gemm"
    assert policy.choose(p) == want
    constants = cost_model.constants()
    monkeypatch.setitem(constants, "layer_direct_per_mac", constants["layer_direct_per_mac"] * 100)  # a host where direct is slow
    assert policy.choose(p) == "fft"
    monkeypatch.setitem(constants, "layer_fft_scale", 1000.0)  # ... and its FFTs slower still
    assert policy.choose(p) == want
    monkeypatch.undo()
    engine_config(layer_onnxruntime=False)
    assert policy.choose(p) == "im2col_gemm"


def test_direct_cost_is_higher_outside_mlas_blocked_channels() -> None:
    blocked = problem((1, 8, 96, 96), (16, 8, 11, 11), 1, 5, 1)
    narrow = problem((1, 8, 96, 96), (8, 8, 11, 11), 1, 5, 1)
    per_mac = [policy.direct_cost(p) / p.macs for p in (blocked, narrow)]
    assert per_mac[1] == pytest.approx(policy.DIRECT_SLOW * per_mac[0])
    assert policy.choose(narrow) == "fft"  # measured: ONNX Runtime 5.9 ms, FFT 1.0 ms


@needs_ort
def test_small_large_kernel_layers_stay_direct_and_match_torch() -> None:
    p = problem((2, 8, 16, 16), (64, 8, 13, 13), 1, 6, 1)
    assert tiling.FFT_CALL < policy.fft_cost(p) and policy.choose(p) == "onnxruntime"  # measured: FFT 0.77 ms, ONNX Runtime 0.39 ms
    x, w, b = _arrays((2, 8, 16, 16), (64, 8, 13, 13))
    got, info = conv_layer(x, w, b, padding=6, return_info=True)
    assert info.method == "onnxruntime"
    _close(got, _torch(x, w, b, padding=6))


@needs_ort
def test_sessions_share_one_thread_pool_and_a_chain_of_layers_matches_torch() -> None:
    assert onnx.global_pools() and onnx.session_threads(2) == 0
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    want = y.copy()
    keys = []
    for _ in range(4):  # four layers, four sessions on the shared pool
        w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) / 12
        store: dict[Any, Any] = {}  # one store per weights
        y = conv_layer(y, w, padding=1, activation="relu", prepared=store)
        want = np.maximum(_torch(want, w, None, padding=1), 0)
        _close(y, want)
        keys += [k for k in store if k[0] == "onnxruntime"]
    assert len(keys) == 4 and all(k[-1] == 0 for k in keys)


_OWN_POOLS = """
import dataclasses, numpy as np, torch
from convserve_server import engine
from convserve_server.engine import config
from convserve_server.engine.layers import onnx
from convserve_server.engine.layers.conv_layer import conv_layer
engine.configure(dataclasses.replace(config.current(), layer_ort_spin=False))
rng = np.random.default_rng(5)
x, w = rng.standard_normal((1, 16, 12, 12)).astype(np.float32), rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
store = {}
got = conv_layer(x, w, padding=1, prepared=store)
want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
assert not onnx.global_pools() and [k[-1] for k in store if k[0] == "onnxruntime"] == [onnx.session_threads(2)] == [2]
assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
print("ok")
"""


@needs_ort
def test_a_process_that_starts_without_spinning_gives_each_session_its_own_pool() -> None:
    import os
    import subprocess
    import sys

    import convserve_server

    root = os.path.dirname(os.path.dirname(os.path.abspath(convserve_server.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _OWN_POOLS], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_ort
def test_one_weight_with_two_biases_gets_two_sessions() -> None:
    x, w, b = _arrays((1, 16, 10, 10), (16, 16, 3, 3), seed=7)
    store: dict[Any, Any] = {}
    for bias in (b, b + 1, None):
        _close(conv_layer(x, w, bias, padding=1, prepared=store), _torch(x, w, bias, padding=1))
    assert len([k for k in store if k[0] == "onnxruntime"]) == 3


@needs_ort
def test_calibration_measures_the_layer_constants_within_bounds(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from convserve_server import calibrate

    lines: list[str] = []
    fitted = calibrate.layer_constants(1, lines.append)
    default = cost_model.DEFAULTS["layer_direct_per_mac"]
    assert set(fitted) == {"layer_direct_per_mac", "layer_fft_scale"} and "ConvLayer" in lines[0]
    assert default / 4 <= fitted["layer_direct_per_mac"] <= 4 * default and 0.25 <= fitted["layer_fft_scale"] <= 4
    path = tmp_path / "calibration.json"
    path.write_text('{"version": %d, "constants": {"layer_direct_per_mac": 1e-9}}' % cost_model.CALIBRATION_VERSION)
    try:
        cost_model.load(str(path))
        assert policy.layer_constants()[0] == 1e-9
        assert policy.choose(problem((1, 16, 64, 64), (32, 16, 7, 7), 1, 3, 1)) == "fft"
    finally:
        cost_model.load("/nonexistent")
    assert policy.layer_constants() == (default, 1.0)


@pytest.mark.parametrize("c_out", [6, 40])  # 864 bytes (keyed by its bytes) and 5.6 KB (by a sample, verified)
def test_inline_weights_are_found_by_content_and_verified_bit_for_bit(c_out: int) -> None:
    prepared.clear()
    x, w, b = _arrays((1, 4, 9, 9), (c_out, 4, 3, 3), seed=11)
    store = prepared.store_for(w)
    assert prepared.store_for(w.copy()) is store
    negative_zero = w.copy()
    negative_zero[0, 0, 0, 0] = -0.0
    zero = w.copy()
    zero[0, 0, 0, 0] = 0.0
    assert prepared.store_for(negative_zero) is not prepared.store_for(zero)  # equal as floats, not as bytes
    with_nan = w.copy()
    with_nan[1, 1, 1, 1] = np.nan
    assert prepared.store_for(with_nan) is prepared.store_for(with_nan.copy())  # NaN weights still find their store
    for i in range(c_out):  # one changed value anywhere is another store (whatever the sample)
        changed = w.copy()
        changed[i, i % 4, 2, 1] += 1
        assert prepared.store_for(changed) is not store
        assert prepared.store_for(w) is store
    strided = np.zeros((c_out, 8, 3, 3), np.float32)[:, ::2]
    strided[...] = w  # not contiguous: the same content, the same store
    assert prepared.store_for(strided) is store
    mutated = w.copy()
    conv_layer(x, mutated, b, padding=1)
    mutated[2] += 1  # the caller changes its weights in place: the cache kept its own copy
    _close(conv_layer(x, mutated, b, padding=1), _torch(x, mutated, b, padding=1))
    prepared.clear()


@pytest.mark.parametrize("collide", [("sample_key",), ("sample_key", "fingerprint")])
def test_a_key_collision_never_shares_a_store(monkeypatch: pytest.MonkeyPatch, collide: tuple[str, ...]) -> None:
    prepared.clear()
    for name in collide:
        monkeypatch.setattr(prepared, name, lambda array, name=name: name.encode())
    x, w, b = _arrays((2, 3, 10, 10), (40, 3, 3, 3), seed=13)
    assert w.nbytes > prepared.SMALL_KEY_BYTES
    other = w[::-1].copy()
    first, second = prepared.store_for(w), prepared.store_for(other)
    assert first is not second and prepared.store_for(other) is second and prepared.store_for(w) is first
    for weights in (w, other, w):
        _close(conv_layer(x, weights, b, padding=1), _torch(x, weights, b, padding=1))
    prepared.clear()


def test_the_byte_bound_counts_what_calls_add_to_their_stores(engine_config: Callable[..., None]) -> None:
    prepared.clear()
    w = np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3)
    engine_config(layer_cache_bytes=1 << 20)
    first = prepared.store_for(w)
    first["form"] = np.zeros(1 << 18, np.float32)  # 1 MiB added after the lookup
    prepared.store_for(w + 1)  # counts the first store's growth: together over the bound, so the first goes
    assert prepared.store_for(w) is not first
    prepared.clear()


def test_float64_inline_weights_stay_float64_exact() -> None:
    x, w, b = _arrays((2, 3, 12, 12), (4, 3, 5, 5), np.float64, seed=17)
    for _ in range(2):  # the second call finds the store by fingerprint
        got = conv_layer(x, w, b, padding=2)
        assert got.dtype == np.float64
        _close(got, _torch(x, w, b, padding=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [3, "same", (0, 5)])
def test_fft_path_pads_in_its_buffer_and_matches_torch(dtype: Any, padding: Any) -> None:
    x, w, b = _arrays((2, 3, 17, 14), (4, 3, 6, 5), dtype, seed=19)  # an even kernel: "same" pads unevenly
    got, info = conv_layer(x, w, b, padding=padding, path="fft", return_info=True)
    assert info.method == "fft"
    _close(got, _torch(x, w, b, padding=padding))


def test_tiled_fft_with_pending_padding_matches_torch() -> None:
    from convserve_server.engine.layers import fft

    x, w, _ = _arrays((1, 2, 30, 26), (3, 2, 5, 5), np.float64, seed=23)
    got = fft.fft_correlate(x, w, (1, 1), (30, 26), None, tile=(16, 16), pads=((2, 2), (2, 2)))
    _close(got, _torch(x, w, None, padding=2))


@pytest.mark.parametrize("backend", ["ducc0", "fftw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "xs,ws,padding,tile",
    [
        ((8, 32, 15, 15), (8, 32, 12, 12), 6, None),  # split over two threads: rows of the transposed spectra
        ((2, 3, 17, 14), (4, 3, 6, 5), "same", None),
        ((1, 4, 12, 11, 10), (3, 4, 3, 3, 3), 1, None),
        ((1, 2, 30, 26), (3, 2, 5, 5), 2, (16, 16)),
    ],
)
def test_fft_path_on_either_backend_matches_torch(
    monkeypatch: pytest.MonkeyPatch, backend: str, dtype: Any, xs: tuple[int, ...], ws: tuple[int, ...], padding: Any, tile: Any
) -> None:
    """ducc0 writes and reads the transposed spectra through strided views; FFTW's plans copy them."""
    from convserve_server.engine.layers import fft

    monkeypatch.setattr(fft, "backend_for", lambda *args: backend)
    x, w, b = _arrays(xs, ws, dtype, seed=31)
    if tile is None:
        got, info = conv_layer(x, w, b, padding=padding, path="fft", return_info=True, prepared={})
        assert info.method == "fft"
    else:
        got = fft.fft_correlate(x, w, (1,) * (x.ndim - 2), x.shape[2:], {}, tile=tile, pads=((padding, padding),) * (x.ndim - 2)) + b.reshape(-1, 1, 1)
    _close(got, _torch(x, w, b, padding=padding))


def test_finite_check_is_exact_for_huge_values_and_catches_nan() -> None:
    from convserve_server.engine.layers.conv_layer import _all_finite

    x, w, b = _arrays((1, 4, 24, 24), (4, 4, 7, 7), seed=29)
    huge = x * np.float32(1e25)  # finite, but the squares overflow float32
    assert _all_finite(huge) and not _all_finite(np.where(x > 2, np.float32(np.nan), x)) and not _all_finite(np.full(3, np.inf))
    got, info = conv_layer(huge, w, b, padding=3, path="fft", return_info=True)
    assert info.method == "fft"
    _close(got, _torch(huge, w, b, padding=3))
    with_nan = x.copy()
    with_nan[0, 1, 5, 5] = np.nan
    assert conv_layer(with_nan, w, b, padding=3, path="fft", return_info=True)[1].method != "fft"


def test_the_fingerprints_random_vector_stays_bounded_and_large_weights_use_the_digest() -> None:
    """Weights past the bound are keyed by SHA-256, so a huge inline weight never grows a permanent vector."""
    big = np.ones(prepared.FINGERPRINT_MAX_ELEMENTS + 1, np.float32)
    assert prepared.fingerprint(big).startswith(b"sha256:")
    small = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    assert not prepared.fingerprint(small).startswith(b"sha256:")
    assert all(r.size <= prepared.FINGERPRINT_MAX_ELEMENTS for r in prepared._RANDOM.values())
    assert prepared.fingerprint(small) == prepared.fingerprint(small.copy())  # by content
