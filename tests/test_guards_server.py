"""Guards on what a client or a model folder can make the server hold, tested at their bounds.

Each test is written from the promise (docs/protocol.md, docs/security.md) and fails when the
guard that keeps it is weakened: a coefficient equal to q accepted, a block that takes more
ciphertexts than its plan, a ROW block over the ciphertext cap, a model file over the size limit.
These were the survivors of a mutation run (issue 18; docs/testing.md).
"""

from __future__ import annotations

import os
import threading

import grpc
import numpy as np
import pytest

from heml.errors import InvalidCiphertext, ModelError
from heml.he import wire
from heml.he.params import default_params
from heml.he.prng import SEED_BYTES
from heml.info import LAYOUT_TO_PB
from heml.server import registry
from heml.server.servicer import MAX_ROW_CIPHERTEXTS
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .guard_support import inprocess_server, linear_model

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ROW_N = 2048  # ring degree of the ROW layout (heml.he.plan)
# ROW: ceil(n / s) sample groups of ceil(d / m) ciphertexts, m = min(d, N // s) features per
# ciphertext. With s = 1 a model of WIDE_D features needs 17 ciphertexts per sample, so 240
# samples need 4080 ciphertexts (under the 4096 cap) and 241 need 4097 (one over it).
WIDE_D = 16 * ROW_N + 1


