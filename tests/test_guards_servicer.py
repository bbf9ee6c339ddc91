"""The servicer's request checks, each at its bound, on a worker's gRPC stack in this process.

tests/test_server_hostile_input.py covers the same ground through heml.serve (worker
processes); these run in-process (tests/guard_support.py) so that `make mutate` knows which
tests reach heml/server/servicer.py, and they pin the status code and the message of every
refusal (docs/protocol.md, docs/security.md).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import heml
from heml.he import wire
from heml.he.params import default_params
from heml.info import LAYOUT_TO_PB
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .guard_support import inprocess_server, linear_model

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ROW_N, COL_N = 2048, 4096
WIDE_D = 16 * ROW_N + 1  # 17 ROW ciphertexts per sample; COLUMN: one ciphertext per feature


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from heml.server.registry import Registry

    folder = tmp_path_factory.mktemp("servicer-models")
    small = linear_model(3, "small", 1)
    small.save(folder / "small.json")
    linear_model(WIDE_D, "wide", 2).save(folder / "wide.json")
    registry, errors = Registry.from_folder(folder)
    assert errors == {}
    return folder, registry, small


@pytest.fixture()
def served(models):
    """A fresh server per test around the module's registry (tests/guard_support.py)."""
    folder, registry, small = models
    with inprocess_server(folder, registry) as port:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        yield port, heml_pb2_grpc.InferenceStub(channel), channel, small
        channel.close()


def _zero_ct(n: int = ROW_N) -> bytes:
    """A well-formed ciphertext (all-zero c0 words and seed): valid bytes, any content."""
    return bytes(wire.ciphertext_size(n))


def _row(n=1, s=1, cts=None, **fields) -> pb.PredictRequest:
    req = pb.PredictRequest(
        model="small", layout=LAYOUT_TO_PB["row"], n=n, samples_per_ciphertext=s, **fields
    )
    req.ciphertexts.extend([_zero_ct()] * n if cts is None else cts)
    return req


