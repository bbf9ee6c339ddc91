"""heml: differentially private linear models, scored on CKKS-encrypted features over gRPC.

Public surface: ``export``, ``LinearModel``, ``serve``, ``Client`` and the error types.
"""

from ._export import export
from ._version import PROTOCOL_VERSION, __version__
from .errors import (
    HemlError,
    InputError,
    InvalidCiphertext,
    KeyFileError,
    ModelError,
    ModelNotFound,
    OutOfBoundsError,
    ParameterError,
    RemoteError,
    ServerUnavailable,
    UnsupportedEstimatorError,
)
from .model import LinearModel

__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "HemlError",
    "InputError",
    "InvalidCiphertext",
    "KeyFileError",
    "LinearModel",
    "ModelError",
    "ModelNotFound",
    "OutOfBoundsError",
    "ParameterError",
    "RemoteError",
    "ServerUnavailable",
    "UnsupportedEstimatorError",
    "__version__",
    "export",
    "serve",
]


def __getattr__(name: str):
    # gRPC-dependent parts load on first use, so `import heml` stays light
    if name == "Client":
        from .client import Client

        return Client
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module 'heml' has no attribute {name!r}")