# ----------------------------------------------------------------------------- ciphertext words
@pytest.mark.parametrize("n", [2048, 4096])
def test_a_c0_coefficient_equal_to_q_is_rejected_and_q_minus_one_accepted(n):
    """Every c0 word must lie in [0, q): q itself is not a residue and must not be reduced."""
    q = default_params(n).q
    seed = bytes(range(SEED_BYTES))
    rng = np.random.default_rng(n)
    c0 = rng.integers(0, q, size=n, dtype=np.uint64)
    for position in (0, n // 2, n - 1):  # first, middle and last word of the record
        at_q, below = c0.copy(), c0.copy()
        at_q[position], below[position] = q, q - 1
        with pytest.raises(InvalidCiphertext, match="1 coefficient.* not below the modulus q"):
            wire.unpack_ciphertext(wire.pack_ciphertext(at_q, seed), n, q)
        words, got_seed = wire.unpack_ciphertext(wire.pack_ciphertext(below, seed), n, q)
        assert int(words[position]) == q - 1 and got_seed == seed
        np.testing.assert_array_equal(words, below)
    # in a batch the offending record is named, whatever its place
    blobs = wire.pack_ciphertexts(np.stack([c0, c0, c0]), [seed] * 3)
    bad = c0.copy()
    bad[7] = q
    blobs[2] = wire.pack_ciphertext(bad, seed)
    with pytest.raises(InvalidCiphertext, match="ciphertext 12 has 1 coefficient"):
        wire.unpack_ciphertexts(blobs, n, q, first_index=10)


# ----------------------------------------------------------------------------- live server
@pytest.fixture(scope="module")
def guard_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guard-models")
    linear_model(3, "small", 1).save(folder / "small.json")
    linear_model(WIDE_D, "wide", 2).save(folder / "wide.json")
    linear_model(16 * ROW_N, "cap", 3).save(folder / "cap.json")  # 16 ciphertexts per sample
    reg, errors = registry.Registry.from_folder(folder)
    assert errors == {}
    return folder, reg


@pytest.fixture()
def guarded(guard_models):
    """A worker's gRPC stack in this process (tests/guard_support.py) serving a small model
    (d=3) and a wide one (d=WIDE_D); yields a raw stub."""
    with inprocess_server(*guard_models) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield heml_pb2_grpc.InferenceStub(channel)
        channel.close()


def _row_header(model: str, n: int) -> pb.PredictRequest:
    return pb.PredictRequest(model=model, layout=LAYOUT_TO_PB["row"], n=n, samples_per_ciphertext=1)


def _blob() -> bytes:
    return bytes(wire.ciphertext_size(ROW_N))  # the right size for ROW; content never reached


def test_a_streamed_block_one_ciphertext_over_its_plan_is_refused_at_once(guarded):
    """One sample of the d=3 model is one ROW ciphertext. A stream that sends two for it is
    refused with INVALID_ARGUMENT as soon as the second arrives, while the stream is still open:
    the server never holds more ciphertexts than the model's plan for the block."""
    answered = threading.Event()
    sent_after_overflow = []

    def requests():
        yield _row_header("small", 1)  # the block: 1 sample, so 1 ciphertext
        yield pb.PredictRequest(ciphertexts=[_blob(), _blob()])  # one over the plan
        # a bounded server has refused the block by now; an unbounded one keeps reading
        if answered.wait(10):
            return
        for _ in range(20):
            sent_after_overflow.append(1)
            yield pb.PredictRequest(ciphertexts=[_blob()])

    with pytest.raises(grpc.RpcError) as info:
        list(guarded.PredictStream(requests(), timeout=60))
    answered.set()
    assert info.value.code() == INVALID, info.value.details()
    assert info.value.details() == "block has more than the 1 ciphertexts model 'small' needs"
    assert sent_after_overflow == []


def test_a_row_block_one_ciphertext_over_the_cap_is_refused(guarded):
    """ROW blocks take at most MAX_ROW_CIPHERTEXTS (4096) ciphertexts, whatever the model's
    width: 4097 is refused from the header alone; 4080 passes the header (the stream then ends
    with nothing uploaded, which is the only error)."""
    assert MAX_ROW_CIPHERTEXTS == 4096
    with pytest.raises(grpc.RpcError) as info:
        list(guarded.PredictStream(iter([_row_header("wide", 241)]), timeout=60))
    assert info.value.code() == INVALID, info.value.details()
    assert info.value.details() == "ROW blocks take at most 4096 ciphertexts"
    with pytest.raises(grpc.RpcError) as info:
        guarded.Predict(_row_header("wide", 241), timeout=60)
    assert info.value.code() == INVALID
    assert info.value.details() == "ROW blocks take at most 4096 ciphertexts"

    # exactly at the cap: 256 samples of the d=32768 model need 16 · 256 = 4096 ciphertexts
    with pytest.raises(grpc.RpcError) as info:
        list(guarded.PredictStream(iter([_row_header("cap", 256)]), timeout=60))
    assert info.value.details() == "stream ended after 0 of 4096 ciphertexts"
    with pytest.raises(grpc.RpcError) as info:
        list(guarded.PredictStream(iter([_row_header("wide", 240)]), timeout=60))
    assert info.value.code() == INVALID, info.value.details()
    assert info.value.details() == "stream ended after 0 of 4080 ciphertexts"


# ----------------------------------------------------------------------------- model files
def test_a_model_file_one_byte_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    """Model files above MAX_MODEL_FILE_BYTES (64 MiB) are refused by size before they are
    read; a file exactly at the limit is read and loaded."""
    assert registry.MAX_MODEL_FILE_BYTES == 64 << 20
    # the real limit: a sparse file one byte over it (no 64 MiB written) is refused by size
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:
        fh.truncate((64 << 20) + 1)
    with pytest.raises(ModelError, match=r"file is 67108865 bytes, above the 67108864-byte"):
        registry.load_model_file(huge)

    # the boundary, on a limit lowered to the size of a valid model file
    good = tmp_path / "small.json"
    linear_model(3, "small", 1).save(good)
    size = good.stat().st_size
    monkeypatch.setattr(registry, "MAX_MODEL_FILE_BYTES", size)
    assert registry.load_model_file(good).model.name == "small"  # exactly at the limit
    padded = tmp_path / "padded.json"
    padded.write_bytes(good.read_bytes() + b" ")  # still valid JSON, one byte over
    with pytest.raises(ModelError, match=f"file is {size + 1} bytes, above the {size}-byte"):
        registry.load_model_file(padded)
    # a folder scan reports it by name and serves the rest
    os.remove(huge)
    models, errors = registry.scan(tmp_path)
    assert [m.model.name for m in models] == ["small"]
    assert list(errors) == ["padded.json"] and "above the" in errors["padded.json"]
