"""Property-based fuzzing of a live server: random, truncated, bit-flipped, re-parameterized and
wrong-level ciphertexts and malformed protobuf fields. Every one gets a precise status code
(never INTERNAL, UNKNOWN or a dead worker), and a valid request succeeds afterwards."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heml
from heml.he.scoring import Block
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

PRECISE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
N_ROW, N_COL = 2048, 4096


@pytest.fixture(scope="module")
def fuzz_target(server, cancer):
    X, _y, _clf = cancer
    client = heml.Client(f"localhost:{server.port}")
    model = client.model("cancer")
    info, codec = model.info, model._codec
    Z = info.bounds.normalize(info.preprocessing.model_features(X.iloc[:3], info.bounds))
    row = Block(0, 1, "row", 1)
    col = Block(0, 3, "column", 0)
    valid_row = codec.encrypt(Z[:1], row)
    valid_col = codec.encrypt(Z, col)
    channel = grpc.insecure_channel(
        f"localhost:{server.port}", options=[("grpc.max_send_message_length", 32 << 20)]
    )
    stub = heml_pb2_grpc.InferenceStub(channel)
    raw_predict = channel.unary_unary(
        "/heml.v1.Inference/Predict", request_serializer=None, response_deserializer=None
    )
    yield stub, raw_predict, valid_row, valid_col, codec, row
    channel.close()
    client.close()


def _mutate(data: st.DataObject, ct: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "extend", "flip", "random", "zeros", "ones"]))
    if kind == "truncate":
        return ct[: data.draw(st.integers(0, len(ct) - 1))]
    if kind == "extend":
        return ct + data.draw(st.binary(min_size=1, max_size=64))
    if kind == "flip":
        buf = bytearray(ct)
        for _ in range(data.draw(st.integers(1, 16))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "random":
        size = data.draw(st.sampled_from([len(ct), 7 * N_COL + 32, 7 * 2 * N_ROW + 32, 0, 100]))
        return os.urandom(size)
    return (b"\0" if kind == "zeros" else b"\xff") * len(ct)


def _check(call, request):
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in PRECISE, f"{exc.code()}: {exc.details()}"
        assert exc.details()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_ciphertexts_get_precise_codes(fuzz_target, data):
    stub, _raw, valid_row, valid_col, _codec, _row = fuzz_target
    layout = data.draw(st.sampled_from(["row", "column"]))
    cts = list(valid_row if layout == "row" else valid_col)
    i = data.draw(st.integers(0, len(cts) - 1))
    cts[i] = _mutate(data, cts[i])
    if data.draw(st.booleans()):
        cts = cts[: data.draw(st.integers(0, len(cts)))]
    request = pb.PredictRequest(
        model="cancer",
        layout=pb.ROW if layout == "row" else pb.COLUMN,
        n=1 if layout == "row" else 3,
        samples_per_ciphertext=1,
        ciphertexts=cts,
    )
    _check(stub.Predict, request)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    model=st.sampled_from(["cancer", "", "nope", "x" * 300, "wine"]),
    version=st.integers(0, 2**32 - 1),
    layout=st.integers(0, 5),
    n=st.integers(0, 2**32 - 1),
    s=st.integers(0, 2**32 - 1),
    total=st.integers(0, 2**32 - 1),
    count=st.integers(0, 4),
)
def test_malformed_fields_get_precise_codes(
    fuzz_target, model, version, layout, n, s, total, count
):
    stub, _raw, valid_row, _col, _codec, _row = fuzz_target
    request = pb.PredictRequest(
        model=model,
        version=version,
        layout=layout,
        n=n,
        samples_per_ciphertext=s,
        total_ciphertexts=total,
        ciphertexts=valid_row[:1] * count,
    )
    _check(stub.Predict, request)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(min_size=0, max_size=2048))
def test_garbage_protobuf_bytes(fuzz_target, payload):
    _stub, raw, *_ = fuzz_target
    try:
        raw(payload, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in PRECISE, f"{exc.code()}: {exc.details()}"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_stream_framing_fuzz(fuzz_target, data):
    stub, _raw, _valid_row, valid_col, *_ = fuzz_target
    msgs = []
    for _ in range(data.draw(st.integers(1, 4))):
        head = data.draw(st.booleans())
        cts = valid_col[: data.draw(st.integers(0, len(valid_col)))]
        msgs.append(
            pb.PredictRequest(
                model="cancer" if head else "",
                layout=pb.COLUMN,
                n=3,
                total_ciphertexts=data.draw(st.sampled_from([0, 30, 31, 5])),
                ciphertexts=cts,
            )
        )
    try:
        list(stub.PredictStream(iter(msgs), timeout=30))
    except grpc.RpcError as exc:
        assert exc.code() in PRECISE, f"{exc.code()}: {exc.details()}"


def test_server_still_answers_after_fuzzing(fuzz_target, server):
    stub, _raw, valid_row, _col, codec, row = fuzz_target
    request = pb.PredictRequest(
        model="cancer", layout=pb.ROW, n=1, samples_per_ciphertext=1, ciphertexts=valid_row
    )
    reply = stub.Predict(request, timeout=30)
    assert np.isfinite(codec.decrypt(list(reply.replies), row)).all()
    assert all(os.path.exists(f"/proc/{pid}") for pid in server.worker_pids)
