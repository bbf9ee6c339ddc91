"""One table from domain errors to gRPC status codes (never INTERNAL for bad input)."""

from __future__ import annotations

import contextlib
import logging
import uuid

import grpc

from ..errors import InputError, InvalidCiphertext, ModelError, ParameterError
from .registry import ModelNotServed
from .state import StateDataLost, StateUnavailable

log = logging.getLogger("heml.server")


class RequestError(Exception):
    """A request-level failure with an explicit status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


STATUS_OF = (
    (StateUnavailable, grpc.StatusCode.UNAVAILABLE),  # shared state unreachable: fail closed
    (StateDataLost, grpc.StatusCode.FAILED_PRECONDITION),  # counts lost: an operator acts
    (ModelNotServed, grpc.StatusCode.NOT_FOUND),
    (InvalidCiphertext, grpc.StatusCode.INVALID_ARGUMENT),
    (ParameterError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RequestError):
        return exc.code, str(exc)
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code, str(exc)
    incident = uuid.uuid4().hex[:12]
    log.exception("internal error %s", incident)
    return grpc.StatusCode.INTERNAL, f"internal server error (incident {incident})"


@contextlib.contextmanager
def abort_on_error(context: grpc.ServicerContext):
    """Turn any exception raised inside into ``context.abort`` with the mapped status."""
    try:
        yield
    except grpc.RpcError:
        raise  # already aborted
    except Exception as exc:
        if context.code() is not None:
            raise  # context.abort() ran inside (it raises a bare Exception): keep its status
        code, message = status_for(exc)
        context.abort(code, message)
