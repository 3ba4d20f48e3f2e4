"""Fuzzing the shared-memory RPCs with hypothesis: hostile requests, and real regions guarded by their capability.

The server's size rules are checked exactly: a shared tensor declaring more than max_elements is
RESOURCE_EXHAUSTED with pushback -1; a region is used only with its capability and is left
untouched otherwise.
"""

from __future__ import annotations

import secrets

import grpc
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from convserve import codec
from convserve._shared_memory import HEADER_SIZE
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

from tests.e2e.fuzz_strategies import (
    ALLOWED,
    ANY_TENSOR,
    DIMENSION,
    FUNCTION_FIXTURE,
    OK,
    SHARED_MAX_ELEMENTS,
    _assert_never_fits,
    _outcome,
    _reference_signal,
    _Region,
    _status,
)

# -- shared memory: hostile requests and the capability --------------------------------------------

SHARED_TENSORS = st.builds(
    pb.SharedTensor,
    region=st.sampled_from(["convserve_fuzz_none", "../etc/passwd", "", "convserve/../x", "convserve" + "a" * 300, "psm_x"]),
    offset=st.one_of(st.integers(-8, 64), st.just(2**63 - 1)),
    dtype=st.integers(0, 16),
    shape=st.lists(DIMENSION, max_size=3),
    capability=st.one_of(st.just(b""), st.binary(min_size=16, max_size=16), st.binary(max_size=40)),
)
SHARED_REQUESTS = st.builds(
    pb.SharedSignalRequest,
    options=st.one_of(st.none(), st.builds(pb.SignalRequest, mode=st.integers(0, 4), in1=st.one_of(st.none(), ANY_TENSOR))),
    in1=SHARED_TENSORS,
    in2=SHARED_TENSORS,
    result=st.builds(
        pb.SharedBuffer,
        region=st.sampled_from(["convserve_fuzz_none", "../x", ""]),
        offset=st.integers(-2, 64),
        size=st.integers(-2, 2**40),
        capability=st.binary(max_size=20),
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(request=SHARED_REQUESTS, correlate=st.booleans())
def test_shared_memory_rpcs_never_fail_internally(shared_stub: pb_grpc.ConvolutionServiceStub, request: pb.SharedSignalRequest, correlate: bool) -> None:
    code = _status(shared_stub.CorrelateShared if correlate else shared_stub.ConvolveShared, request)
    assert code in ALLOWED | {grpc.StatusCode.NOT_FOUND}, code


CAPABILITIES = ["right", "right", "right", "empty", "random", "flipped", "short", "long", "other", "zeros"]


def _capability(kind: str, region: _Region, other: _Region, rng: np.random.Generator) -> bytes:
    right = region.capability
    flipped = bytearray(right)
    flipped[int(rng.integers(16))] ^= 1 << int(rng.integers(8))
    return {
        "right": right,
        "empty": b"",
        "random": secrets.token_bytes(16),
        "flipped": bytes(flipped),
        "short": right[:15],
        "long": right + b"\0",
        "other": other.capability,
        "zeros": bytes(16),
    }[kind]


@settings(max_examples=100, deadline=None, suppress_health_check=FUNCTION_FIXTURE)
@given(
    caps=st.one_of(st.just(("right",) * 3), st.tuples(*[st.sampled_from(CAPABILITIES)] * 3)),
    dtype=st.sampled_from(["float64", "int16", "complex128"]),
    n=st.integers(1, 300),
    m=st.integers(1, 20),
    offsets=st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)),
    huge=st.sampled_from([None] * 6 + ["in1", "in2"]),
    correlate=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_shared_memory_capability_guards_real_regions(
    shared_stub: pb_grpc.ConvolutionServiceStub,
    regions: tuple[_Region, _Region],
    caps: tuple[str, str, str],
    dtype: str,
    n: int,
    m: int,
    offsets: tuple[int, int, int],
    huge: str | None,
    correlate: bool,
    seed: int,
) -> None:
    """Real regions with the client's header: the right capability everywhere computes numpy's
    answer into the result region (only there); any wrong, empty or borrowed capability is
    PERMISSION_DENIED, never OK, and leaves both regions byte for byte as they were; a declared
    shape beyond max_elements is RESOURCE_EXHAUSTED with pushback -1 and touches nothing."""
    rng = np.random.default_rng(seed)
    inputs, results = regions
    make = (
        (lambda s: rng.integers(-10, 11, s).astype(dtype))
        if dtype == "int16"
        else (lambda s: (rng.standard_normal(s) + (1j * rng.standard_normal(s) if dtype == "complex128" else 0)).astype(dtype))
    )
    in1, in2 = make(n), make(m)
    off1 = HEADER_SIZE + 64 * offsets[0]
    off2 = off1 + 64 * (-(-in1.nbytes // 64) + offsets[1])
    out_offset = HEADER_SIZE + 64 * offsets[2]
    inputs.memory.buf[off1 : off1 + in1.nbytes] = in1.tobytes()
    inputs.memory.buf[off2 : off2 + in2.nbytes] = in2.tobytes()
    code_of = codec.dtype_code(in1.dtype, "in1")
    shapes = {"in1": [n], "in2": [m]}
    if huge:
        shapes[huge] = [SHARED_MAX_ELEMENTS + 1] if rng.integers(2) else [2**12, 2**12]
    request = pb.SharedSignalRequest(
        in1=pb.SharedTensor(region=inputs.name, offset=off1, dtype=code_of, shape=shapes["in1"], capability=_capability(caps[0], inputs, results, rng)),
        in2=pb.SharedTensor(region=inputs.name, offset=off2, dtype=code_of, shape=shapes["in2"], capability=_capability(caps[1], inputs, results, rng)),
        result=pb.SharedBuffer(region=results.name, offset=out_offset, size=16 * (n + m), capability=_capability(caps[2], results, inputs, rng)),
    )
    before = inputs.snapshot(), results.snapshot()
    code, trailers, response = _outcome(shared_stub.CorrelateShared if correlate else shared_stub.ConvolveShared, request)
    after = inputs.snapshot(), results.snapshot()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code
    event(f"{'huge' if huge else 'right' if set(caps) == {'right'} else 'wrong'} {code.name}")
    if huge:
        _assert_never_fits(code, trailers, (huge, shapes))
        assert after == before
        return
    if set(caps) != {"right"}:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, caps)
        assert after == before, f"a call with capabilities {caps} changed a region"
        return
    assert code == OK, code
    assert after[0] == before[0], "the server wrote into the inputs region"
    expected = _reference_signal(in1, in2, correlate)
    dt, shape, nbytes = codec.check_declared(response.result.dtype, response.result.shape, "result")
    assert dt == in1.dtype and tuple(shape) == expected.shape
    result = np.frombuffer(after[1][out_offset : out_offset + nbytes], dt).reshape(shape)
    if dt.kind in "iu":
        np.testing.assert_array_equal(result, expected)
    else:
        assert np.max(np.abs(result - expected), initial=0) <= 1e-9 * (np.abs(expected).max(initial=0) + 1)
    assert after[1][:out_offset] == before[1][:out_offset] and after[1][out_offset + nbytes :] == before[1][out_offset + nbytes :], (
        "the server wrote outside the result"
    )
