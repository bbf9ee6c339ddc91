"""Bad input gets the right status code and a message; the server keeps serving."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest

from heml.errors import InvalidCiphertext
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(
        f"localhost:{server.port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    yield heml_pb2_grpc.InferenceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def valid(server, cancer):
    """A valid single-sample ROW request and a valid COLUMN request for the cancer model."""
    import heml

    X, _y, _clf = cancer
    client = heml.Client(f"localhost:{server.port}")
    model = client.model("cancer")
    info = model.info
    Z = info.bounds.normalize(info.bounds.apply(info.preprocessing.transform(X.iloc[:5]), []))
    codec = model._codec
    from heml.he.scoring import Block

    row_block = Block(0, 1, "row", 1)
    col_block = Block(0, 5, "column", 0)
    row_req = model._header(row_block, 0)
    row_req.ciphertexts.extend(codec.encrypt(Z[:1], row_block))
    col_req = model._header(col_block, 0)
    col_req.ciphertexts.extend(codec.encrypt(Z, col_block))
    return row_req, col_req, codec, row_block, col_block


def _expect(stub_call, request, code, match):
    with pytest.raises(grpc.RpcError) as info:
        stub_call(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


def _still_serving(stub, valid):
    row_req, _col, codec, row_block, _cb = valid
    reply = stub.Predict(row_req, timeout=30)
    codec.decrypt(list(reply.replies), row_block)  # decrypts to a finite score


def _copy(req, **changes):
    out = pb.PredictRequest()
    out.CopyFrom(req)
    for key, value in changes.items():
        if key == "ciphertexts":
            del out.ciphertexts[:]
            out.ciphertexts.extend(value)
        else:
            setattr(out, key, value)
    return out


CASES = [
    ("unknown model", dict(model="nope"), grpc.StatusCode.NOT_FOUND, "no model named"),
    ("unknown version", dict(version=9), grpc.StatusCode.NOT_FOUND, "no version 9"),
    ("no layout", dict(layout=0), INVALID, "unknown layout"),
    ("zero samples", dict(n=0), INVALID, "at least one sample"),
    (
        "too many per ciphertext",
        dict(samples_per_ciphertext=10_000),
        INVALID,
        "samples_per_ciphertext",
    ),
    ("wrong total", dict(total_ciphertexts=3), INVALID, "needs 1"),
    ("empty bytes", dict(ciphertexts=[b""]), INVALID, "exactly"),
    (
        "random bytes",
        dict(ciphertexts=[os.urandom(7 * 2048 + 32)]),
        INVALID,
        "not below the modulus",
    ),
    ("truncated", dict(ciphertexts=["TRUNC"]), INVALID, "exactly"),
    ("extra ciphertext", dict(ciphertexts=["DUP"]), INVALID, "ciphertexts"),
    ("no ciphertexts", dict(ciphertexts=[]), INVALID, "ciphertexts"),
    ("other parameters", dict(ciphertexts=[os.urandom(7 * 4096 + 32)]), INVALID, "exactly"),
]


@pytest.mark.parametrize("name,changes,code,match", CASES, ids=[c[0] for c in CASES])
def test_malformed_row_requests(stub, valid, name, changes, code, match):
    row_req = valid[0]
    cts = changes.get("ciphertexts")
    if cts == ["TRUNC"]:
        changes = dict(ciphertexts=[row_req.ciphertexts[0][: len(row_req.ciphertexts[0]) // 2]])
    elif cts == ["DUP"]:
        changes = dict(ciphertexts=[row_req.ciphertexts[0], row_req.ciphertexts[0]])
    _expect(stub.Predict, _copy(row_req, **changes), code, match)
    _still_serving(stub, valid)


def test_malformed_column_requests(stub, valid):
    col_req = valid[1]
    cts = list(col_req.ciphertexts)
    _expect(stub.Predict, _copy(col_req, ciphertexts=cts[:-1]), INVALID, "got 29 ciphertexts")
    _expect(stub.Predict, _copy(col_req, n=5000), INVALID, "at most 4096")
    flipped = bytearray(cts[3])
    flipped[100] ^= 0xFF
    flipped[101] ^= 0xFF
    flipped[102] ^= 0xFF
    flipped[103] ^= 0xFF
    flipped[104] ^= 0xFF
    flipped[105] ^= 0xFF
    flipped[106] = 0xFF
    _expect(
        stub.Predict,
        _copy(col_req, ciphertexts=[*cts[:3], bytes(flipped), *cts[4:]]),
        INVALID,
        "not below the modulus",
    )
    _still_serving(stub, valid)


def test_stream_protocol_errors(stub, valid):
    row_req, col_req = valid[0], valid[1]
    continuation = pb.PredictRequest(ciphertexts=[row_req.ciphertexts[0]])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(iter([continuation]), timeout=30))
    assert info.value.code() == INVALID and "no block open" in info.value.details()
    head = _copy(col_req, ciphertexts=list(col_req.ciphertexts)[:10])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(iter([head]), timeout=30))
    assert info.value.code() == INVALID and "ended after 10 of 30" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(iter([head, row_req]), timeout=30))
    assert info.value.code() == INVALID and "new block started" in info.value.details()
    # a valid stream with a block split over three messages works
    cts = list(col_req.ciphertexts)
    parts = [
        _copy(col_req, ciphertexts=cts[:7], total_ciphertexts=30),
        pb.PredictRequest(ciphertexts=cts[7:20]),
        pb.PredictRequest(ciphertexts=cts[20:]),
        row_req,
    ]
    replies = list(stub.PredictStream(iter(parts), timeout=30))
    assert [r.n for r in replies] == [5, 1]
    _still_serving(stub, valid)


def test_oversized_message_is_resource_exhausted(stub, valid):
    huge = _copy(valid[0], ciphertexts=[b"\0" * (9 << 20)])
    _expect(stub.Predict, huge, grpc.StatusCode.RESOURCE_EXHAUSTED, "")
    _still_serving(stub, valid)


def test_garbage_protobuf_is_rejected_cleanly(server, valid):
    channel = grpc.insecure_channel(f"localhost:{server.port}")
    raw = channel.unary_unary(
        "/heml.v1.Inference/Predict",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    for payload in (b"\xff" * 64, os.urandom(300), b"\x0a\xff\xff\xff\xff\x0f"):
        with pytest.raises(grpc.RpcError) as info:
            raw(payload, timeout=10)
        assert info.value.code() == INVALID, info.value.details()
        assert "not a valid heml.v1.PredictRequest" in info.value.details()
    channel.close()
    stub = heml_pb2_grpc.InferenceStub(grpc.insecure_channel(f"localhost:{server.port}"))
    _still_serving(stub, valid)


def test_health_service_answers(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"localhost:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "heml.v1.Inference"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_replies_decrypt_only_with_the_client_key(stub, valid):
    _row, _col, codec, row_block, _cb = valid
    reply = stub.Predict(valid[0], timeout=30)
    good = codec.decrypt(list(reply.replies), row_block)
    from heml.he.codec import ClientCodec
    from heml.he.keys import KeySet

    stranger = ClientCodec(codec.plans, codec.d, codec.k, KeySet())
    # another key decrypts to values spread over Z_q: the SDK's range check refuses them (each
    # lies outside ±0.475 q with probability 5 %), or they come out far from the scores
    try:
        wrong = stranger.decrypt(list(reply.replies), row_block)
    except InvalidCiphertext:
        return
    assert np.abs(wrong - good).max() > 1.0
