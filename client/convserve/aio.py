"""``convserve.AsyncClient``: the asyncio twin of :class:`convserve.Client`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Literal, Mapping, Sequence, overload

import grpc
import numpy.typing as npt

from convserve import torch as _torch
from convserve import _blocks, _fanout
from convserve._aio_status import StatusWitness
from convserve._transport import AsyncTransport
from convserve._base import _DEFAULT, Axes, Ints, Progress, Tiles, WithInfo
from convserve._types import ServerInfo, Weights
from convserve.errors import from_rpc_error
from convserve.v1 import convserve_pb2 as pb


class AsyncClient(AsyncTransport):
    """An asyncio convserve client; use it as an async context manager.

    Same arguments (the keyword arguments of :class:`convserve.BaseClient`) and methods as
    :class:`convserve.Client`, each method a coroutine.

    Examples
    --------
    >>> async with convserve.AsyncClient() as client:     # doctest: +SKIP
    ...     two_dice = await client.convolve(die, die)
    """

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel and release any shared-memory regions."""
        self._close_shared()
        for channel in _fanout.close_channels(self):
            await channel.close()
        await self._channel.close()

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    async def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                       fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: Literal[False] = ..., *,
                       timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any]: ...
    @overload
    async def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                       fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., *, return_info: Literal[True],
                       timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> WithInfo: ...
    @overload
    async def convolve(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                       fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: bool = ..., *,
                       timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

    async def convolve(
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
        """Convolve on the server, as ``scipy.signal.convolve`` (see :meth:`convserve.Client.convolve`)."""
        return await self._signal(False, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, return_info, timeout, tiles, progress)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    async def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                        fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: Literal[False] = ..., *,
                        timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any]: ...
    @overload
    async def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                        fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., *, return_info: Literal[True],
                        timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> WithInfo: ...
    @overload
    async def correlate(self, in1: npt.ArrayLike, in2: npt.ArrayLike, mode: str = ..., method: str = ..., axes: Axes = ..., boundary: str = ...,
                        fill_value: complex = ..., output_dtype: npt.DTypeLike | None = ..., return_info: bool = ..., *,
                        timeout: float | None = ..., tiles: Tiles = ..., progress: Progress = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

    async def correlate(
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
        """Cross-correlate on the server, as ``scipy.signal.correlate`` (see :meth:`convserve.Client.correlate`)."""
        return await self._signal(True, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, return_info, timeout, tiles, progress)

    async def _signal(
        self, correlate: bool, in1: Any, in2: Any, mode: str, method: str, axes: Axes, boundary: str, fill_value: complex, output_dtype: Any,
        return_info: bool, timeout: Any, tiles: Tiles, progress: Progress,
    ) -> npt.NDArray[Any] | WithInfo:  # fmt: skip
        """Convolve or Correlate: tiled when asked and possible, one-shot otherwise (see :meth:`convserve.Client.convolve`)."""
        if tiles is not None:
            tiled = await _fanout.run_async(self, in1, in2, mode, method, axes, boundary, fill_value, output_dtype, tiles, correlate, timeout, progress)
            if tiled is not None:
                return tiled if return_info else tiled[0]
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        total = self._progress_start(in1, in2, progress)
        stub = self._stub
        if correlate:
            result = await self._run(prepared, stub.Correlate, stub.CorrelateChunked, pb.SignalRequestPart, timeout, stub.CorrelateShared, progress)
        else:
            result = await self._run(prepared, stub.Convolve, stub.ConvolveChunked, pb.SignalRequestPart, timeout, stub.ConvolveShared, progress)
        if progress is not None and prepared.streamed is None:  # a chunked call reported its bytes as it sent them
            progress(total, total)
        return self._finish(result, return_info)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    async def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                         padding: Ints | str = ..., dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ...,
                         pool: Mapping[str, Any] | None = ..., return_info: Literal[False] = ..., *, timeout: float | None = ...) -> npt.NDArray[Any]: ...
    @overload
    async def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                         padding: Ints | str = ..., dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ...,
                         pool: Mapping[str, Any] | None = ..., *, return_info: Literal[True], timeout: float | None = ...) -> WithInfo: ...
    @overload
    async def conv_layer(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                         padding: Ints | str = ..., dilation: Ints = ..., groups: int = ..., padding_mode: str = ..., activation: str | None = ...,
                         pool: Mapping[str, Any] | None = ..., return_info: bool = ..., *, timeout: float | None = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

    async def conv_layer(
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
        """A CNN layer, as ``torch.nn.ConvNd`` (see :meth:`convserve.Client.conv_layer`; torch tensors in, tensors out)."""
        input, weight, bias, restore = _torch.layer_arguments(input, weight, bias)
        flow = self._layer_flow(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool)
        stub = self._stub
        result = await self._drive(flow, lambda prepared: self._run(prepared, stub.ConvLayer, stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout), timeout)
        return self._finish(result, return_info, restore)

    async def register_weights(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, *, timeout: float | None = _DEFAULT) -> Weights:
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
        return await self._register(weight, bias, timeout)

    # The overloads tell an IDE and mypy the result type of return_info=False and of return_info=True.
    # fmt: off
    @overload
    async def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                             padding: Ints = ..., output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., return_info: Literal[False] = ..., *,
                             timeout: float | None = ...) -> npt.NDArray[Any]: ...
    @overload
    async def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                             padding: Ints = ..., output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., *, return_info: Literal[True],
                             timeout: float | None = ...) -> WithInfo: ...
    @overload
    async def conv_transpose(self, input: npt.ArrayLike, weight: npt.ArrayLike | Weights, bias: npt.ArrayLike | None = ..., stride: Ints = ...,
                             padding: Ints = ..., output_padding: Ints = ..., groups: int = ..., dilation: Ints = ..., return_info: bool = ..., *,
                             timeout: float | None = ...) -> npt.NDArray[Any] | WithInfo: ...
    # fmt: on

    async def conv_transpose(
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
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, float32 or float64 (a tensor gives a tensor back).
        weight : array_like, torch.Tensor or Weights
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
        input, weight, bias, restore = _torch.layer_arguments(input, weight, bias)
        flow = self._transpose_flow(input, weight, bias, stride, padding, output_padding, groups, dilation)
        result = await self._drive(flow, lambda request: self._unary(self._stub.ConvTranspose, request, timeout), timeout)
        return self._finish(result, return_info, restore)

    async def convolve_stream(
        self,
        blocks: AsyncIterable[npt.ArrayLike] | Iterable[npt.ArrayLike],
        kernel: npt.ArrayLike,
        output_dtype: npt.DTypeLike | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[npt.NDArray[Any]]:
        """Convolve an unbounded signal block by block (see :meth:`convserve.Client.convolve_stream`).

        ``blocks`` may be an async iterable or a plain iterable; output blocks are yielded as they are ready.
        A refused stream is started again only while none of ``blocks`` has gone out.
        """
        config = self._stream_config(kernel, output_dtype)
        source = _blocks.AsyncBlocks(blocks)
        ends = self._deadline(timeout)  # None (the default) means no deadline for a stream
        attempt = 0
        while True:
            current = _blocks.Attempt()
            answered = False
            current.call = self._stub.ConvolveStream(source.requests(config, current, self._stream_block), timeout=self._left(ends), metadata=self.metadata)
            witness = StatusWitness(current.call)
            try:
                async for response in current.call:
                    answered = True
                    yield self._stream_output(response)
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(witness.error(rpc_error), self.target)
            fresh = source.give_up(current) and not answered
            wait = self._retry_wait(attempt, error, ends) if fresh else None
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def server_info(self, *, timeout: float | None = _DEFAULT) -> ServerInfo:
        """Return the server's version, limits and capabilities."""
        return self._server_info(await self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))
