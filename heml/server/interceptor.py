"""The interceptor every call (except health checks) passes through.

In order: authenticate the API key (UNAUTHENTICATED), take a slot of the key's concurrency
quota (RESOURCE_EXHAUSTED + ``retry-after``), run the handler, then release the slot, write
one log line and update the metrics. The rejecting handler has the cardinality of the method
it replaces (a streaming method gets a streaming handler), so clients always read a clean
status, never a protocol error.

Prediction quotas need what only the servicer knows (layout, n, the model's geometry), so the
interceptor hands the servicer a context that carries this call's ``Guard``; the servicer calls
``admit(context, block)`` once per block after validating the header and before any HE work.
``admit`` charges the sample slots the server will compute (``computed_samples``), not the
``n`` the client declares.

Keys, quotas and model-privacy keys live in the server's state backend (heml.server.state:
embedded, or Redis with ``--state``). Each charge carries an id unique to the call and the
charge, so a backend that retries after a lost reply cannot count twice; a call answered
UNAVAILABLE (the shared state could not be reached) has its charges voided: it costs nothing.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

import grpc

from .auth import ApiKey, AuthError
from .metrics import WorkerMetrics
from .requestlog import CallRecord, safe_token
from .state import QuotaFull, StateUnavailable, open_state
from .status import RequestError

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
CONCURRENCY_RETRY_AFTER = 1.0  # seconds; a call typically finishes well within this
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class CallContext:
    """The servicer's view of a call's context: the real one, plus ``heml_guard``."""

    def __init__(self, context: grpc.ServicerContext, guard: Guard) -> None:
        self._context = context
        self.heml_guard = guard

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def admit(context, block) -> None:
    """Charge a validated block to the call's limits and quota (servicer hook; raises
    RequestError(RESOURCE_EXHAUSTED)). A no-op for a servicer used without the interceptor."""
    guard = getattr(context, "heml_guard", None)
    if guard is not None:
        guard.admit(block)


def shared_quota(context):
    """The quota backend and the caller's API key id, for a call authenticated by an API key
    on a server with ``api_keys`` (else None)."""
    guard = getattr(context, "heml_guard", None)
    if guard is None or guard.key is None or guard.policy.quotas is None:
        return None
    return guard.policy.quotas, guard.key.key_id


def new_charge_id(context) -> str:
    """An id for one more charge of this call (idempotent charges in the shared state)."""
    guard = getattr(context, "heml_guard", None)
    if guard is None:
        return uuid.uuid4().hex
    return guard.new_charge_id()


def private_keys(context, served):
    """The key registry of a model-privacy model for this call: the server's state backend's
    (shared in Redis), or the model's own store for a servicer used without the interceptor."""
    guard = getattr(context, "heml_guard", None)
    if guard is None:
        return served.private.keys
    return guard.policy.state.private_keys(served)


def note_model(context, name: str, version: int) -> None:
    """Record which served model a metadata call was about (for the log and the metrics)."""
    guard = getattr(context, "heml_guard", None)
    if guard is not None:
        guard.record.model, guard.record.version = name, version


