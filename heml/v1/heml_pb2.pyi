from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    REGRESSION: _ClassVar[Task]
    BINARY: _ClassVar[Task]
    MULTICLASS: _ClassVar[Task]

class Link(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_UNSPECIFIED: _ClassVar[Link]
    IDENTITY: _ClassVar[Link]
    LOGISTIC: _ClassVar[Link]
    SOFTMAX: _ClassVar[Link]
    OVR_LOGISTIC: _ClassVar[Link]
    MODIFIED_HUBER: _ClassVar[Link]
    NO_PROBABILITY: _ClassVar[Link]
    EXP: _ClassVar[Link]

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYOUT_UNSPECIFIED: _ClassVar[Layout]
    ROW: _ClassVar[Layout]
    COLUMN: _ClassVar[Layout]
    PRIVATE: _ClassVar[Layout]
TASK_UNSPECIFIED: Task
REGRESSION: Task
BINARY: Task
MULTICLASS: Task
LINK_UNSPECIFIED: Link
IDENTITY: Link
LOGISTIC: Link
SOFTMAX: Link
OVR_LOGISTIC: Link
MODIFIED_HUBER: Link
NO_PROBABILITY: Link
EXP: Link
LAYOUT_UNSPECIFIED: Layout
ROW: Layout
COLUMN: Layout
PRIVATE: Layout

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "server")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    server: ServerInfo
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., server: _Optional[_Union[ServerInfo, _Mapping]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("protocol_version", "server_version", "tenseal_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSEAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    server_version: str
    tenseal_version: str
    def __init__(self, protocol_version: _Optional[str] = ..., server_version: _Optional[str] = ..., tenseal_version: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class HEParameters(_message.Message):
    __slots__ = ("scheme", "poly_modulus_degree", "coeff_modulus", "security_bits", "seed_prng")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    POLY_MODULUS_DEGREE_FIELD_NUMBER: _ClassVar[int]
    COEFF_MODULUS_FIELD_NUMBER: _ClassVar[int]
    SECURITY_BITS_FIELD_NUMBER: _ClassVar[int]
    SEED_PRNG_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    poly_modulus_degree: int
    coeff_modulus: _containers.RepeatedScalarFieldContainer[int]
    security_bits: int
    seed_prng: str
    def __init__(self, scheme: _Optional[str] = ..., poly_modulus_degree: _Optional[int] = ..., coeff_modulus: _Optional[_Iterable[int]] = ..., security_bits: _Optional[int] = ..., seed_prng: _Optional[str] = ...) -> None: ...

class LayoutPlan(_message.Message):
    __slots__ = ("layout", "params", "log2_scale_x", "log2_scale_w", "digit_bits", "digits", "reply_bits", "error_bound", "max_block_samples", "log2_flood", "hiding_bits")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LOG2_SCALE_X_FIELD_NUMBER: _ClassVar[int]
    LOG2_SCALE_W_FIELD_NUMBER: _ClassVar[int]
    DIGIT_BITS_FIELD_NUMBER: _ClassVar[int]
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    REPLY_BITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_BOUND_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOG2_FLOOD_FIELD_NUMBER: _ClassVar[int]
    HIDING_BITS_FIELD_NUMBER: _ClassVar[int]
    layout: Layout
    params: HEParameters
    log2_scale_x: int
    log2_scale_w: int
    digit_bits: int
    digits: int
    reply_bits: int
    error_bound: float
    max_block_samples: int
    log2_flood: float
    hiding_bits: int
    def __init__(self, layout: _Optional[_Union[Layout, str]] = ..., params: _Optional[_Union[HEParameters, _Mapping]] = ..., log2_scale_x: _Optional[int] = ..., log2_scale_w: _Optional[int] = ..., digit_bits: _Optional[int] = ..., digits: _Optional[int] = ..., reply_bits: _Optional[int] = ..., error_bound: _Optional[float] = ..., max_block_samples: _Optional[int] = ..., log2_flood: _Optional[float] = ..., hiding_bits: _Optional[int] = ...) -> None: ...

class FeatureBounds(_message.Message):
    __slots__ = ("lower", "upper", "out_of_bounds", "encode_lower", "encode_upper")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_LOWER_FIELD_NUMBER: _ClassVar[int]
    ENCODE_UPPER_FIELD_NUMBER: _ClassVar[int]
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    out_of_bounds: str
    encode_lower: _containers.RepeatedScalarFieldContainer[float]
    encode_upper: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ..., out_of_bounds: _Optional[str] = ..., encode_lower: _Optional[_Iterable[float]] = ..., encode_upper: _Optional[_Iterable[float]] = ...) -> None: ...

class DPGuarantee(_message.Message):
    __slots__ = ("private", "epsilon", "delta", "mechanism", "neighbouring", "accountant", "not_covered", "details_json")
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURING_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    NOT_COVERED_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    private: bool
    epsilon: float
    delta: float
    mechanism: str
    neighbouring: str
    accountant: str
    not_covered: _containers.RepeatedScalarFieldContainer[str]
    details_json: str
    def __init__(self, private: _Optional[bool] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., mechanism: _Optional[str] = ..., neighbouring: _Optional[str] = ..., accountant: _Optional[str] = ..., not_covered: _Optional[_Iterable[str]] = ..., details_json: _Optional[str] = ...) -> None: ...

class AuditSummary(_message.Message):
    __slots__ = ("present", "json")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    present: bool
    json: str
    def __init__(self, present: _Optional[bool] = ..., json: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "task", "n_features", "n_outputs", "link", "classes", "classes_json", "feature_names", "preprocessing_json", "bounds", "layouts", "dp", "audit", "server", "estimator", "fingerprint", "output_ndim", "tolerance", "classes_dtype", "privacy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_JSON_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NDIM_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    task: Task
    n_features: int
    n_outputs: int
    link: Link
    classes: _containers.RepeatedScalarFieldContainer[str]
    classes_json: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    preprocessing_json: str
    bounds: FeatureBounds
    layouts: _containers.RepeatedCompositeFieldContainer[LayoutPlan]
    dp: DPGuarantee
    audit: AuditSummary
    server: ServerInfo
    estimator: str
    fingerprint: str
    output_ndim: int
    tolerance: float
    classes_dtype: str
    privacy: ModelPrivacy
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., task: _Optional[_Union[Task, str]] = ..., n_features: _Optional[int] = ..., n_outputs: _Optional[int] = ..., link: _Optional[_Union[Link, str]] = ..., classes: _Optional[_Iterable[str]] = ..., classes_json: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., preprocessing_json: _Optional[str] = ..., bounds: _Optional[_Union[FeatureBounds, _Mapping]] = ..., layouts: _Optional[_Iterable[_Union[LayoutPlan, _Mapping]]] = ..., dp: _Optional[_Union[DPGuarantee, _Mapping]] = ..., audit: _Optional[_Union[AuditSummary, _Mapping]] = ..., server: _Optional[_Union[ServerInfo, _Mapping]] = ..., estimator: _Optional[str] = ..., fingerprint: _Optional[str] = ..., output_ndim: _Optional[int] = ..., tolerance: _Optional[float] = ..., classes_dtype: _Optional[str] = ..., privacy: _Optional[_Union[ModelPrivacy, _Mapping]] = ...) -> None: ...

class ModelPrivacy(_message.Message):
    __slots__ = ("enabled", "max_predictions_per_key", "hiding_bits")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_PREDICTIONS_PER_KEY_FIELD_NUMBER: _ClassVar[int]
    HIDING_BITS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    max_predictions_per_key: int
    hiding_bits: int
    def __init__(self, enabled: _Optional[bool] = ..., max_predictions_per_key: _Optional[int] = ..., hiding_bits: _Optional[int] = ...) -> None: ...

class RegisterKeyRequest(_message.Message):
    __slots__ = ("model", "version", "public_key", "key_nonce")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_NONCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    public_key: bytes
    key_nonce: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., public_key: _Optional[bytes] = ..., key_nonce: _Optional[bytes] = ...) -> None: ...

class RegisterKeyResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "layout", "n", "samples_per_ciphertext", "ciphertexts", "total_ciphertexts", "request_id", "key_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    layout: Layout
    n: int
    samples_per_ciphertext: int
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    total_ciphertexts: int
    request_id: str
    key_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., layout: _Optional[_Union[Layout, str]] = ..., n: _Optional[int] = ..., samples_per_ciphertext: _Optional[int] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ..., total_ciphertexts: _Optional[int] = ..., request_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "layout", "n", "reply_bits", "replies", "request_id", "server_seconds", "server_cpu_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REPLY_BITS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    layout: Layout
    n: int
    reply_bits: int
    replies: _containers.RepeatedScalarFieldContainer[bytes]
    request_id: str
    server_seconds: float
    server_cpu_seconds: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., layout: _Optional[_Union[Layout, str]] = ..., n: _Optional[int] = ..., reply_bits: _Optional[int] = ..., replies: _Optional[_Iterable[bytes]] = ..., request_id: _Optional[str] = ..., server_seconds: _Optional[float] = ..., server_cpu_seconds: _Optional[float] = ...) -> None: ...
