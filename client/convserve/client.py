"""``convserve.Client``: the blocking client (numpy arrays in, numpy arrays out, over gRPC)."""

from __future__ import annotations

import time
from types import TracebackType
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy.typing as npt

from convserve import _blocks, _chunked as _chunking
from convserve._base import _DEFAULT, Axes, BaseClient, Prepared, ServerInfo, Weights
from convserve.errors import NotFoundError, from_rpc_error
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc


class Client(BaseClient):
    """A blocking convserve client; use it as a context manager.

    Takes the arguments of :class:`convserve.BaseClient` (target, timeout, token, TLS files,
    retry policy, message limit).

    Examples
    --------
    >>> import numpy as np, convserve
    >>> die = np.full(6, 1 / 6)
    >>> with convserve.Client("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     two_dice = client.convolve(die, die)                # P(sum = 2..12)
    """

    def __init__(self, target: str = "127.0.0.1:50051", **options: Any) -> None:
        super().__init__(target, **options)
        if self.credentials is None:
            self._channel = grpc.insecure_channel(target, options=self.channel_options)
        else:
            self._channel = grpc.secure_channel(target, self.credentials, options=self.channel_options)
        self._stub = pb_grpc.ConvolutionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and release any shared-memory regions."""
        self._close_shared()
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: Any) -> Any:
        """One RPC with the deadline, credentials and the retry rule; errors become ConvserveError."""
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return method(request, timeout=self._left(ends), metadata=self.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.target)
            wait = self._retry_wait(attempt, error, ends) if self._client_retries(request) else None
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def _chunked_call(self, prepared: Prepared, method: Callable[..., Any], part_type: Any, timeout: Any) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """A chunked call, retried by the client (gRPC must not: see ``RetryPolicy.service_config``).

        Each attempt is a fresh stream from the arrays the client still holds.
        """
        assert prepared.streamed is not None
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            parts = _chunking.request_parts(prepared.request, prepared.streamed, part_type)
            try:
                return _chunking.assemble(method(parts, timeout=self._left(ends), metadata=self.metadata))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.target)
            wait = self._retry_wait(attempt, error, ends)
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def _run(
        self, prepared: Prepared, unary: Callable[..., Any], chunked: Callable[..., Any], part_type: Any, timeout: Any, shared: Callable[..., Any] | None = None
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """Send a prepared request unary or as a chunked stream; return the result and its info."""
        if prepared.shared is not None and shared is not None and prepared.regions is not None:
            ok = False
            try:
                result = self._from_shared(self._call(shared, prepared.shared, timeout), prepared.regions)
                ok = True
                return result
            finally:
                self._end_shared(prepared.regions, ok)
        if prepared.streamed is None:
            return self._from_unary(self._call(unary, prepared.request, timeout))
        return self._chunked_call(prepared, chunked, part_type, timeout)

    def convolve(
        self,
        in1: npt.ArrayLike,
        in2: npt.ArrayLike,
        mode: str = "full",
        method: str = "auto",
        axes: Axes = None,
        boundary: str = "fill",
        fill_value: complex = 0,
        output_dtype: npt.DTypeLike | None = None,
        return_info: bool = False,
        *,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """Convolve two N-dimensional arrays on the server, as ``scipy.signal.convolve``.

        Parameters
        ----------
        in1, in2 : array_like
            The signal and the kernel.
        mode : {"full", "same", "valid", "circular"}
            Output size, as scipy; ``circular`` is cyclic convolution with in1's shape.
        method : {"auto", "direct", "fft", "overlap_add"}
            How the server computes; ``auto`` picks the fastest.
        axes : int or sequence of int, optional
            Axes to convolve over (default all); the others broadcast.
        boundary : {"fill", "wrap", "symmetric", "reflect", "edge"}
            How in1 is extended beyond its edges (aliases: constant, circular, symm, mirror, nearest).
        fill_value : number
            The constant outside in1 for ``boundary="fill"``.
        output_dtype : dtype, optional
            Result type (default: scipy's); integer results never wrap around.
        return_info : bool
            Also return a :class:`ComputeInfo`.
        timeout : float or None, optional
            Deadline of this call in seconds (default: the client's).

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, ComputeInfo)

        Raises
        ------
        InvalidArgumentError
            A bad argument (a ValueError).
        OutOfRangeError
            An integer result would not fit ``output_dtype``.
        ConvserveError
            Any other failure, with its gRPC status code.
        """
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        stub = self._stub
        result = self._run(prepared, stub.Convolve, stub.ConvolveChunked, pb.SignalRequestPart, timeout, stub.ConvolveShared)
        return self._finish(result, return_info)

    def correlate(
        self,
        in1: npt.ArrayLike,
        in2: npt.ArrayLike,
        mode: str = "full",
        method: str = "auto",
        axes: Axes = None,
        boundary: str = "fill",
        fill_value: complex = 0,
        output_dtype: npt.DTypeLike | None = None,
        return_info: bool = False,
        *,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """Cross-correlate two N-dimensional arrays on the server, as ``scipy.signal.correlate``.

        The arguments, result and errors are those of :meth:`convolve`; in2 is conjugated for complex data.
        """
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        stub = self._stub
        result = self._run(prepared, stub.Correlate, stub.CorrelateChunked, pb.SignalRequestPart, timeout, stub.CorrelateShared)
        return self._finish(result, return_info)

    def conv_layer(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        activation: str | None = None,
        pool: Mapping[str, Any] | None = None,
        return_info: bool = False,
        *,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """A CNN convolution layer, as ``torch.nn.Conv1d/2d/3d``, then optional ReLU and pooling.

        Parameters
        ----------
        input : array_like
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, float32 or float64.
        weight : array_like
            ``(C_out, C_in / groups, *kernel)``.
        bias : array_like, optional
            ``(C_out,)``.
        stride, dilation : int or tuple of int
            One value for every spatial dimension, or one per dimension.
        padding : int, tuple of int, "same" or "valid"
            Implicit padding on both sides (``same``: stride 1 only, as torch).
        groups : int
            Blocked connections from input to output channels.
        padding_mode : {"zeros", "reflect", "replicate", "circular"}
            What fills the padding.
        activation : {None, "relu"}
            Applied after the bias.
        pool : dict, optional
            ``{"kind": "max" | "avg", "kernel_size": k, "stride": k, "padding": 0}``.
        return_info : bool
            Also return a :class:`ComputeInfo`.
        timeout : float or None, optional
            Deadline of this call in seconds (default: the client's).

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, ComputeInfo)
            ``(N, C_out, *spatial_out)`` (unbatched input: no N axis).
        """
        prepared = self._layer_request(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool)
        try:
            result = self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
        except NotFoundError:
            if not isinstance(weight, Weights):
                raise
            fresh = self.register_weights(weight.weight, weight.bias, timeout=timeout)  # evicted: register again, once
            prepared = self._layer_request(input, fresh, None, stride, padding, dilation, groups, padding_mode, activation, pool)
            try:
                result = self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
            except NotFoundError:  # another replica answered (round robin): send the weights with the call
                prepared = self._layer_request(input, weight.weight, weight.bias, stride, padding, dilation, groups, padding_mode, activation, pool)
                result = self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
        return self._finish(result, return_info)

    def register_weights(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, *, timeout: Any = _DEFAULT) -> Weights:
        """Store a layer's weights (and bias) on the server, so later calls send only activations.

        Parameters
        ----------
        weight : array_like
            ``(C_out, C_in / groups, *kernel)`` for ``conv_layer`` or ``(C_in, C_out / groups, *kernel)``
            for ``conv_transpose``; float32 or float64.
        bias : array_like, optional
            ``(C_out,)``.
        timeout : float or None, optional
            Deadline of this call in seconds (default: the client's).

        Returns
        -------
        Weights
            Pass it in place of ``weight`` (with ``bias=None``). Its id is the SHA-256 of the
            tensors, the same on every replica; if a server evicted the weights, the client
            registers them again by itself.
        """
        request, w, b = self._weights_request(weight, bias)
        response = self._call(self._stub.RegisterWeights, request, timeout)
        return Weights(response.weights_id, w, b)

    def conv_transpose(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike | Weights,
        bias: npt.ArrayLike | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        dilation: int | Sequence[int] = 1,
        return_info: bool = False,
        *,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """A transposed convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose1d/2d/3d``.

        Parameters
        ----------
        input : array_like
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, float32 or float64.
        weight : array_like or Weights
            ``(C_in, C_out / groups, *kernel)``, or weights from :meth:`register_weights`.
        bias : array_like, optional
            ``(C_out,)``.
        stride, padding, output_padding, dilation : int or tuple of int
            As torch.
        groups : int
            Blocked connections from input to output channels.
        return_info : bool
            Also return a :class:`ComputeInfo`.
        timeout : float or None, optional
            Deadline of this call in seconds (default: the client's).

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, ComputeInfo)
        """
        request = self._transpose_request(input, weight, bias, stride, padding, output_padding, groups, dilation)
        try:
            response = self._call(self._stub.ConvTranspose, request, timeout)
        except NotFoundError:
            if not isinstance(weight, Weights):
                raise
            fresh = self.register_weights(weight.weight, weight.bias, timeout=timeout)  # evicted: register again, once
            request = self._transpose_request(input, fresh, None, stride, padding, output_padding, groups, dilation)
            try:
                response = self._call(self._stub.ConvTranspose, request, timeout)
            except NotFoundError:  # another replica answered (round robin): send the weights with the call
                request = self._transpose_request(input, weight.weight, weight.bias, stride, padding, output_padding, groups, dilation)
                response = self._call(self._stub.ConvTranspose, request, timeout)
        return self._finish(self._from_unary(response), return_info)

    def convolve_stream(
        self, blocks: Iterable[npt.ArrayLike], kernel: npt.ArrayLike, output_dtype: npt.DTypeLike | None = None, *, timeout: float | None = None
    ) -> Iterator[npt.NDArray[Any]]:
        """Convolve an unbounded signal block by block with a fixed kernel (live audio, sensor data).

        Parameters
        ----------
        blocks : iterable of array_like
            The signal in blocks of any length: ``(n,)`` or ``(n, C)`` channels-last, one dtype.
        kernel : array_like
            ``(M,)`` applied to every channel, or ``(M, C)`` one column per channel.
        output_dtype : dtype, optional
            Result type (default ``numpy.result_type`` of blocks and kernel); integers are exact.
        timeout : float, optional
            Deadline of the whole stream (default: none).

        Returns
        -------
        iterator of numpy.ndarray
            Output blocks as they are ready, then the tail once ``blocks`` is exhausted;
            concatenated they equal ``scipy.signal.convolve(signal, kernel)`` per channel.

        Notes
        -----
        A stream the server refuses (busy, or unreachable) is started again under the retry
        policy only while none of ``blocks`` has gone out; once a block has, the error is raised,
        so that no block is ever computed twice or lost.
        """
        config = self._stream_config(kernel, output_dtype)
        source = _blocks.Blocks(blocks)
        ends = self._deadline(timeout)  # None (the default) means no deadline for a stream
        attempt = 0
        while True:
            current = _blocks.Attempt()
            answered = False
            try:
                current.call = self._stub.ConvolveStream(source.requests(config, current, self._stream_block), timeout=self._left(ends), metadata=self.metadata)
                for response in current.call:
                    answered = True
                    yield self._stream_output(response)
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.target)
            fresh = source.give_up(current) and not answered
            wait = self._retry_wait(attempt, error, ends) if fresh else None
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def server_info(self, *, timeout: Any = _DEFAULT) -> ServerInfo:
        """Return the server's version, limits and capabilities."""
        return self._server_info(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))