def _refused(call, request, code, message, timeout=15, partial=False):
    """The call fails with this code and exactly this message (or one containing it)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=timeout)
        if not isinstance(result, pb.PredictResponse):
            list(result)
    details = info.value.details()
    assert info.value.code() == code, details
    assert details == message or (partial and message in details), details


def test_valid_blocks_score_correctly_in_both_layouts(served):
    port, *_rest, small = served
    X = np.random.default_rng(0).uniform(-1, 1, size=(5, 3))
    expected = X @ np.ravel(small.coef) + np.ravel(small.intercept)[0]
    with heml.Client(f"127.0.0.1:{port}", timeout=20) as client:
        model = client.model("small")
        for layout in ("row", "column"):
            out = model.decision_function(X, layout=layout)
            np.testing.assert_allclose(out, expected, atol=1e-3)
            assert model.last_call.layouts == {layout: 5}


def test_a_valid_reply_describes_its_block(served):
    _port, stub, *_ = served
    reply = stub.Predict(_row(n=2, s=2, cts=[_zero_ct()], request_id="abc-1"), timeout=15)
    assert (reply.model, reply.version, reply.n, reply.request_id) == ("small", 1, 2, "abc-1")
    assert reply.layout == LAYOUT_TO_PB["row"] and 24 <= reply.reply_bits <= 56
    assert len(reply.replies) >= 1
    assert len(reply.replies[0]) > ROW_N * reply.reply_bits // 8  # c1 and the outputs' c0
    assert 0 < reply.server_seconds < 30
    # CPU time of the one thread that computed the block: positive, not above the wall time
    assert 0 < reply.server_cpu_seconds <= reply.server_seconds + 0.01
    # total_ciphertexts equal to the block's need is accepted, like 0 (unset)
    assert stub.Predict(_row(total_ciphertexts=1), timeout=15).n == 1


SPLIT = " (use PredictStream to split a block across messages)"
SIZES = "bytes; parameters N=2048 need exactly 14368"
CASES = [
    ("unknown model", dict(model="nope"), NOT_FOUND, "no model named 'nope' (served: small, wide)"),
    ("unknown version", dict(version=9), NOT_FOUND, "model 'small' has no version 9 (versions: 1)"),
    ("no layout", dict(layout=0), INVALID, "unknown layout 0; use ROW or COLUMN"),
    (
        "private layout",
        dict(layout=LAYOUT_TO_PB["private"]),
        PRECONDITION,
        "model 'small' is not served in model-privacy mode; use ROW or COLUMN",
    ),
    ("zero samples", dict(n=0), INVALID, "a block needs at least one sample (n ≥ 1)"),
    (
        "s too large",
        dict(samples_per_ciphertext=683),
        INVALID,
        "samples_per_ciphertext must be in [1, 682] for d=3, got 683",
    ),
    (
        "s zero",
        dict(samples_per_ciphertext=0),
        INVALID,
        "samples_per_ciphertext must be in [1, 682] for d=3, got 0",
    ),
    ("too many samples", dict(n=257), INVALID, "too many samples in one ROW block"),
    (
        "wrong total",
        dict(total_ciphertexts=2),
        INVALID,
        "total_ciphertexts=2, but model 'small' (d=3) needs 1 for this block",
    ),
    (
        "one too many",
        dict(ciphertexts=[_zero_ct()] * 2),
        INVALID,
        "got 2 ciphertexts; this block needs 1" + SPLIT,
    ),
    ("none", dict(ciphertexts=[]), INVALID, "got 0 ciphertexts; this block needs 1" + SPLIT),
    ("short", dict(ciphertexts=[_zero_ct()[:-1]]), INVALID, "ciphertext 0 has 14367 " + SIZES),
    ("other N", dict(ciphertexts=[_zero_ct(COL_N)]), INVALID, "ciphertext 0 has 28704 " + SIZES),
]


@pytest.mark.parametrize("name,changes,code,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_unary_requests(served, name, changes, code, message):
    _port, stub, *_ = served
    request = _row()
    for key, value in changes.items():
        if key == "ciphertexts":
            del request.ciphertexts[:]
            request.ciphertexts.extend(value)
        else:
            setattr(request, key, value)
    _refused(stub.Predict, request, code, message)
    assert stub.Predict(_row(), timeout=15).n == 1  # still serving


def test_a_coefficient_equal_to_q_is_refused_by_the_server(served):
    _port, stub, *_ = served
    q = default_params(ROW_N).q
    c0 = np.zeros(ROW_N, dtype=np.uint64)
    c0[ROW_N - 1] = q
    bad = wire.pack_ciphertext(c0, bytes(32))
    _refused(
        stub.Predict,
        _row(cts=[bad]),
        INVALID,
        "ciphertext 0 has 1 coefficient(s) not below the modulus q (corrupt or encrypted under "
        "other parameters)",
    )
    c0[ROW_N - 1] = q - 1
    assert stub.Predict(_row(cts=[wire.pack_ciphertext(c0, bytes(32))]), timeout=15).n == 1


def test_column_blocks_are_bounded_by_the_ring(served):
    _port, stub, *_ = served
    header = dict(model="small", layout=LAYOUT_TO_PB["column"], samples_per_ciphertext=7)
    ok = pb.PredictRequest(n=COL_N, ciphertexts=[_zero_ct(COL_N)] * 3, **header)
    assert stub.Predict(ok, timeout=15).n == COL_N  # s is ignored for COLUMN
    over = pb.PredictRequest(n=COL_N + 1, ciphertexts=[_zero_ct(COL_N)] * 3, **header)
    _refused(stub.Predict, over, INVALID, "a COLUMN block holds at most 4096 samples, got 4097")


def test_stream_protocol(served):
    _port, stub, *_ = served
    cont = pb.PredictRequest(ciphertexts=[_zero_ct()])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(iter([cont]), timeout=15))
    assert info.value.code() == INVALID
    assert info.value.details() == "stream message without a model name and no block open"
    _refused(
        stub.PredictStream,
        iter([_row(n=2, cts=[_zero_ct()]), _row()]),
        INVALID,
        "new block started after 1 of 2 ciphertexts of the previous one",
    )
    _refused(
        stub.PredictStream,
        iter([_row(n=3, cts=[_zero_ct()])]),
        INVALID,
        "stream ended after 1 of 3 ciphertexts",
    )
    # a block split over messages, then a second block: one reply each, in order
    parts = [
        _row(n=3, cts=[], request_id="first"),
        pb.PredictRequest(ciphertexts=[_zero_ct()] * 2),
        pb.PredictRequest(ciphertexts=[_zero_ct()]),
        _row(n=1, request_id="second"),
    ]
    replies = list(stub.PredictStream(iter(parts), timeout=15))
    assert [(r.request_id, r.n) for r in replies] == [("first", 3), ("second", 1)]


def test_a_deadline_too_short_for_the_block_is_refused_before_any_work(served):
    """The server estimates a block's cost from its header (docs/security.md, Deadlines):
    COLUMN about 0.3 ms and ROW about 0.2 ms per ciphertext."""
    _port, stub, *_ = served
    column = pb.PredictRequest(model="wide", layout=LAYOUT_TO_PB["column"], n=1)
    # 32769 COLUMN ciphertexts need about 9.8 s
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(iter([column]), timeout=5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    left, rest = info.value.details().split(" ms left, ")
    # refused early (load may delay the answer; gRPC rounds the sent timeout up a little)
    assert 1000 < int(left) <= 5100, info.value.details()
    assert rest == "but 32769 ciphertexts need about 9831 ms"
    _refused(
        stub.PredictStream, iter([column]), INVALID, "stream ended after 0 of 32769 ciphertexts", 20
    )
    # 4080 ROW ciphertexts need about 816 ms: refused with 0.7 s left (the server answers at
    # once; under heavy load the client's own deadline may win, so allow a few tries)
    row = pb.PredictRequest(
        model="wide", layout=LAYOUT_TO_PB["row"], n=240, samples_per_ciphertext=1
    )
    for _attempt in range(5):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.PredictStream(iter([row]), timeout=0.7))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if "ms left" in info.value.details():
            break
    assert "but 4080 ciphertexts need about 816 ms" in info.value.details()
    _refused(
        stub.PredictStream, iter([row]), INVALID, "stream ended after 0 of 4080 ciphertexts", 5
    )


def test_undecodable_messages_are_invalid_argument(served):
    _port, _stub, channel, _small = served
    garbage = b"\xff\xff\xff\xff"
    for method in ("Predict", "GetModel", "ListModels", "RegisterKey"):
        raw = channel.unary_unary(f"/heml.v1.Inference/{method}")
        with pytest.raises(grpc.RpcError) as info:
            raw(garbage, timeout=15)
        assert info.value.code() == INVALID, method
        assert "is not a valid heml.v1." in info.value.details()
    stream = channel.stream_stream("/heml.v1.Inference/PredictStream")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([garbage]), timeout=15))
    assert info.value.code() == INVALID
    assert "not a valid heml.v1.PredictRequest message" in info.value.details()


def test_model_listing_and_lookup(served):
    _port, stub, *_ = served
    listing = stub.ListModels(pb.ListModelsRequest(), timeout=15)
    assert sorted(m.name for m in listing.models) == ["small", "wide"]
    assert listing.server.protocol_version and listing.server.server_version == heml.__version__
    import tenseal

    assert listing.server.tenseal_version == tenseal.__version__
    info = stub.GetModel(pb.GetModelRequest(name="wide"), timeout=15)
    assert info.name == "wide" and info.version == 1
    missing = "no model named 'nope' (served: small, wide)"
    _refused(stub.GetModel, pb.GetModelRequest(name="nope"), NOT_FOUND, missing)
    _refused(
        stub.GetModel,
        pb.GetModelRequest(name="small", version=9),
        NOT_FOUND,
        "model 'small' has no version 9 (versions: 1)",
    )
    _refused(
        stub.RegisterKey,
        pb.RegisterKeyRequest(model="small", public_key=b"x"),
        PRECONDITION,
        "model 'small' is not served in model-privacy mode",
    )


def test_a_call_over_the_servers_sample_limit_is_refused_in_both_rpcs(models):
    """--max-samples-per-request bounds the sample slots one call computes, unary or streamed
    (docs/security.md); checked with the header, before any HE work. A ROW sample group of
    the d=3 model computes N // 3 = 682 slots."""
    folder, registry, _small = models
    with inprocess_server(folder, registry, max_samples_per_request=682) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        assert stub.Predict(_row(n=2, s=2, cts=[_zero_ct()]), timeout=15).n == 2  # 682: at it
        over = "this call would compute 1364 sample slots, above the server's limit of 682 per "
        over += "call; split the batch over several calls"
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        _refused(stub.Predict, _row(n=2, s=1), exhausted, over)
        _refused(stub.PredictStream, iter([_row(n=2, s=1)]), exhausted, over)
        channel.close()