class Guard:
    """One call's state: its key, its concurrency slot, and what it computed."""

    def __init__(
        self,
        policy: SecurityInterceptor,
        record: CallRecord,
        key: ApiKey | None,
        auth_error: str | None,
        *,
        request_id_given: bool = False,
        unavailable: str | None = None,
    ) -> None:
        self.policy = policy
        self.record = record
        self.key = key
        self.auth_error = auth_error
        self.unavailable = unavailable
        self.call_id = uuid.uuid4().hex
        self.charges: list[str] = []  # charge ids of the block in progress (voided on failure)
        self._charge_count = 0
        self.started = time.perf_counter()
        self._context: grpc.ServicerContext | None = None
        self._acquired = False
        self._done = False
        self._lock = threading.Lock()
        self._request_id_set = request_id_given  # metadata x-request-id wins over the body

    # ------------------------------------------------------------ call start and end
    def enter(self, context: grpc.ServicerContext) -> CallContext:
        self._context = context
        context.add_callback(lambda: self.exit("terminated"))  # cancelled or deadline passed
        self.record.peer = safe_token(context.peer(), 80)
        if self.unavailable is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.unavailable)
        if self.auth_error is not None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, self.auth_error)
        key, quotas = self.key, self.policy.quotas
        if key is not None and key.max_concurrent is not None and quotas is not None:
            try:
                busy = quotas.acquire(key.key_id, key.max_concurrent, self.call_id)
            except StateUnavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except QuotaFull:
                context.abort(EXHAUSTED, "quota table full; try again later")
            if busy is not None:
                self.policy.metrics.rejected(key.key_id, "concurrency")
                self._retry_after(CONCURRENCY_RETRY_AFTER)
                context.abort(
                    EXHAUSTED,
                    f"API key {key.key_id!r} has {busy} call(s) in flight, its limit is "
                    f"{key.max_concurrent}; retry when one finishes",
                )
            with self._lock:  # exit() may have run meanwhile (deadline passed, cancelled)
                ended = self._done
                self._acquired = not ended
            if ended:  # nothing else will release the slot: release it now
                quotas.release(key.key_id, self.call_id)
                context.abort(grpc.StatusCode.CANCELLED, "the call ended while it was admitted")
        return CallContext(context, self)

    def exit(self, outcome: str) -> None:
        """Release the slot, log and count (once, from the handler or the RPC callback)."""
        with self._lock:  # enter() reads _done under the same lock after its acquire
            if self._done:
                return
            self._done = True
            acquired = self._acquired
        status = self._status(outcome)
        try:
            if acquired:
                self.policy.quotas.release(self.key.key_id, self.call_id)
            if status == "UNAVAILABLE" and self.charges:
                # the shared state failed during the call: what it charged is undone (now or
                # when the state answers again), so a call that was not served costs nothing
                self.policy.quotas.void(self.charges)
        finally:
            seconds = time.perf_counter() - self.started
            self.record.emit(status, seconds)
            self.policy.metrics.request(self.record.method, self.record.model, status, seconds)

    def _status(self, outcome: str) -> str:
        context = self._context
        code = context.code() if context is not None else None
        if code is not None:
            return code.name
        if outcome == "returned":
            return "OK"
        if context is not None and (outcome == "terminated" or not context.is_active()):
            left = context.time_remaining()  # the client went away or its deadline passed
            return "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"
        return "UNKNOWN"

    def new_charge_id(self) -> str:
        charge_id = f"{self.call_id}.{self._charge_count}"
        self._charge_count += 1
        self.charges.append(charge_id)
        return charge_id

    def _retry_after(self, seconds: float) -> None:
        if self._context is not None and math.isfinite(seconds):
            self._context.set_trailing_metadata((("retry-after", f"{max(seconds, 0.001):.3f}"),))

    # ------------------------------------------------------------ per block (servicer hook)
    def admit(self, block) -> None:
        # a new block starts only after the previous one was answered: its charges were for
        # work the server did, and a later failure of the stream must not void them
        self.charges.clear()
        served, header = block.served, block.header
        rec = self.record
        if not rec.blocks:
            rec.model, rec.version = served.model.name, served.model.version
            rec.layout = block.layout
        elif rec.layout != block.layout:
            rec.layout = "mixed"
        if not self._request_id_set and header.request_id:
            rec.request_id = safe_token(header.request_id)
            self._request_id_set = True
        # a model-privacy model has no ServerScorer; its blocks are all PRIVATE (the servicer
        # refuses other layouts before admit)
        evaluator = served.private if getattr(served, "private", None) else served.scorer
        computed = evaluator.computed_samples(block.layout, block.n, block.s)
        limit = self.policy.max_samples_per_request
        key_id = self.key.key_id if self.key is not None else ""
        if rec.computed + computed > limit:
            self.policy.metrics.rejected(key_id, "request")
            raise RequestError(
                EXHAUSTED,
                f"this call would compute {rec.computed + computed} sample slots, above the "
                f"server's limit of {limit} per call; split the batch over several calls",
            )
        key, quotas = self.key, self.policy.quotas
        if key is not None and key.predictions_per_minute is not None and quotas is not None:
            try:
                wait = quotas.take(
                    key.key_id, computed, key.predictions_per_minute, self.new_charge_id()
                )
            except QuotaFull as exc:
                raise RequestError(EXHAUSTED, "quota table full; try again later") from exc
            except StateUnavailable as exc:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
            if wait is not None:
                self.policy.metrics.rejected(key.key_id, "rate")
                per = key.predictions_per_minute
                if math.isinf(wait):
                    raise RequestError(
                        EXHAUSTED,
                        f"this block computes {computed} sample slots, more than API key "
                        f"{key.key_id!r} may use in a minute ({per}); send smaller blocks "
                        "(ROW layout) or ask for a larger quota",
                    )
                self._retry_after(wait)
                raise RequestError(
                    EXHAUSTED,
                    f"API key {key.key_id!r} is over its quota of {per} predictions per minute "
                    f"(this block computes {computed}); retry in {wait:.1f} s",
                )
        rec.blocks += 1
        rec.n += block.n
        rec.ciphertexts += block.expected
        rec.computed += computed
        self.policy.metrics.admitted(served.model.name, computed, block.n)


