"""gRPC handlers: parse the request, call the registry and heml.he, build the reply."""

from __future__ import annotations

import logging
import time

import grpc

from ..he.plan import COLUMN, ROW
from ..he.private import KEY_ID_CHARS, PRIVATE, valid_key_id
from ..info import LAYOUT_FROM_PB, LAYOUT_TO_PB
from ..v1 import heml_pb2 as pb
from ..v1 import heml_pb2_grpc
from .interceptor import admit, new_charge_id, note_model, private_keys, shared_quota
from .registry import Registry, ServedModel, server_info_pb
from .status import RequestError, abort_on_error

log = logging.getLogger("heml.server")
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# rough server cost of one uploaded ciphertext, used to refuse work a deadline cannot cover
SECONDS_PER_CIPHERTEXT = {ROW: 0.0002, COLUMN: 0.0003, PRIVATE: 0.002}
MAX_ROW_CIPHERTEXTS = 4096


def _layout(value: int) -> str:
    layout = LAYOUT_FROM_PB.get(value)
    if layout is None:
        raise RequestError(INVALID, f"unknown layout {value}; use ROW or COLUMN")
    return layout


def _check_deadline(context: grpc.ServicerContext, layout: str, count: int) -> None:
    left = context.time_remaining()
    need = SECONDS_PER_CIPHERTEXT[layout] * count
    if left is not None and left < need:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{left * 1000:.0f} ms left, but {count} ciphertexts need about {need * 1000:.0f} ms",
        )


class Block:
    """One block in progress (unary or streamed): header checked, ciphertexts accumulated."""

    def __init__(self, served: ServedModel, header: pb.PredictRequest) -> None:
        self.served = served
        self.header = header
        self.layout = _layout(header.layout)
        n, s = int(header.n), int(header.samples_per_ciphertext)
        if self.layout == COLUMN:
            s = 0
        self.n, self.s = n, s
        if served.private is not None or self.layout == PRIVATE:
            self.expected = _check_private_block(served, self.layout, header, n, s)
        else:
            served.scorer.check_block(self.layout, n, s)
            self.expected = served.scorer.expected_ciphertexts(self.layout, n, s)
        scorer = served.scorer
        if self.layout in (ROW, PRIVATE) and self.expected > MAX_ROW_CIPHERTEXTS:
            raise RequestError(
                INVALID, f"ROW blocks take at most {MAX_ROW_CIPHERTEXTS} ciphertexts"
            )
        total = int(header.total_ciphertexts)
        if total not in (0, self.expected):
            raise RequestError(
                INVALID,
                f"total_ciphertexts={total}, but model {served.model.name!r} (d="
                f"{served.model.n_features}) needs {self.expected} for this block",
            )
        self._column = scorer.column_accumulator(n) if self.layout == COLUMN else None
        self._row: list[bytes] = []
        self.received = 0
        self._started = time.perf_counter()
        self._cpu = 0.0

    def add(self, ciphertexts) -> None:
        cpu = time.thread_time()
        try:
            self._add(ciphertexts)
        finally:
            self._cpu += time.thread_time() - cpu

    def _add(self, ciphertexts) -> None:
        cts = list(ciphertexts)
        if self.received + len(cts) > self.expected:
            raise RequestError(
                INVALID,
                f"block has more than the {self.expected} ciphertexts model "
                f"{self.served.model.name!r} needs",
            )
        if self._column is not None:
            self._column.add(cts)
        else:
            self._row.extend(cts)
        self.received += len(cts)

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    def finish(self) -> pb.PredictResponse:
        if not self.complete:
            raise RequestError(
                INVALID, f"block ended after {self.received} of {self.expected} ciphertexts"
            )
        cpu = time.thread_time()
        if self._column is not None:
            replies = self._column.replies()
            plan = self.served.scorer.plans[self.layout]
        elif self.layout == PRIVATE:
            private = self.served.private
            try:
                replies = private.evaluate(self._row, self.n, self.s, self.header.key_id)
            except KeyError:
                raise _not_registered() from None
            plan = private.plan
        else:
            replies = self.served.scorer.evaluate(ROW, self.n, self.s, self._row)
            plan = self.served.scorer.plans[self.layout]
        return pb.PredictResponse(
            model=self.served.model.name,
            version=self.served.model.version,
            layout=LAYOUT_TO_PB[self.layout],
            n=self.n,
            reply_bits=plan.reply_bits,
            replies=replies,
            request_id=self.header.request_id,
            server_seconds=time.perf_counter() - self._started,
            server_cpu_seconds=self._cpu + time.thread_time() - cpu,
        )


