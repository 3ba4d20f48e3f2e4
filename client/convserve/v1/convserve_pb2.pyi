from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_COMPLEX64: _ClassVar[DType]
    DTYPE_COMPLEX128: _ClassVar[DType]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_FULL: _ClassVar[Mode]
    MODE_SAME: _ClassVar[Mode]
    MODE_VALID: _ClassVar[Mode]
    MODE_CIRCULAR: _ClassVar[Mode]

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_AUTO: _ClassVar[Method]
    METHOD_DIRECT: _ClassVar[Method]
    METHOD_FFT: _ClassVar[Method]
    METHOD_OVERLAP_ADD: _ClassVar[Method]

class Boundary(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOUNDARY_UNSPECIFIED: _ClassVar[Boundary]
    BOUNDARY_FILL: _ClassVar[Boundary]
    BOUNDARY_WRAP: _ClassVar[Boundary]
    BOUNDARY_SYMMETRIC: _ClassVar[Boundary]
    BOUNDARY_REFLECT: _ClassVar[Boundary]
    BOUNDARY_EDGE: _ClassVar[Boundary]

class PaddingPreset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PADDING_PRESET_UNSPECIFIED: _ClassVar[PaddingPreset]
    PADDING_PRESET_SAME: _ClassVar[PaddingPreset]
    PADDING_PRESET_VALID: _ClassVar[PaddingPreset]

class PaddingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PADDING_MODE_UNSPECIFIED: _ClassVar[PaddingMode]
    PADDING_MODE_ZEROS: _ClassVar[PaddingMode]
    PADDING_MODE_REFLECT: _ClassVar[PaddingMode]
    PADDING_MODE_REPLICATE: _ClassVar[PaddingMode]
    PADDING_MODE_CIRCULAR: _ClassVar[PaddingMode]

class Activation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVATION_UNSPECIFIED: _ClassVar[Activation]
    ACTIVATION_NONE: _ClassVar[Activation]
    ACTIVATION_RELU: _ClassVar[Activation]

class PoolKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOL_KIND_UNSPECIFIED: _ClassVar[PoolKind]
    POOL_KIND_MAX: _ClassVar[PoolKind]
    POOL_KIND_AVG: _ClassVar[PoolKind]
DTYPE_UNSPECIFIED: DType
DTYPE_BOOL: DType
DTYPE_UINT8: DType
DTYPE_INT8: DType
DTYPE_UINT16: DType
DTYPE_INT16: DType
DTYPE_UINT32: DType
DTYPE_INT32: DType
DTYPE_UINT64: DType
DTYPE_INT64: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_COMPLEX64: DType
DTYPE_COMPLEX128: DType
MODE_UNSPECIFIED: Mode
MODE_FULL: Mode
MODE_SAME: Mode
MODE_VALID: Mode
MODE_CIRCULAR: Mode
METHOD_UNSPECIFIED: Method
METHOD_AUTO: Method
METHOD_DIRECT: Method
METHOD_FFT: Method
METHOD_OVERLAP_ADD: Method
BOUNDARY_UNSPECIFIED: Boundary
BOUNDARY_FILL: Boundary
BOUNDARY_WRAP: Boundary
BOUNDARY_SYMMETRIC: Boundary
BOUNDARY_REFLECT: Boundary
BOUNDARY_EDGE: Boundary
PADDING_PRESET_UNSPECIFIED: PaddingPreset
PADDING_PRESET_SAME: PaddingPreset
PADDING_PRESET_VALID: PaddingPreset
PADDING_MODE_UNSPECIFIED: PaddingMode
PADDING_MODE_ZEROS: PaddingMode
PADDING_MODE_REFLECT: PaddingMode
PADDING_MODE_REPLICATE: PaddingMode
PADDING_MODE_CIRCULAR: PaddingMode
ACTIVATION_UNSPECIFIED: Activation
ACTIVATION_NONE: Activation
ACTIVATION_RELU: Activation
POOL_KIND_UNSPECIFIED: PoolKind
POOL_KIND_MAX: PoolKind
POOL_KIND_AVG: PoolKind

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("real", "imag")
    REAL_FIELD_NUMBER: _ClassVar[int]
    IMAG_FIELD_NUMBER: _ClassVar[int]
    real: float
    imag: float
    def __init__(self, real: _Optional[float] = ..., imag: _Optional[float] = ...) -> None: ...

class Axes(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("in1", "in2", "mode", "method", "axes", "boundary", "fill_value", "output_dtype")
    IN1_FIELD_NUMBER: _ClassVar[int]
    IN2_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    FILL_VALUE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    in1: Tensor
    in2: Tensor
    mode: Mode
    method: Method
    axes: Axes
    boundary: Boundary
    fill_value: Scalar
    output_dtype: DType
    def __init__(self, in1: _Optional[_Union[Tensor, _Mapping]] = ..., in2: _Optional[_Union[Tensor, _Mapping]] = ..., mode: _Optional[_Union[Mode, str]] = ..., method: _Optional[_Union[Method, str]] = ..., axes: _Optional[_Union[Axes, _Mapping]] = ..., boundary: _Optional[_Union[Boundary, str]] = ..., fill_value: _Optional[_Union[Scalar, _Mapping]] = ..., output_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class ComputeInfo(_message.Message):
    __slots__ = ("method", "compute_seconds", "warnings")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    method: str
    compute_seconds: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, method: _Optional[str] = ..., compute_seconds: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class SignalResponse(_message.Message):
    __slots__ = ("result", "info")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    result: Tensor
    info: ComputeInfo
    def __init__(self, result: _Optional[_Union[Tensor, _Mapping]] = ..., info: _Optional[_Union[ComputeInfo, _Mapping]] = ...) -> None: ...

class Padding(_message.Message):
    __slots__ = ("sizes", "preset")
    SIZES_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    preset: PaddingPreset
    def __init__(self, sizes: _Optional[_Iterable[int]] = ..., preset: _Optional[_Union[PaddingPreset, str]] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("kind", "kernel_size", "stride", "padding")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    kind: PoolKind
    kernel_size: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[_Union[PoolKind, str]] = ..., kernel_size: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Iterable[int]] = ...) -> None: ...

class ConvLayerRequest(_message.Message):
    __slots__ = ("input", "weight", "bias", "stride", "padding", "dilation", "groups", "padding_mode", "activation", "pool", "weights_id")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    DILATION_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PADDING_MODE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ID_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    weight: Tensor
    bias: Tensor
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: Padding
    dilation: _containers.RepeatedScalarFieldContainer[int]
    groups: int
    padding_mode: PaddingMode
    activation: Activation
    pool: Pool
    weights_id: str
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., weight: _Optional[_Union[Tensor, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Union[Padding, _Mapping]] = ..., dilation: _Optional[_Iterable[int]] = ..., groups: _Optional[int] = ..., padding_mode: _Optional[_Union[PaddingMode, str]] = ..., activation: _Optional[_Union[Activation, str]] = ..., pool: _Optional[_Union[Pool, _Mapping]] = ..., weights_id: _Optional[str] = ...) -> None: ...

class RegisterWeightsRequest(_message.Message):
    __slots__ = ("weight", "bias")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    weight: Tensor
    bias: Tensor
    def __init__(self, weight: _Optional[_Union[Tensor, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RegisterWeightsResponse(_message.Message):
    __slots__ = ("weights_id",)
    WEIGHTS_ID_FIELD_NUMBER: _ClassVar[int]
    weights_id: str
    def __init__(self, weights_id: _Optional[str] = ...) -> None: ...

class ConvTransposeRequest(_message.Message):
    __slots__ = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation", "weights_id")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PADDING_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DILATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ID_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    weight: Tensor
    bias: Tensor
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: _containers.RepeatedScalarFieldContainer[int]
    output_padding: _containers.RepeatedScalarFieldContainer[int]
    groups: int
    dilation: _containers.RepeatedScalarFieldContainer[int]
    weights_id: str
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., weight: _Optional[_Union[Tensor, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Iterable[int]] = ..., output_padding: _Optional[_Iterable[int]] = ..., groups: _Optional[int] = ..., dilation: _Optional[_Iterable[int]] = ..., weights_id: _Optional[str] = ...) -> None: ...

class ConvLayerResponse(_message.Message):
    __slots__ = ("output", "info")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    info: ComputeInfo
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., info: _Optional[_Union[ComputeInfo, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_elements", "max_request_bytes", "max_output_bytes", "max_concurrent_requests")
    MAX_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_elements: int
    max_request_bytes: int
    max_output_bytes: int
    max_concurrent_requests: int
    def __init__(self, max_elements: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "limits", "dtypes", "methods", "fftw_threads", "wisdom", "workers")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    FFTW_THREADS_FIELD_NUMBER: _ClassVar[int]
    WISDOM_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    limits: Limits
    dtypes: _containers.RepeatedScalarFieldContainer[DType]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    fftw_threads: int
    wisdom: str
    workers: int
    def __init__(self, version: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., fftw_threads: _Optional[int] = ..., wisdom: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("field", "offset", "data")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    field: str
    offset: int
    data: bytes
    def __init__(self, field: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SignalRequestPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SignalRequest
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[SignalRequest, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class ConvLayerRequestPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ConvLayerRequest
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[ConvLayerRequest, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class ResponseHeader(_message.Message):
    __slots__ = ("result", "info")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    result: Tensor
    info: ComputeInfo
    def __init__(self, result: _Optional[_Union[Tensor, _Mapping]] = ..., info: _Optional[_Union[ComputeInfo, _Mapping]] = ...) -> None: ...

class ResponsePart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("kernel", "output_dtype")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    kernel: Tensor
    output_dtype: DType
    def __init__(self, kernel: _Optional[_Union[Tensor, _Mapping]] = ..., output_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "block")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    block: Tensor
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., block: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("block", "warnings")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    block: Tensor
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, block: _Optional[_Union[Tensor, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class SharedTensor(_message.Message):
    __slots__ = ("region", "offset", "dtype", "shape", "capability")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    capability: bytes
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., capability: _Optional[bytes] = ...) -> None: ...

class SharedBuffer(_message.Message):
    __slots__ = ("region", "offset", "size", "capability")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    size: int
    capability: bytes
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., capability: _Optional[bytes] = ...) -> None: ...

class SharedSignalRequest(_message.Message):
    __slots__ = ("options", "in1", "in2", "result")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IN1_FIELD_NUMBER: _ClassVar[int]
    IN2_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    options: SignalRequest
    in1: SharedTensor
    in2: SharedTensor
    result: SharedBuffer
    def __init__(self, options: _Optional[_Union[SignalRequest, _Mapping]] = ..., in1: _Optional[_Union[SharedTensor, _Mapping]] = ..., in2: _Optional[_Union[SharedTensor, _Mapping]] = ..., result: _Optional[_Union[SharedBuffer, _Mapping]] = ...) -> None: ...

class SharedResponse(_message.Message):
    __slots__ = ("result", "info")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    result: Tensor
    info: ComputeInfo
    def __init__(self, result: _Optional[_Union[Tensor, _Mapping]] = ..., info: _Optional[_Union[ComputeInfo, _Mapping]] = ...) -> None: ...