class SecurityInterceptor(grpc.ServerInterceptor):
    """API-key authentication, per-key quotas, request log and metrics for one worker."""

    def __init__(
        self,
        *,
        state,
        metrics: WorkerMetrics,
        worker: int,
        max_samples_per_request: int,
    ) -> None:
        self.state = state
        self.keys = state.keys
        self.quotas = state.quotas
        self.metrics = metrics
        self.worker = worker
        self.max_samples_per_request = max_samples_per_request

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        record = CallRecord(method=safe_token(method.rsplit("/", 1)[-1]))
        given_id = next((v for k, v in metadata if k == "x-request-id"), None)
        if given_id:
            record.request_id = safe_token(given_id)
        key, auth_error, unavailable = None, None, None
        if self.keys is not None:
            try:
                key = self.keys.authenticate(metadata)
                record.key_id = key.key_id
            except AuthError as exc:
                auth_error = str(exc)
            except StateUnavailable as exc:
                unavailable = str(exc)

        def make_guard() -> Guard:
            return Guard(
                self,
                record,
                key,
                auth_error,
                request_id_given=bool(given_id),
                unavailable=unavailable,
            )

        return _wrap(handler, make_guard)


def _wrap(handler: grpc.RpcMethodHandler, make_guard) -> grpc.RpcMethodHandler:
    """The same kind of handler as ``handler``, with the guard around its behaviour."""
    if handler.request_streaming and handler.response_streaming:
        inner, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        inner, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        inner, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    if handler.response_streaming:

        def behavior(request, context):
            guard = make_guard()
            outcome = "raised"  # pragma: no mutate, _status reads only "returned"/"terminated"
            try:
                yield from inner(request, guard.enter(context))
                outcome = "returned"
            finally:
                guard.exit(outcome)

    else:

        def behavior(request, context):
            guard = make_guard()
            outcome = "raised"  # pragma: no mutate, _status reads only "returned"/"terminated"
            try:
                result = inner(request, guard.enter(context))
                outcome = "returned"
                return result
            finally:
                guard.exit(outcome)

    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def build_interceptor(config, worker: int = 0, runtime=None, state=None) -> SecurityInterceptor:
    """The interceptor for one worker (after the fork), over the server's state backend
    (heml.server.state.open_state: embedded, or Redis with ``config.state``). Without a
    supervisor's runtime (a single process), embedded quotas use a private table, which is
    then exact."""
    if state is None:
        state = open_state(config, worker, runtime)
    metrics = WorkerMetrics(getattr(runtime, "metrics_dir", None) is not None)
    return SecurityInterceptor(
        state=state,
        metrics=metrics,
        worker=worker,
        max_samples_per_request=config.max_samples_per_request,
    )