def _check_private_block(served: ServedModel, layout: str, header, n: int, s: int) -> int:
    """Validate a model-privacy block; returns the number of ciphertexts it needs."""
    name = served.model.name
    if served.private is None:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {name!r} is not served in model-privacy mode; use ROW or COLUMN",
        )
    if layout != PRIVATE:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {name!r} is served in model-privacy mode only (layout PRIVATE)",
        )
    if not header.key_id:
        raise RequestError(INVALID, "model-privacy requests need the key_id from RegisterKey")
    if not valid_key_id(header.key_id):
        raise RequestError(
            INVALID,
            f"key_id must be the {KEY_ID_CHARS} lowercase hex characters RegisterKey returned",
        )
    plan = served.private.plan
    smax = plan.max_samples_per_ciphertext(served.model.n_features)
    if not 1 <= s <= smax:
        raise RequestError(INVALID, f"samples_per_ciphertext must be in [1, {smax}], got {s}")
    if not 1 <= n <= s * 256:
        raise RequestError(INVALID, f"n must be in [1, {s * 256}] for s={s}, got {n}")
    return -(-n // s) * served.private.geometry(s).chunks


def caller_identity(context: grpc.ServicerContext) -> str:
    """Who owns a registered key, for the key store's per-identity cap: the API key when the
    call carries one, else the peer's host (without its port, which a client changes at will)."""
    guard = getattr(context, "heml_guard", None)
    if guard is not None and guard.key is not None:
        return "key:" + guard.key.key_id
    peer = context.peer() or ""
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return "peer:" + host[:80]


def take_private_quota(
    served: ServedModel, key_id: str, slots: int, shared=None, keys=None, charge_id: str = ""
) -> None:
    """Model-privacy quota: lifetime sample slots per (model, key identity), below d.

    The key must be registered with this process (NOT_FOUND otherwise, before any state is
    kept). With API keys the identity is the API key and the count lives in the quota table
    every worker shares (heml.server.quota), so W workers do not multiply it. Without API keys
    the identity is the registered public key and the count is kept with the key in this
    process's key store (a client can get W times the quota, and a new public key is a new
    identity: docs/model-privacy.md). With ``--state redis://`` both counts, and the keys, are
    in Redis (``keys`` is then the shared registry), so replicas do not multiply them either.
    """
    limit = served.model.privacy["max_predictions_per_key"]
    keys = served.private.keys if keys is None else keys
    if key_id not in keys:
        raise _not_registered()
    if shared is not None:  # (quota backend, API key id)
        quotas, api_key = shared
        name, version = served.model.name, served.model.version
        used = quotas.take_total(f"private/{name}/{version}/{api_key}", slots, limit, charge_id)
    else:
        try:
            used = keys.take(key_id, slots, limit, charge_id=charge_id)
        except KeyError:
            raise _not_registered() from None
    if used is not None:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"model-privacy quota of {limit} predictions per key is used up "
            f"({used} used, {slots} requested): d+1 exact answers would reveal the "
            "model",
        )


def _not_registered() -> RequestError:
    return RequestError(
        grpc.StatusCode.NOT_FOUND,
        "public key not registered with this server process; call RegisterKey "
        "(idempotent) and retry",
    )


