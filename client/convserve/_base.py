"""What every client does without I/O: channel configuration, request building, the weights flow
and response decoding (the httpx pattern: ``Client`` and ``AsyncClient`` add only the I/O)."""

from __future__ import annotations

import json
import warnings
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Generator
from typing import Any, Mapping, Sequence, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from convserve import _options, codec
from convserve import torch as _torch
from convserve._retry import RETRY_BUFFER_BYTES, RetryPolicy
from convserve._shared_memory import RegionPair, SharedRegions
from convserve._types import ComputeInfo, ServerInfo, Weights
from convserve.errors import ConvserveError, NotFoundError
from convserve.v1 import convserve_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
# Large enough for a 64 MiB image (plus its kernel) in one message; the server's limit is its own.
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# Above this many input bytes a call streams its tensors in 1 MiB chunks (see the README).
DEFAULT_CHUNK_THRESHOLD = 4 * 1024 * 1024
DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default


@dataclass(frozen=True)
class Prepared:
    """A request ready to send: unary (``streamed`` is None) or a chunked header plus the arrays to stream."""

    request: Any
    streamed: dict[str, npt.NDArray[Any]] | None
    shared: pb.SharedSignalRequest | None = None
    regions: RegionPair | None = None  # the shared-memory regions the call owns until it ends


Request = TypeVar("Request")


@dataclass(frozen=True)
class Register:
    """A step of :func:`weights_flow`: register these weights again and send the new :class:`Weights` into the flow."""

    weight: npt.NDArray[Any]
    bias: npt.NDArray[Any] | None


def weights_flow(
    weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None, build: Callable[[npt.ArrayLike | Weights, npt.ArrayLike | None], Request]
) -> Generator[Request | Register, Any, Any]:
    """One call that may name registered weights, as a flow without I/O (the pattern of httpx's auth flows).

    The flow yields what the client sends next: a request ``build(weight, bias)``, or a :class:`Register`.
    The client sends back the outcome (``flow.send``) or throws in the ConvserveError it got
    (``flow.throw``); the flow returns the call's outcome. Registered weights that the server evicted
    (NotFound) are registered again, once, and the call resent; if that answer is NotFound too (another
    replica under round robin), the weights travel with the call.
    """
    if not isinstance(weight, Weights):
        return (yield build(weight, bias))
    try:
        return (yield build(weight, bias))
    except NotFoundError:
        pass
    fresh = yield Register(weight.weight, weight.bias)  # evicted: register again, once
    try:
        return (yield build(fresh, None))
    except NotFoundError:  # another replica answered (round robin): send the weights with the call
        pass
    return (yield build(weight.weight, weight.bias))


