"""``convserve.Client``: the blocking client (numpy arrays in, numpy arrays out, over gRPC)."""

from __future__ import annotations

import time
from types import TracebackType
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Mapping, Sequence, overload

import grpc
import numpy.typing as npt

from convserve import torch as _torch
from convserve import _blocks, _fanout
from convserve._transport import SyncTransport
from convserve._base import _DEFAULT, Axes, Ints, Progress, Tiles, WithInfo
from convserve._types import ServerInfo, Weights
from convserve.errors import from_rpc_error
from convserve.v1 import convserve_pb2 as pb


class Client(SyncTransport):
    """A blocking convserve client; use it as a context manager.

    Takes the keyword arguments of :class:`convserve.BaseClient` (target, timeout, token, TLS files,
    retry policy, message limit, chunk and shared-memory thresholds), each typed there.

    Examples
    --------
    >>> import numpy as np, convserve
    >>> die = np.full(6, 1 / 6)
    >>> with convserve.Client("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     two_dice = client.convolve(die, die)                # P(sum = 2..12)
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and release any shared-memory regions."""
        self._close_shared()
        for channel in _fanout.close_channels(self):
            channel.close()
        self._channel.close()

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                 fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: Literal[False] = ..., *,
                 timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any]: ...
    @overload
    def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                 fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., *, return_info: Literal[True],
                 timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> WithInfo: ...
    @overload
    def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                 fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: bool = ..., *,
                 timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

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
        timeout: float | None = _DEFAULT,
        tiles: Tiles = None,
        progress: Progress = None,
    ) -> npt.NDArray[Any] | WithInfo:
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
            Deadline of this call in seconds (default: the client's; for tiles, of the whole job).
        tiles : int, "auto" or None, optional
            Split one large call into this many overlap-save tiles along the convolved axes, sent
            concurrently, one channel per address of an ``ipv4:a,b,c`` target so every replica works;
            a tile whose replica is lost goes to another. ``"auto"``: one tile per address for a large
            in1. The result equals the one-shot call's; calls tiles cannot reproduce go one-shot.
        progress : callable(done, total), optional
            Called with (tiles done, tiles) on the tiled path, (bytes done, bytes) otherwise.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, ComputeInfo)
            With tiles, the info is a ``TiledComputeInfo``: ``tiles`` holds every tile's info.

        Raises
        ------
        InvalidArgumentError
            A bad argument (a ValueError).
        OutOfRangeError
            An integer result would not fit ``output_dtype``.
        ConvserveError
            Any other failure, with its gRPC status code.
        """
        return self._signal(False, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, return_info, timeout, tiles, progress)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                  fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: Literal[False] = ..., *,
                  timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any]: ...
    @overload
    def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                  fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., *, return_info: Literal[True],
                  timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> WithInfo: ...
    @overload
    def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                  fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: bool = ..., *,
                  timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

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
        timeout: float | None = _DEFAULT,
        tiles: Tiles = None,
        progress: Progress = None,
    ) -> npt.NDArray[Any] | WithInfo:
        """Cross-correlate two N-dimensional arrays on the server, as ``scipy.signal.correlate``.

        The arguments, result and errors are those of :meth:`convolve`; in2 is conjugated for complex data.
        """
        return self._signal(True, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, return_info, timeout, tiles, progress)

    def _signal(
        self, correlate: bool, in1: Any, in2: Any, mode: str, method: str, axes: Axes, boundary: str, fill_value: complex, output_dtype: Any,
        return_info: bool, timeout: Any, tiles: Tiles, progress: Progress,
    ) -> npt.NDArray[Any] | WithInfo:  # fmt: skip
        """Convolve or Correlate: tiled when asked and possible, one-shot otherwise."""
        if tiles is not None:
            tiled = _fanout.run_sync(self, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, tiles, correlate, timeout, progress)
            if tiled is not None:
                return tiled if return_info else tiled[0]
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        total = self._progress_start(in1, in2, progress)
        stub = self._stub
        if correlate:
            result = self._run(prepared, stub.Correlate, stub.CorrelateChunked, pb.SignalRequestPart, timeout, stub.CorrelateShared, progress)
        else:
            result = self._run(prepared, stub.Convolve, stub.ConvolveChunked, pb.SignalRequestPart, timeout, stub.ConvolveShared, progress)
        if progress is not None and prepared.streamed is None:  # a chunked call reported its bytes as it sent them
            progress(total, total)
        return self._finish(result, return_info)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints | str = ...,
                   dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ..., pool: Mapping[str, Any] | None = ...,
                   return_info: Literal[False] = ..., *, timeout: float | None = ...) -> npt.NDArray[Any]: ...
    @overload
    def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints | str = ...,
                   dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ..., pool: Mapping[str, Any] | None = ..., *,
                   return_info: Literal[True], timeout: float | None = ...) -> WithInfo: ...
    @overload
    def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints | str = ...,
                   dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ..., pool: Mapping[str, Any] | None = ...,
                   return_info: bool = ..., *, timeout: float | None = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

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
        timeout: float | None = _DEFAULT,
    ) -> npt.NDArray[Any] | WithInfo:
        """A CNN convolution layer, as ``torch.nn.Conv1d/2d/3d``, then optional ReLU and pooling.

        Parameters
        ----------
        input : array_like or torch.Tensor
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, float32 or float64.
        weight : array_like, torch.Tensor or Weights
            ``(C_out, C_in / groups, *kernel)`` (an ``nn.Parameter`` too), or weights from :meth:`register_weights`.
        bias : array_like or torch.Tensor, optional
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
        numpy.ndarray, torch.Tensor, or either with a ComputeInfo
            ``(N, C_out, *spatial_out)`` (unbatched input: no N axis); a tensor on the input's
            device when ``input`` is a tensor, never requiring grad (see :mod:`convserve.torch`:
            a :class:`~convserve.errors.GradientNotComputedWarning` says so once).
        """
        input, weight, bias, restore = _torch.layer_arguments(input, weight, bias)
        flow = self._layer_flow(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool)
        stub = self._stub
        result = self._drive(flow, lambda prepared: self._run(prepared, stub.ConvLayer, stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout), timeout)
        return self._finish(result, return_info, restore)

    def register_weights(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, *, timeout: float | None = _DEFAULT) -> Weights:
        """Store a layer's weights (and bias) on the server, so later calls send only activations.

        Parameters
        ----------
        weight : array_like or torch.Tensor
            ``(C_out, C_in / groups, *kernel)`` for ``conv_layer`` or ``(C_in, C_out / groups, *kernel)``
            for ``conv_transpose``; float32 or float64.
        bias : array_like or torch.Tensor, optional
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
        return self._register(weight, bias, timeout)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints = ...,
                       output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., return_info: Literal[False] = ..., *,
                       timeout: float | None = ...) -> npt.NDArray[Any]: ...
    @overload
    def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints = ...,
                       output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., *, return_info: Literal[True],
                       timeout: float | None = ...) -> WithInfo: ...
    @overload
    def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ..., padding: Ints = ...,
                       output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., return_info: bool = ..., *,
                       timeout: float | None = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

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
        timeout: float | None = _DEFAULT,
    ) -> npt.NDArray[Any] | WithInfo:
        """A transposed convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose1d/2d/3d``.

        Parameters
        ----------
        input : array_like or torch.Tensor
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, float32 or float64.
        weight : array_like, torch.Tensor or Weights
            ``(C_in, C_out / groups, *kernel)``, or weights from :meth:`register_weights`.
        bias : array_like or torch.Tensor, optional
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
        numpy.ndarray, torch.Tensor, or either with a ComputeInfo
            A tensor when ``input`` is one, as :meth:`conv_layer`.
        """
        input, weight, bias, restore = _torch.layer_arguments(input, weight, bias)
        flow = self._transpose_flow(input, weight, bias, stride, padding, output_padding, groups, dilation)
        result = self._drive(flow, lambda request: self._from_unary(self._call(self._stub.ConvTranspose, request, timeout)), timeout)
        return self._finish(result, return_info, restore)

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

    def server_info(self, *, timeout: float | None = _DEFAULT) -> ServerInfo:
        """Return the server's version, limits and capabilities."""
        return self._server_info(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))
