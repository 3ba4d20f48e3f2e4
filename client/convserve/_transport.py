"""The I/O of the two twins, side by side: the channel, one RPC under the retry rule, a chunked call
(a fresh stream each attempt), a prepared request (unary, chunked or shared memory) and the driver of
the weights flow (``_base.weights_flow``). ``Client`` and ``AsyncClient`` add the public methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Generator
from typing import Any, Callable

import grpc
import numpy.typing as npt

from convserve import _chunked
from convserve._aio_status import StatusWitness
from convserve._base import BaseClient, Prepared, Register
from convserve._types import Weights
from convserve.errors import ConvserveError, from_rpc_error
from convserve.v1 import convserve_pb2 as pb
from convserve.v1 import convserve_pb2_grpc as pb_grpc

Progress = Callable[[int, int], None] | None


class SyncTransport(BaseClient):
    """The blocking I/O of :class:`convserve.Client`."""

    def _connect(self) -> None:
        """Open the channel and its stub (called by the constructor)."""
        if self.credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self.channel_options)
        else:
            self._channel = grpc.secure_channel(self.target, self.credentials, options=self.channel_options)
        self._stub = pb_grpc.ConvolutionServiceStub(self._channel)
        _chunked.chunked_stubs(self._stub, self._channel)

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

    def _chunked_call(
        self, prepared: Prepared, method: Callable[..., Any], part_type: Any, timeout: Any, progress: Progress = None
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """A chunked call, retried by the client (gRPC must not: see ``RetryPolicy.service_config``).

        Each attempt is a fresh stream from the arrays the client still holds (its progress starts again at 0).
        """
        assert prepared.streamed is not None
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            parts = _chunked.request_parts(prepared.request, prepared.streamed, part_type, progress)
            try:
                return _chunked.assemble(method(parts, timeout=self._left(ends), metadata=self.metadata))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.target)
            wait = self._retry_wait(attempt, error, ends)
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def _run(
        self,
        prepared: Prepared,
        unary: Callable[..., Any],
        chunked: Callable[..., Any],
        part_type: Any,
        timeout: Any,
        shared: Callable[..., Any] | None = None,
        progress: Progress = None,
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """Send a prepared request unary or as a chunked stream (reporting the bytes sent to ``progress``); return the result and its info."""
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
        return self._chunked_call(prepared, chunked, part_type, timeout, progress)

    def _drive(self, flow: Generator[Any, Any, Any], send: Callable[[Any], tuple[npt.NDArray[Any], pb.ComputeInfo]], timeout: Any) -> Any:
        """Run a weights flow (``_base.weights_flow``): send what it yields, register again when it asks."""
        try:
            step = next(flow)
            while True:
                try:
                    outcome = self._register(step.weight, step.bias, timeout) if isinstance(step, Register) else send(step)
                except ConvserveError as error:
                    step = flow.throw(error)
                else:
                    step = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def _register(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None, timeout: Any) -> Weights:
        """The RegisterWeights call."""
        request, w, b = self._weights_request(weight, bias)
        return Weights(self._call(self._stub.RegisterWeights, request, timeout).weights_id, w, b)


class AsyncTransport(BaseClient):
    """The asyncio I/O of :class:`convserve.AsyncClient`."""

    def _connect(self) -> None:
        """Open the channel and its stub (called by the constructor)."""
        if self.credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self.channel_options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, self.credentials, options=self.channel_options)
        self._stub = pb_grpc.ConvolutionServiceStub(self._channel)
        _chunked.chunked_stubs(self._stub, self._channel)

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

    async def _chunked_call(
        self, prepared: Prepared, method: Callable[..., Any], part_type: Any, timeout: Any, progress: Progress = None
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """A chunked call, retried by the client as a fresh stream (see :meth:`convserve.Client._chunked_call`)."""
        assert prepared.streamed is not None
        ends = self._deadline(timeout)
        attempt = 0
        while True:
            parts = _chunked.request_parts(prepared.request, prepared.streamed, part_type, progress)
            call = method(parts, timeout=self._left(ends), metadata=self.metadata)
            witness = StatusWitness(call)
            try:
                return await _chunked.assemble_async(call)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(witness.error(rpc_error), self.target)
            wait = self._retry_wait(attempt, error, ends)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def _run(
        self,
        prepared: Prepared,
        unary: Callable[..., Any],
        chunked: Callable[..., Any],
        part_type: Any,
        timeout: Any,
        shared: Callable[..., Any] | None = None,
        progress: Progress = None,
    ) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """Send a prepared request unary or as a chunked stream (reporting the bytes sent to ``progress``); return the result and its info."""
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
        return await self._chunked_call(prepared, chunked, part_type, timeout, progress)

    async def _drive(self, flow: Generator[Any, Any, Any], send: Callable[[Any], Awaitable[tuple[npt.NDArray[Any], pb.ComputeInfo]]], timeout: Any) -> Any:
        """Run a weights flow (``_base.weights_flow``): send what it yields, register again when it asks."""
        try:
            step = next(flow)
            while True:
                try:
                    outcome = await (self._register(step.weight, step.bias, timeout) if isinstance(step, Register) else send(step))
                except ConvserveError as error:
                    step = flow.throw(error)
                else:
                    step = flow.send(outcome)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: Any) -> tuple[npt.NDArray[Any], pb.ComputeInfo]:
        """One unary call's result and info."""
        return self._from_unary(await self._call(method, request, timeout))

    async def _register(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None, timeout: Any) -> Weights:
        """The RegisterWeights call."""
        request, w, b = self._weights_request(weight, bias)
        return Weights((await self._call(self._stub.RegisterWeights, request, timeout)).weights_id, w, b)
