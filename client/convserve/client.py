"""``convserve.Client``: numpy arrays in, numpy arrays out, over gRPC.

Following httpx's layout, :class:`BaseClient` does everything that needs no I/O (building
requests, decoding responses) and :class:`Client` adds the blocking calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from . import _options, codec
from .errors import from_rpc_error
from .v1 import convserve_pb2 as pb
from .v1 import convserve_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# Large enough for a 64 MiB image (plus its kernel) in one message; the server's limit is its own.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

Response = TypeVar("Response")


@dataclass(frozen=True)
class ComputeInfo:
    """What the server did: the method that ran, its compute time and any warnings."""

    method: str
    compute_seconds: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ServerInfo:
    """The server's version, limits and capabilities."""

    version: str
    max_elements: int
    max_request_bytes: int
    max_output_bytes: int
    max_concurrent_requests: int
    dtypes: tuple[str, ...]
    methods: tuple[str, ...]
    fftw_threads: int
    wisdom: str
    workers: int


class BaseClient:
    """Everything a client does without I/O: request building and response decoding."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.target = target
        self.timeout = timeout
        self.channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]

    @staticmethod
    def _info(message: pb.ComputeInfo) -> ComputeInfo:
        return ComputeInfo(message.method, message.compute_seconds, tuple(message.warnings))

    def _signal_result(self, response: pb.SignalResponse, return_info: bool) -> Any:
        result = np.array(codec.decode(response.result, "result"))  # a writable copy for the caller
        return (result, self._info(response.info)) if return_info else result

    def _layer_result(self, response: pb.ConvLayerResponse, return_info: bool) -> Any:
        result = np.array(codec.decode(response.output, "output"))
        return (result, self._info(response.info)) if return_info else result

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


class Client(BaseClient):
    """A blocking convserve client; use it as a context manager.

    Parameters
    ----------
    target : str
        ``host:port`` of the server (default ``127.0.0.1:50051``).
    timeout : float, optional
        Deadline of each call in seconds (default: none).
    max_message_bytes : int
        Largest message sent or received.

    Examples
    --------
    >>> import numpy as np, convserve
    >>> die = np.full(6, 1 / 6)
    >>> with convserve.Client() as client:           # doctest: +SKIP
    ...     two_dice = client.convolve(die, die)     # P(sum = 2..12)
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(target, timeout=timeout, max_message_bytes=max_message_bytes)
        self._channel = grpc.insecure_channel(target, options=self.channel_options)
        self._stub = pb_grpc.ConvolutionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: Callable[..., Response], request: Any) -> Response:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def convolve(
        self,
        in1: npt.ArrayLike,
        in2: npt.ArrayLike,
        mode: str = "full",
        method: str = "auto",
        axes: int | Sequence[int] | None = None,
        boundary: str = "fill",
        fill_value: complex = 0,
        output_dtype: npt.DTypeLike | None = None,
        return_info: bool = False,
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
        request = _options.signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        return self._signal_result(self._call(self._stub.Convolve, request), return_info)

    def correlate(
        self,
        in1: npt.ArrayLike,
        in2: npt.ArrayLike,
        mode: str = "full",
        method: str = "auto",
        axes: int | Sequence[int] | None = None,
        boundary: str = "fill",
        fill_value: complex = 0,
        output_dtype: npt.DTypeLike | None = None,
        return_info: bool = False,
    ) -> Any:
        """Cross-correlate two N-dimensional arrays on the server, as ``scipy.signal.correlate``.

        The arguments, result and errors are those of :meth:`convolve`.
        """
        request = _options.signal_request(in1, in2, mode, method, axes, boundary, fill_value, output_dtype)
        return self._signal_result(self._call(self._stub.Correlate, request), return_info)

    def conv_layer(
        self,
        input: npt.ArrayLike,
        weight: npt.ArrayLike,
        bias: npt.ArrayLike | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        activation: str | None = None,
        pool: Mapping[str, Any] | None = None,
        return_info: bool = False,
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
        padding : int, tuple of int, "same" or "valid"
        groups : int
        padding_mode : {"zeros", "reflect", "replicate", "circular"}
        activation : {None, "relu"}
        pool : dict, optional
            ``{"kind": "max" | "avg", "kernel_size": k, "stride": k, "padding": 0}``.
        return_info : bool
            Also return a :class:`ComputeInfo`.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, ComputeInfo)
            ``(N, C_out, *spatial_out)`` (unbatched input: no N axis).
        """
        request = _options.conv_layer_request(
            input, weight, bias, stride, padding, dilation, groups, padding_mode, activation, pool
        )
        return self._layer_result(self._call(self._stub.ConvLayer, request), return_info)

    def server_info(self) -> ServerInfo:
        """Return the server's version, limits and capabilities."""
        return self._server_info(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest()))
