"""gRPC handlers: parse the request, call the registry and heml.he, build the reply."""

from __future__ import annotations

import logging
import time

import grpc

from ..he.plan import COLUMN, ROW
from ..info import LAYOUT_FROM_PB, LAYOUT_TO_PB
from ..v1 import heml_pb2 as pb
from ..v1 import heml_pb2_grpc
from .registry import Registry, ServedModel, server_info_pb
from .status import RequestError, abort_on_error

log = logging.getLogger("heml.server")
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# rough server cost of one uploaded ciphertext, used to refuse work a deadline cannot cover
SECONDS_PER_CIPHERTEXT = {ROW: 0.0002, COLUMN: 0.0003}
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
        scorer = served.scorer
        n, s = int(header.n), int(header.samples_per_ciphertext)
        if self.layout == COLUMN:
            s = 0
        scorer.check_block(self.layout, n, s)
        self.n, self.s = n, s
        self.expected = scorer.expected_ciphertexts(self.layout, n, s)
        if self.layout == ROW and self.expected > MAX_ROW_CIPHERTEXTS:
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


class InferenceServicer(heml_pb2_grpc.InferenceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def ListModels(self, request, context):
        with abort_on_error(context):
            return pb.ListModelsResponse(
                models=[m.info for m in self.registry.latest()], server=server_info_pb()
            )

    def GetModel(self, request, context):
        with abort_on_error(context):
            return self.registry.get(request.name, request.version).info

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
            block.add(request.ciphertexts)
            reply = block.finish()
            log.debug(
                "predict model=%s n=%d cts=%d %.1fms",
                request.model,
                block.n,
                block.expected,
                (time.perf_counter() - started) * 1000,
            )
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
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            stream_handler, response_serializer=pb.PredictResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("heml.v1.Inference", handlers),)
    )
