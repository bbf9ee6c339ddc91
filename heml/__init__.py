"""heml: differentially private linear models, scored on CKKS-encrypted features over gRPC.

Public surface: ``export``, ``LinearModel``, ``serve``, ``Client`` and the error types.
"""

from ._export import export
from ._lazy import lazy_attributes
from ._version import PROTOCOL_VERSION, __version__
from .errors import (
    HemlError,
    InputError,
    InsecureTransport,
    InvalidCiphertext,
    KeyFileError,
    ModelError,
    ModelNotFound,
    OutOfBoundsError,
    ParameterError,
    RemoteError,
    ReplyRejected,
    ServerUnavailable,
    UnsupportedEstimatorError,
)
from .model import LinearModel

__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "HemlError",
    "InputError",
    "InsecureTransport",
    "InvalidCiphertext",
    "KeyFileError",
    "LinearModel",
    "ModelError",
    "ModelNotFound",
    "OutOfBoundsError",
    "ParameterError",
    "RemoteError",
    "ReplyRejected",
    "ServerUnavailable",
    "UnsupportedEstimatorError",
    "__version__",
    "export",
    "serve",
]


# gRPC-dependent parts load on first use, so `import heml` stays light
__getattr__, _ = lazy_attributes(__name__, {"Client": ".client", "serve": ".server"}, __all__)