class InferenceServicer(heml_pb2_grpc.InferenceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def RegisterKey(self, request, context):
        with abort_on_error(context):
            served = self.registry.get(request.model, request.version)
            if served.private is None:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {served.model.name!r} is not served in model-privacy mode",
                )
            key_id = private_keys(context, served).register(
                request.key_nonce, request.public_key, caller_identity(context)
            )
            return pb.RegisterKeyResponse(key_id=key_id)

    def _take_quota(self, block: Block, context) -> None:
        if block.layout == PRIVATE:
            # every sample slot of every ciphertext group is computed and returned
            slots = -(-block.n // block.s) * block.s
            take_private_quota(
                block.served,
                block.header.key_id,
                slots,
                shared_quota(context),
                private_keys(context, block.served),
                new_charge_id(context),
            )

    def ListModels(self, request, context):
        with abort_on_error(context):
            return pb.ListModelsResponse(
                models=[m.info for m in self.registry.latest()], server=server_info_pb()
            )

    def GetModel(self, request, context):
        with abort_on_error(context):
            served = self.registry.get(request.name, request.version)
            note_model(context, served.model.name, served.model.version)
            return served.info

    def Predict(self, request, context):
        with abort_on_error(context):
            started = time.perf_counter()
            block = Block(self.registry.get(request.model, request.version), request)
            if len(request.ciphertexts) != block.expected:
                raise RequestError(
                    INVALID,
                    f"got {len(request.ciphertexts)} ciphertexts; this block needs "
                    f"{block.expected} (use PredictStream to split a block across messages)",
                )
            _check_deadline(context, block.layout, block.expected)
            admit(context, block)  # per-call limit and the key's quota, before any HE work
            self._take_quota(block, context)  # the lifetime quota last: refusals above keep it
            block.add(request.ciphertexts)
            reply = block.finish()
            # pragma: no mutate start, a log line: no behaviour to test
            log.debug(
                "predict model=%s n=%d cts=%d %.1fms",
                request.model,
                block.n,
                block.expected,
                (time.perf_counter() - started) * 1000,
            )
            # pragma: no mutate end
            return reply

    def PredictStream(self, request_iterator, context):
        with abort_on_error(context):
            block: Block | None = None
            for message in request_iterator:
                if message.model:
                    if block is not None:
                        raise RequestError(
                            INVALID,
                            f"new block started after {block.received} of {block.expected} "
                            "ciphertexts of the previous one",
                        )
                    block = Block(self.registry.get(message.model, message.version), message)
                    _check_deadline(context, block.layout, block.expected)
                    admit(context, block)
                    self._take_quota(block, context)
                elif block is None:
                    raise RequestError(
                        INVALID, "stream message without a model name and no block open"
                    )
                block.add(message.ciphertexts)
                if block.complete:
                    yield block.finish()
                    block = None
            if block is not None:
                raise RequestError(
                    INVALID, f"stream ended after {block.received} of {block.expected} ciphertexts"
                )


def _parse(cls, raw: bytes, context: grpc.ServicerContext):
    from google.protobuf.message import DecodeError

    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, TypeError):
        context.abort(INVALID, f"request is not a valid {cls.DESCRIPTOR.full_name} message")


def add_to_server(servicer: InferenceServicer, server: grpc.Server) -> None:
    """Register the service, parsing requests ourselves so undecodable bytes get
    INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL)."""

    def unary(method, request_cls, response_cls):
        def handler(raw, context):
            return method(_parse(request_cls, raw, context), context)

        return grpc.unary_unary_rpc_method_handler(
            handler, response_serializer=response_cls.SerializeToString
        )

    def stream_handler(raw_iterator, context):
        parsed = (_parse(pb.PredictRequest, raw, context) for raw in raw_iterator)
        yield from servicer.PredictStream(parsed, context)

    handlers = {
        "ListModels": unary(servicer.ListModels, pb.ListModelsRequest, pb.ListModelsResponse),
        "GetModel": unary(servicer.GetModel, pb.GetModelRequest, pb.ModelInfo),
        "Predict": unary(servicer.Predict, pb.PredictRequest, pb.PredictResponse),
        "RegisterKey": unary(servicer.RegisterKey, pb.RegisterKeyRequest, pb.RegisterKeyResponse),
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            stream_handler, response_serializer=pb.PredictResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("heml.v1.Inference", handlers),)
    )
