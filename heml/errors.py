"""One exception hierarchy for everything heml raises.

HemlError
├── ModelError (ValueError)          invalid or unsupported model, artifact or export
│   └── UnsupportedEstimatorError
├── InputError (ValueError)          bad features given to predict*
│   └── OutOfBoundsError             values outside the model's declared bounds
├── ParameterError (ValueError)      HE parameters that are weak, unknown or inconsistent
├── InvalidCiphertext (ValueError)   bytes that are not a valid ciphertext for the parameters
├── KeyFileError                     unreadable or foreign key files
├── InsecureTransport (ValueError)   a plaintext connection to another machine, not allowed
└── RemoteError                      a failed call to a server (carries the gRPC code)
    ├── ServerUnavailable
    ├── ModelNotFound
    ├── InvalidRequest
    ├── DeadlineExceeded
    ├── ResourceExhausted
    ├── Unauthenticated
    ├── PermissionDenied
    ├── VersionMismatch
    └── ReplyRejected                a reply no honest server produces (client-side check)
"""

from __future__ import annotations


class HemlError(Exception):
    """Base class of every error heml raises on purpose."""


class ModelError(HemlError, ValueError):
    """An invalid, inconsistent or unsupported model artifact."""


class UnsupportedEstimatorError(ModelError, TypeError):
    """``heml.export`` was given an estimator it cannot turn into a linear model."""


class InputError(HemlError, ValueError):
    """Features given to ``predict*`` have the wrong shape, names or values.

    ``rows`` holds the 0-based indices, within the array or DataFrame given to the call, of the
    rows the message names (empty when it names none). ``located(describe)`` renders the message
    with each of those rows described another way, e.g. as the CSV line `heml predict` read it
    from.
    """

    def __init__(
        self, message: str, *, rows: tuple[int, ...] = (), template: str | None = None
    ) -> None:
        super().__init__(message)
        self.rows = tuple(int(r) for r in rows)
        self._template = template  # the message with "{0}", "{1}", ... where rows are named

    @classmethod
    def naming_rows(cls, template: str, *rows: int) -> InputError:
        """An error whose ``template`` names row ``rows[i]`` where it says ``{i}`` (other
        braces in the template must be doubled, as for ``str.format``)."""
        rows = tuple(int(r) for r in rows)
        return cls(template.format(*(f"row {r}" for r in rows)), rows=rows, template=template)

    def located(self, describe) -> str:
        """The message with each row it names replaced by ``describe(row)``."""
        if self._template is None:
            return str(self)
        return self._template.format(*(describe(r) for r in self.rows))


class OutOfBoundsError(InputError):
    """Feature values outside the model's declared bounds (the model's policy is "error")."""


class ParameterError(HemlError, ValueError):
    """HE parameters that are not 128-bit secure, unknown, or do not match the model."""


class InvalidCiphertext(HemlError, ValueError):
    """Bytes that are not a well-formed ciphertext for the expected parameters."""


class KeyFileError(HemlError):
    """A key file that cannot be read, is not heml's, or does not match the server's parameters."""


class InsecureTransport(HemlError, ValueError):
    """A plaintext connection to a target that is not on this machine, without ``insecure``."""


class RemoteError(HemlError):
    """A call to a heml server failed; ``code`` is the gRPC status code name."""

    def __init__(self, message: str, *, code: str = "UNKNOWN", details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ServerUnavailable(RemoteError):
    """The server could not be reached or is shutting down (retried before this is raised)."""


class ModelNotFound(RemoteError, LookupError):
    """The server serves no model (or version) by that name."""


class InvalidRequest(RemoteError, ValueError):
    """The server rejected the request as malformed (INVALID_ARGUMENT / FAILED_PRECONDITION)."""


class DeadlineExceeded(RemoteError, TimeoutError):
    """The call did not finish within its deadline."""


class ResourceExhausted(RemoteError):
    """A size limit or quota was hit; ``retry_after`` (seconds) is set when the server says."""

    retry_after: float | None = None


class Unauthenticated(RemoteError, PermissionError):
    """Missing or wrong API key."""


class PermissionDenied(RemoteError, PermissionError):
    """The API key is valid but not allowed to do this."""


class VersionMismatch(RemoteError):
    """The server speaks another major protocol version."""


class ReplyRejected(RemoteError):
    """The server's reply failed the client's checks: wrong shape or size, or a decrypted value
    outside what the model's plan allows. Such a reply is never returned, and the key that
    decrypted it is not used with that model again (the failure itself is a signal the server
    could learn from)."""