def test_a_streamed_blocks_cpu_time_counts_every_message(tmp_path):
    """server_cpu_seconds is the CPU time of the whole block (heml.proto), also when its
    ciphertexts come in several messages: a COLUMN block's work is done as its ciphertexts
    arrive, so a block split 127 + 1 costs about as much as one sent whole (counting only the
    last message would report about 1/128 of it)."""
    d = 128
    linear_model(d, "mid", 1).save(tmp_path / "mid.json")
    header = dict(model="mid", layout=LAYOUT_TO_PB["column"], n=10)
    ct = _zero_ct(COL_N)
    with inprocess_server(tmp_path) as port:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        stub = heml_pb2_grpc.InferenceStub(channel)
        whole, split = [], []
        for _ in range(3):
            one = pb.PredictRequest(ciphertexts=[ct] * d, **header)
            whole += [r.server_cpu_seconds for r in stub.PredictStream(iter([one]), timeout=60)]
            parts = [
                pb.PredictRequest(ciphertexts=[ct] * (d - 1), **header),
                pb.PredictRequest(ciphertexts=[ct]),
            ]
            split += [r.server_cpu_seconds for r in stub.PredictStream(iter(parts), timeout=60)]
        channel.close()
    assert min(split) > 0.3 * float(np.median(whole)), (split, whole)