def _read(value: str | bytes | Path | None) -> bytes | None:
    """PEM content from bytes, or from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class BaseClient:
    """Everything a client does without I/O.

    Parameters
    ----------
    target : str
        ``host:port`` of the server, or several as ``ipv4:h1:p1,h2:p2`` (gRPC name syntax).
    timeout : float or None
        Default deadline of each call in seconds; each call may override it.
    token : str, optional
        Bearer token sent as ``authorization: Bearer <token>``.
    root_certificates : str, bytes or Path, optional
        PEM CA bundle that signed the server's certificate; enables TLS.
    client_certificate, client_key : str, bytes or Path, optional
        PEM certificate chain and key for mutual TLS.
    tls : bool
        Use TLS with the system's CA bundle even without ``root_certificates``.
    retry : RetryPolicy
        Retry rule: gRPC's own retries for small unary requests; the client's for large ones and for
        chunked calls (a fresh stream each attempt) and for streams refused before any block went out.
    max_message_bytes : int
        Largest message sent or received.
    load_balancing : str
        gRPC load-balancing policy over the target's addresses (``round_robin`` spreads calls over replicas).
    chunk_threshold : int
        Inputs larger than this many bytes in all travel as a chunked stream (1 MiB chunks).
    shared_memory : bool
        Same host only: pass Convolve/Correlate inputs of at least ``shared_memory_threshold``
        bytes through POSIX shared memory (the server must run with ``--allow-shared-memory``).
    shared_memory_threshold : int
        Smallest input size, in bytes, sent through shared memory.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        root_certificates: str | bytes | Path | None = None,
        client_certificate: str | bytes | Path | None = None,
        client_key: str | bytes | Path | None = None,
        tls: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        load_balancing: str = "round_robin",
        chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD,
        shared_memory: bool = False,
        shared_memory_threshold: int = 1024 * 1024,
    ) -> None:
        self.target = target
        self.shared_regions = SharedRegions() if shared_memory else None
        self.shared_memory_threshold = shared_memory_threshold
        self.chunk_threshold = chunk_threshold
        self.timeout = timeout
        self.retry = retry
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        config = json.loads(retry.service_config())
        config["loadBalancingConfig"] = [{load_balancing: {}}]
        self.channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(config)),
            # gRPC's reconnect backoff grows to 120 s by default: a restarted server (or replica
            # behind round_robin) would wait that long to be used again. Retry the connection at
            # most every second instead.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.credentials: grpc.ChannelCredentials | None = None
        if tls or root_certificates is not None or client_certificate is not None:
            if (client_certificate is None) != (client_key is None):
                raise ValueError("client_certificate and client_key must be given together")
            self.credentials = grpc.ssl_channel_credentials(_read(root_certificates), _read(client_key), _read(client_certificate))
        self._connect()

    def _connect(self) -> None:
        """Open the channel (the twins' I/O; the base client opens none)."""

    def _timeout(self, timeout: float | None | object) -> float | None:
        """The call's deadline: the per-call value, or the client's default."""
        return self.timeout if timeout is _DEFAULT else timeout  # type: ignore[return-value]

    def _retry_wait(self, attempt: int, error: ConvserveError, ends: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None: not retryable, attempts used up, or past the deadline."""
        wait = self.retry.delay(attempt, error)
        if wait is None or (ends is not None and time.monotonic() + wait >= ends):
            return None
        return wait

    def _deadline(self, timeout: float | None | object) -> float | None:
        """The call's deadline on the monotonic clock (None: no deadline)."""
        seconds = self._timeout(timeout)
        return None if seconds is None else time.monotonic() + seconds

    @staticmethod
    def _left(ends: float | None) -> float | None:
        """Seconds left until the deadline ``ends`` (None: no deadline)."""
        return None if ends is None else max(0.0, ends - time.monotonic())

    def _client_retries(self, request: Any) -> bool:
        """Whether the client must retry ``request`` itself (too large for gRPC's retry buffer)."""
        return int(request.ByteSize()) > RETRY_BUFFER_BYTES

    def _signal_request(
        self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str, method: str, axes: Any, boundary: str, fill_value: complex, output_dtype: npt.DTypeLike | None
    ) -> Prepared:
        arrays = {"in1": _options.as_array(in1, "in1"), "in2": _options.as_array(in2, "in2")}
        if self.shared_regions is not None and sum(a.nbytes for a in arrays.values()) >= self.shared_memory_threshold:
            options = _options.signal_request(None, None, mode, method, axes, boundary, fill_value, output_dtype)
            message, pair = self.shared_regions.request(arrays, options)
            return Prepared(options, None, shared=message, regions=pair)
        chunked = self._chunked(arrays)
        request = _options.signal_request(
            None if chunked else arrays["in1"], None if chunked else arrays["in2"], mode, method, axes, boundary, fill_value, output_dtype
        )
        return Prepared(request, arrays if chunked else None)

    def _layer_request(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
        padding_mode: str,
        activation: str | None,
        pool: Mapping[str, Any] | None,
    ) -> Prepared:
        if isinstance(weight, Weights):
            if bias is not None:
                raise _options.invalid("bias", "registered weights carry their own bias; pass bias=None")
            x = {"input": _options.as_array(input, "input")}
            streamed = self._chunked(x)  # only the activations travel; large ones in chunks
            request = _options.conv_layer_request(
                None if streamed else x["input"], None, None, stride, padding, dilation, groups, padding_mode, activation, pool
            )
            request.weights_id = weight.id
            return Prepared(request, x if streamed else None)
        arrays = {"input": _options.as_array(input, "input"), "weight": _options.as_array(weight, "weight")}
        if bias is not None:
            arrays["bias"] = _options.as_array(bias, "bias")
        chunked = self._chunked(arrays)
        request = _options.conv_layer_request(
            None if chunked else arrays["input"],
            None if chunked else arrays["weight"],
            None if chunked else arrays.get("bias"),
            stride,
            padding,
            dilation,
            groups,
            padding_mode,
            activation,
            pool,
        )
        return Prepared(request, arrays if chunked else None)

    @staticmethod
    def _transpose_request(
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None,
        stride: Any,
        padding: Any,
        output_padding: Any,
        groups: int,
        dilation: Any,
    ) -> pb.ConvTransposeRequest:
        if isinstance(weight, Weights):
            if bias is not None:
                raise _options.invalid("bias", "registered weights carry their own bias; pass bias=None")
            request = _options.conv_transpose_request(input, None, None, stride, padding, output_padding, groups, dilation)
            request.weights_id = weight.id
            return request
        return _options.conv_transpose_request(input, weight, bias, stride, padding, output_padding, groups, dilation)

    def _layer_flow(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
        padding_mode: str,
        activation: str | None,
        pool: Mapping[str, Any] | None,
    ) -> Generator[Prepared | Register, Any, Any]:
        """The flow of a ConvLayer call (see :func:`weights_flow`)."""
        return weights_flow(weight, bias, lambda w, b: self._layer_request(input, w, b, stride, padding, dilation, groups, padding_mode, activation, pool))

    def _transpose_flow(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None,
        stride: Any,
        padding: Any,
        output_padding: Any,
        groups: int,
        dilation: Any,
    ) -> Generator[pb.ConvTransposeRequest | Register, Any, Any]:
        """The flow of a ConvTranspose call (see :func:`weights_flow`)."""
        return weights_flow(weight, bias, lambda w, b: self._transpose_request(input, w, b, stride, padding, output_padding, groups, dilation))

    @staticmethod
    def _weights_request(weight: npt.ArrayLike, bias: npt.ArrayLike | None) -> tuple[pb.RegisterWeightsRequest, npt.NDArray[Any], npt.NDArray[Any] | None]:
        _, weight, bias, _ = _torch.layer_arguments(None, weight, bias)
        w = _options.as_array(weight, "weight")
        b = None if bias is None else _options.as_array(bias, "bias")
        request = pb.RegisterWeightsRequest(weight=codec.encode(w, "weight"))
        if b is not None:
            codec.encode_into(request.bias, b, "bias")
        return request, w, b

    def _chunked(self, arrays: Mapping[str, npt.NDArray[Any]]) -> bool:
        """Whether these inputs go as a chunked stream (above ``chunk_threshold`` bytes)."""
        return sum(a.nbytes for a in arrays.values()) > self.chunk_threshold

    @staticmethod
    def _stream_config(kernel: npt.ArrayLike, output_dtype: npt.DTypeLike | None) -> pb.StreamRequest:
        config = pb.StreamConfig(kernel=codec.encode(kernel, "kernel"))
        if output_dtype is not None:
            config.output_dtype = codec.dtype_code(output_dtype, "output_dtype")
        return pb.StreamRequest(config=config)

    @staticmethod
    def _stream_block(block: npt.ArrayLike) -> pb.StreamRequest:
        return pb.StreamRequest(block=codec.encode(block, "block"))

    @staticmethod
    def _stream_output(response: pb.StreamResponse) -> npt.NDArray[Any]:
        """A stream's output block; the server's warnings about it (NaN or Inf, say) as RuntimeWarnings."""
        for text in response.warnings:
            warnings.warn(f"convserve stream: {text}", RuntimeWarning, stacklevel=3)
        return np.array(codec.decode(response.block, "block"))

    def _from_shared(self, response: pb.SharedResponse, pair: RegionPair) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        return SharedRegions.read_result(response, pair), response.info

    def _end_shared(self, pair: RegionPair, ok: bool) -> None:
        """A shared-memory call is over: its regions serve the next call, or are unlinked after a failure."""
        if self.shared_regions is not None:
            self.shared_regions.give_back(pair, reusable=ok)

    def _close_shared(self) -> None:
        if self.shared_regions is not None:
            self.shared_regions.close()

    @staticmethod
    def _from_unary(response: Any) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        tensor = response.result if isinstance(response, pb.SignalResponse) else response.output
        return np.array(codec.decode(tensor, "result")), response.info  # a writable array the caller owns

    @staticmethod
    def _finish(result: tuple[npt.NDArray[Any], pb.ComputeInfo], return_info: bool, restore: _torch.Restore = None) -> Any:
        array, info = result
        if restore is not None:
            array = restore(array)  # a torch tensor when the input was one
        if not return_info:
            return array
        return array, ComputeInfo(info.method, info.compute_seconds, tuple(info.warnings))

    @staticmethod
    def _progress_start(in1: npt.ArrayLike, in2: npt.ArrayLike, progress: Callable[[int, int], None] | None) -> int:
        """Report (0, input bytes) to ``progress`` before a one-shot call; return the total."""
        if progress is None:
            return 0
        total = int(np.asarray(in1).nbytes + np.asarray(in2).nbytes)
        progress(0, total)
        return total

    @staticmethod
    def _server_info(message: pb.ServerInfo) -> ServerInfo:
        return ServerInfo(
            version=message.version,
            max_elements=message.limits.max_elements,
            max_request_bytes=message.limits.max_request_bytes,
            max_output_bytes=message.limits.max_output_bytes,
            max_concurrent_requests=message.limits.max_concurrent_requests,
            dtypes=tuple(codec.dtype_name(d) for d in message.dtypes),
            methods=tuple(pb.Method.Name(m).removeprefix("METHOD_").lower() for m in message.methods),
            fftw_threads=message.fftw_threads,
            wisdom=message.wisdom,
            workers=message.workers,
        )


class _Default:
    """Marker: the argument was not given (so None can mean "no deadline")."""

    def __repr__(self) -> str:
        return "<client default>"


_DEFAULT: Any = _Default()
Axes = int | Sequence[int] | None
Ints = int | Sequence[int]
WithInfo = tuple[npt.NDArray[Any], ComputeInfo]  # a result with its ComputeInfo (return_info=True)
Tiles = int | str | None  # a call split into tiles: how many, "auto", or None (one-shot)
Progress = Callable[[int, int], None] | None  # called with (done, total): tiles, or bytes
