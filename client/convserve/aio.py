"""``convserve.AsyncClient``: the asyncio twin of :class:`convserve.Client`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy.typing as npt

from convserve import _blocks, _chunked as _chunking
from convserve._aio_status import StatusWitness
from convserve._base import _DEFAULT, Axes, BaseClient, Prepared, ServerInfo, Weights
from convserve.errors import NotFoundError, from_rpc_error
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc


class AsyncClient(BaseClient):
    """An asyncio convserve client; use it as an async context manager.

    Same arguments and methods as :class:`convserve.Client`, each method a coroutine.

    Examples
    --------
    >>> async with convserve.AsyncClient() as client:     # doctest: +SKIP
    ...     two_dice = await client.convolve(die, die)
    """

    def __init__(self, target: str = "127.0.0.1:50051", **options: Any) -> None:
        super().__init__(target, **options)
        if self.credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=self.channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, self.credentials, options=self.channel_options)
        self._stub = pb_grpc.ConvolutionServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel and release any shared-memory regions."""
        self._close_shared()
        await self._channel.close()

    async def _call(self, method: Callable[..., Any], request: Any, timeout: Any) -> Any:
        """One RPC with the deadline, credentials and the retry rule; errors become ConvserveError."""
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self._left(ends), metadata=self.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.target)
            wait = self._retry_wait(attempt, error, ends) if self._client_retries(request) else None
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def _chunked_call(self, prepared: Prepared, method: Callable[..., Any], part_type: Any, timeout: Any) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """A chunked call, retried by the client as a fresh stream (see :meth:`convserve.Client._chunked_call`)."""
        assert prepared.streamed is not None
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            parts = _chunking.request_parts(prepared.request, prepared.streamed, part_type)
            call = method(parts, timeout=self._left(ends), metadata=self.metadata)
            witness = StatusWitness(call)
            try:
                return await _chunking.assemble_async(call)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(witness.error(rpc_error), self.target)
            wait = self._retry_wait(attempt, error, ends)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def _run(
        self, prepared: Prepared, unary: Callable[..., Any], chunked: Callable[..., Any], part_type: Any, timeout: Any, shared: Callable[..., Any] | None = None
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """Send a prepared request unary or as a chunked stream; return the result and its info."""
        if prepared.shared is not None and shared is not None and prepared.regions is not None:
            ok = False
            try:
                result = self._from_shared(await self._call(shared, prepared.shared, timeout), prepared.regions)
                ok = True
                return result
            finally:
                self._end_shared(prepared.regions, ok)
        if prepared.streamed is None:
            return self._from_unary(await self._call(unary, prepared.request, timeout))
        return await self._chunked_call(prepared, chunked, part_type, timeout)

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
        timeout: Any = _DEFAULT,
    ) -> Any:
        """Convolve on the server, as ``scipy.signal.convolve`` (see :meth:`convserve.Client.convolve`)."""
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        stub = self._stub
        result = await self._run(prepared, stub.Convolve, stub.ConvolveChunked, pb.SignalRequestPart, timeout, stub.ConvolveShared)
        return self._finish(result, return_info)

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
        timeout: Any = _DEFAULT,
    ) -> Any:
        """Cross-correlate on the server, as ``scipy.signal.correlate`` (see :meth:`convserve.Client.correlate`)."""
        prepared = self._signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        stub = self._stub
        result = await self._run(prepared, stub.Correlate, stub.CorrelateChunked, pb.SignalRequestPart, timeout, stub.CorrelateShared)
        return self._finish(result, return_info)

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
        timeout: Any = _DEFAULT,
    ) -> Any:
        """A CNN layer, as ``torch.nn.ConvNd`` (see :meth:`convserve.Client.conv_layer`)."""
        prepared = self._layer_request(input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool)
        try:
            result = await self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
        except NotFoundError:
            if not isinstance(weight, Weights):
                raise
            fresh = await self.register_weights(weight.weight, weight.bias, timeout=timeout)  # evicted: register again, once
            prepared = self._layer_request(input, fresh, None, stride, padding, dilation, groups, padding_mode, activation, pool)
            try:
                result = await self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
            except NotFoundError:  # another replica answered (round robin): send the weights with the call
                prepared = self._layer_request(input, weight.weight, weight.bias, stride, padding, dilation, groups, padding_mode, activation, pool)
                result = await self._run(prepared, self._stub.ConvLayer, self._stub.ConvLayerChunked, pb.ConvLayerRequestPart, timeout)
        return self._finish(result, return_info)

    async def register_weights(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, *, timeout: Any = _DEFAULT) -> Weights:
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
        response = await self._call(self._stub.RegisterWeights, request, timeout)
        return Weights(response.weights_id, w, b)

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
            response = await self._call(self._stub.ConvTranspose, request, timeout)
        except NotFoundError:
            if not isinstance(weight, Weights):
                raise
            fresh = await self.register_weights(weight.weight, weight.bias, timeout=timeout)  # evicted: register again, once
            request = self._transpose_request(input, fresh, None, stride, padding, output_padding, groups, dilation)
            try:
                response = await self._call(self._stub.ConvTranspose, request, timeout)
            except NotFoundError:  # another replica answered (round robin): send the weights with the call
                request = self._transpose_request(input, weight.weight, weight.bias, stride, padding, output_padding, groups, dilation)
                response = await self._call(self._stub.ConvTranspose, request, timeout)
        return self._finish(self._from_unary(response), return_info)

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

    async def server_info(self, *, timeout: Any = _DEFAULT) -> ServerInfo:
        """Return the server's version, limits and capabilities."""
        return self._server_info(await self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))
