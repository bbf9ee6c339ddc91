"""API keys, the shared quota table and the interceptor's per-call limits, each at its bound
(issue 18; docs/security.md, "API keys" and "Quotas").

In this process (the key file and quota table directly, the interceptor through a worker's
gRPC stack from tests/guard_support.py) so that `make mutate` sees which test reaches which
function; tests/test_security_auth.py and tests/test_security_quota_workers.py check the same
promises through `heml serve`'s worker processes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from heml.info import LAYOUT_TO_PB
from heml.server.auth import (
    KEY_PREFIX,
    MAX_KEYS,
    ApiKey,
    ApiKeyFileError,
    AuthError,
    KeyStore,
    bearer_token,
    issue_key,
    key_digest,
    new_api_key,
    parse_key_file,
    read_key_file,
    revoke_key,
)
from heml.server.quota import QuotaTable, QuotaTableFull
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .guard_support import inprocess_server, linear_model

HEX = "0" * 64
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _line(**fields) -> str:
    entry = {"id": "a", "sha256": HEX}
    entry.update(fields)
    return json.dumps({k: v for k, v in entry.items() if v is not ...})


# ----------------------------------------------------------------------------- the key file
def test_new_keys_are_32_random_bytes_in_base64url_and_only_their_sha256_is_kept(tmp_path):
    key = new_api_key()
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
    raw = base64.urlsafe_b64decode(key[len(KEY_PREFIX) :] + "=")
    assert len(raw) == 32 and new_api_key() != key
    assert key_digest(key) == hashlib.sha256(key.encode()).digest()
    path = tmp_path / "keys"
    issued = issue_key(path, "alice", predictions_per_minute=1, max_concurrent=1)
    (entry,) = read_key_file(path)
    assert entry == ApiKey("alice", key_digest(issued), 1, 1, entry.created)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry.created)
    assert issued not in path.read_text() and os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"id": "a" * 65}, "id must be 1-64 letters"),
        ({"id": ".a"}, "id must be 1-64 letters"),
        ({"id": "a b"}, "id must be 1-64 letters"),
        ({"id": 7}, "id must be 1-64 letters"),
        ({"id": ...}, "id must be 1-64 letters"),
        ({"sha256": HEX.upper().replace("0", "A")}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": HEX[:-1]}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": HEX + "0"}, "sha256 must be 64 lowercase hex digits"),
        ({"sha256": ...}, "sha256 must be 64 lowercase hex digits"),
        ({"predictions_per_minute": 0}, "predictions_per_minute must be a positive integer"),
        ({"predictions_per_minute": -3}, "predictions_per_minute must be a positive integer"),
        ({"predictions_per_minute": 1.5}, "predictions_per_minute must be a positive integer"),
        ({"predictions_per_minute": "9"}, "predictions_per_minute must be a positive integer"),
        ({"max_concurrent": False}, "max_concurrent must be a positive integer or null, got False"),
        ({"max_concurrent": 0}, "max_concurrent must be a positive integer or null, got 0"),
        ({"note": 1, "extra": 2}, "unknown field(s) extra, note"),
    ],
)
def test_each_malformed_entry_is_refused_with_its_line(fields, message):
    text = "# keys\n\n" + _line(id="first") + "\n" + _line(**fields) + "\n"
    with pytest.raises(ApiKeyFileError) as info:
        parse_key_file(text, "keys.jsonl")
    assert str(info.value).startswith("keys.jsonl line 4: ")
    assert message in str(info.value)
    if message.startswith("id must"):
        assert str(info.value).endswith(ID_RULE)
    with pytest.raises(ApiKeyFileError, match="^key file line 4: "):  # the default source
        parse_key_file(text)


ID_RULE = "id must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)"


def test_the_accepted_forms_of_an_entry():
    text = "\n".join(
        [
            "   # a comment, indented",
            _line(id="a" * 64, predictions_per_minute=1, max_concurrent=1, created="2025-01-01"),
            "   ",
            _line(id="B.c_d@e-f", sha256="0123456789abcdef" * 4, created=5),
            json.dumps({"id": "g", "sha256": HEX, "max_concurrent": None}),
        ]
    )
    a, b, g = parse_key_file(text)
    assert (a.key_id, a.predictions_per_minute, a.max_concurrent, a.created) == (
        "a" * 64,
        1,
        1,
        "2025-01-01",
    )
    assert (b.key_id, b.digest.hex(), b.created) == ("B.c_d@e-f", "0123456789abcdef" * 4, None)
    assert (g.predictions_per_minute, g.max_concurrent) == (None, None)
    for bad, message in [("[1, 2]", "line 1: not a JSON object"), ("{", "line 1: not a JSON")]:
        with pytest.raises(ApiKeyFileError, match=re.escape(message)):
            parse_key_file(bad)


def test_a_key_file_holds_at_most_4096_keys():
    lines = [_line(id=f"k{i}") for i in range(MAX_KEYS)]
    assert len(parse_key_file("\n".join(lines))) == MAX_KEYS
    with pytest.raises(ApiKeyFileError, match=r"has 4097 keys; at most 4096 are supported"):
        parse_key_file("\n".join([*lines, _line(id="one-more")]), "keys.jsonl")


def test_a_key_file_is_read_up_to_16_mib_and_named_in_its_errors(tmp_path):
    """A hostile or runaway key file is not read whole: 16 MiB at most (4096 keys take well
    under 1 MiB); what follows is not read. Errors name the file."""
    path = tmp_path / "keys"
    comments = ("#" * 1023 + "\n") * 16 * 1024  # exactly 16 MiB
    path.write_text(comments[:-1] + "\n" + _line(id="late") + "\n")
    os.chmod(path, 0o600)
    assert read_key_file(path) == []
    path.write_text(comments[:-1025] + "\n" + _line(id="early") + "\n")
    assert [k.key_id for k in read_key_file(path)] == ["early"]
    path.write_text("# one\n{\n")
    with pytest.raises(ApiKeyFileError, match=f"^{re.escape(str(path))} line 2: not a JSON"):
        read_key_file(path)


def test_issued_keys_record_their_creation_in_utc(tmp_path, monkeypatch):
    import datetime as dt

    monkeypatch.setenv("TZ", "Etc/GMT-9")  # local time 9 hours ahead of UTC
    time.tzset()
    try:
        issue_key(tmp_path / "keys", "alice")
    finally:
        monkeypatch.undo()
        time.tzset()
    (entry,) = read_key_file(tmp_path / "keys")
    created = dt.datetime.strptime(entry.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 600
    with pytest.raises(ApiKeyFileError) as info:
        issue_key(tmp_path / "keys", "-x")
    assert str(info.value) == (
        "invalid key id '-x': use 1-64 letters, digits or . _ @ - (starting with a letter or digit)"
    )


def test_a_key_file_others_can_write_is_refused_and_a_readable_one_accepted(tmp_path):
    path = tmp_path / "keys"
    issue_key(path, "alice")
    for mode in (0o620, 0o602, 0o660, 0o666):
        os.chmod(path, mode)
        with pytest.raises(ApiKeyFileError) as info:
            read_key_file(path)
        assert str(info.value) == (
            f"{path} is writable by group or others (mode {mode:04o}); anyone who can add a "
            f"line can let themselves in: chmod 600 {path}"
        )
    os.chmod(path, 0o644)  # readable by others: only hashes, accepted (with a warning)
    assert [k.key_id for k in read_key_file(path)] == ["alice"]


def test_unreadable_key_files_are_refused_with_the_reason(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ApiKeyFileError) as info:
        read_key_file(missing)
    assert str(info.value) == (
        f"API key file {missing} does not exist; create it with `heml keys issue --api-keys "
        f"{missing} --id NAME`"
    )
    with pytest.raises(ApiKeyFileError, match="cannot read API key file .*: Is a directory"):
        read_key_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    opener = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    opener.start()  # lets the reader's open return; a FIFO is still not a regular file
    with pytest.raises(ApiKeyFileError, match="is not a regular file"):
        read_key_file(fifo)
    opener.join(5)
    latin = tmp_path / "latin"
    latin.write_bytes(b'{"id": "\xe9"}\n')
    os.chmod(latin, 0o600)
    with pytest.raises(ApiKeyFileError, match=r"latin is not UTF-8 text"):
        read_key_file(latin)


def test_issue_and_revoke_edit_the_file_and_say_what_happened(tmp_path):
    path = tmp_path / "keys"
    for name in ("predictions_per_minute", "max_concurrent"):
        with pytest.raises(ApiKeyFileError, match=f"{name} must be at least 1"):
            issue_key(path, "alice", **{name: 0})
        issue_key(path, f"one-{name[:3]}", **{name: 1})  # 1 is allowed
    assert not revoke_key(path, "nobody")
    before = path.read_text()
    assert revoke_key(path, "one-pre") and path.read_text() != before
    assert [k.key_id for k in read_key_file(path)] == ["one-max"]
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_editors_of_a_key_file_wait_for_each_other(tmp_path):
    """issue and revoke hold FILE.lock while they read, change and rewrite the file, so two
    editors never lose each other's change: while another editor holds it, they wait."""
    import fcntl

    path = tmp_path / "keys"
    issue_key(path, "alice")
    for edit in (lambda: issue_key(path, "bob"), lambda: revoke_key(path, "alice")):
        fd = os.open(f"{path}.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = path.read_text()
        editor = threading.Thread(target=edit)
        editor.start()
        editor.join(0.3)
        assert editor.is_alive() and path.read_text() == before  # waiting for the lock
        os.close(fd)  # releases it
        editor.join(10)
        assert not editor.is_alive() and path.read_text() != before
    assert [k.key_id for k in read_key_file(path)] == ["bob"]


# ----------------------------------------------------------------------------- bearer metadata
def test_bearer_tokens_are_parsed_strictly():
    key = new_api_key()
    for metadata in [
        (("authorization", f"Bearer {key}"),),
        (("authorization", f"bearer {key}"),),
        (("authorization", f"BEARER   {key}  "),),
        (("authorization", f"  Bearer {key}"),),
        (("authorization", f"Bearer {key}".encode()),),
        (("x-request-id", "r"), ("authorization", f"Bearer {key}")),
    ]:
        assert bearer_token(metadata) == key, metadata
    for metadata, message in [
        (None, "missing API key: send the metadata 'authorization: Bearer <key>'"),
        ((("x-authorization", f"Bearer {key}"),), "missing API key"),
        ((("authorization", key),), "malformed authorization metadata: expected 'Bearer <key>'"),
        ((("authorization", f"Bearerx {key}"),), "malformed"),
        ((("authorization", "Bearer  "),), "malformed"),
        ((("authorization", f"Bearer {key} {key}"),), "malformed"),
        ((("authorization", f"Basic {key}"),), "malformed"),
        (
            (("authorization", f"Bearer {key}"), ("authorization", f"Bearer {key}")),
            "more than one authorization metadata entry",
        ),
    ]:
        with pytest.raises(AuthError) as info:
            bearer_token(metadata)
        assert str(info.value).startswith(message), (metadata, str(info.value))


def test_authenticate_finds_every_entry_and_refuses_others(tmp_path):
    path = tmp_path / "keys"
    keys = [issue_key(path, f"k{i}", max_concurrent=i + 1) for i in range(3)]
    store = KeyStore(path)
    for i, key in enumerate(keys):  # first, middle and last entry
        found = store.authenticate((("authorization", f"Bearer {key}"),))
        assert (found.key_id, found.max_concurrent) == (f"k{i}", i + 1)
    with pytest.raises(AuthError, match="^invalid API key$"):
        store.authenticate((("authorization", f"Bearer {new_api_key()}"),))
    # bytes that are not ASCII are replaced, not an error: the key is then simply wrong
    with pytest.raises(AuthError, match="^invalid API key$"):
        store.authenticate((("authorization", b"Bearer heml_\xff\xfe"),))


def test_the_key_store_rereads_the_file_only_after_its_interval(tmp_path):
    path = tmp_path / "keys"
    alice = issue_key(path, "alice")
    slow = KeyStore(path, reload_interval=3600)
    fast = KeyStore(path, reload_interval=0.0)
    revoke_key(path, "alice")
    bob = issue_key(path, "bob")
    assert slow.authenticate((("authorization", f"Bearer {alice}"),)).key_id == "alice"
    with pytest.raises(AuthError):
        slow.authenticate((("authorization", f"Bearer {bob}"),))
    assert fast.authenticate((("authorization", f"Bearer {bob}"),)).key_id == "bob"
    with pytest.raises(AuthError, match="invalid API key"):  # revoked
        fast.authenticate((("authorization", f"Bearer {alice}"),))
    slow._checked -= 3600  # the interval has passed
    assert slow.authenticate((("authorization", f"Bearer {bob}"),)).key_id == "bob"


def test_a_bad_edit_keeps_the_previous_keys_and_lets_nobody_in(tmp_path):
    """A reload that fails (malformed, removed, or made group-writable by someone who appended
    a key of their own) keeps the keys from before; a fixed file is read again."""
    path = tmp_path / "keys"
    alice = issue_key(path, "alice")
    store = KeyStore(path, reload_interval=0.0)
    mallory = new_api_key()
    entry = ApiKey("mallory", key_digest(mallory))
    with open(path, "a") as f:
        f.write(entry.to_json() + "\n")
    os.chmod(path, 0o622)
    with pytest.raises(AuthError):
        store.authenticate((("authorization", f"Bearer {mallory}"),))
    assert store.authenticate((("authorization", f"Bearer {alice}"),)).key_id == "alice"
    path.unlink()
    assert store.authenticate((("authorization", f"Bearer {alice}"),)).key_id == "alice"
    issue_key(path, "bob")  # a new file without alice: read again
    with pytest.raises(AuthError):
        store.authenticate((("authorization", f"Bearer {alice}"),))


# ----------------------------------------------------------------------------- the quota table
def test_a_quota_table_is_a_private_file_of_its_own_format(tmp_path):
    path = tmp_path / "quota"
    for workers, capacity in ((0, 8), (1, 0)):
        with pytest.raises(ValueError, match="^workers and capacity must be positive$"):
            QuotaTable.create(path, workers=workers, capacity=capacity)
    table = QuotaTable.create(path, workers=2, capacity=4)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert (table.capacity, table.workers) == (4, 2)
    with pytest.raises(FileExistsError):  # never reuses (or follows) an existing file
        QuotaTable.create(path, workers=2, capacity=4)
    maps = Path("/proc/self/maps")
    mapped = str(path) in maps.read_text()
    table.close()
    assert mapped and str(path) not in maps.read_text()  # unmapped
    table.close()  # closing twice is harmless (and closes nothing else)
    os.fstat(1)
    other = tmp_path / "other"
    other.write_bytes(b"NOTHEML!" + bytes(64))
    with pytest.raises(ValueError, match="is not a heml quota table"):
        QuotaTable(other)


def test_the_table_holds_capacity_keys_and_refuses_one_more(tmp_path):
    table = QuotaTable.create(tmp_path / "quota", workers=1, capacity=5)
    for i in range(5):
        assert table.take(f"key{i}", 1, 10, now=1.0) is None
    with pytest.raises(QuotaTableFull, match=r"quota table full \(5 key ids\)"):
        table.take("key5", 1, 10, now=1.0)
    with pytest.raises(QuotaTableFull):
        table.acquire("key6", 1, 0)
    # the known ones still work, and another process's view finds the same records
    assert table.take("key4", 9, 10, now=1.0) is None
    again = QuotaTable(tmp_path / "quota")
    assert again.take("key4", 1, 10, now=1.0) == pytest.approx(6.0)  # empty: 1 token at 1/6 s
    for i in range(4):
        assert again.take(f"key{i}", 9, 10, now=1.0) is None
        assert again.take(f"key{i}", 1, 10, now=1.0) is not None
    again.close()
    table.close()


def test_every_record_of_a_full_table_survives_updates_in_any_order(tmp_path):
    """Records never overlap: a full table updated in reverse order is read back intact by
    another process's view (each record: a 16-byte digest, two doubles and one int32 per
    worker, padded to 8 bytes; 48 bytes with 3 workers)."""
    path = tmp_path / "quota"
    table = QuotaTable.create(path, workers=3, capacity=64)
    assert os.stat(path).st_size == 16 + 64 * 48
    ids = [f"p/{i}" for i in range(64)]
    for i, key_id in enumerate(ids):
        assert table.take_total(key_id, i, 1000) is None
    for key_id in reversed(ids):
        assert table.acquire(key_id, 5, worker=2) is None
    other = QuotaTable(path)
    for i, key_id in enumerate(ids):
        assert other.take_total(key_id, 1001, 1000) == i  # i used: found, not a new record
        assert other.in_flight(key_id) == 1
    other.close()
    table.close()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="cannot mmap an empty file"):
        QuotaTable(empty)
    assert len(os.listdir("/proc/self/fd")) == fds  # the file was closed again


def test_the_token_bucket_refills_at_its_rate_and_caps_at_a_minute(tmp_path):
    table = QuotaTable.create(tmp_path / "quota", workers=1)
    assert table.take("k", 600, per_minute=600, now=100.0) is None  # starts full
    assert table.take("k", 1, per_minute=600, now=100.0) == pytest.approx(0.1)  # 10 / s
    assert table.take("k", 30, per_minute=600, now=103.0) is None  # 3 s: 30 tokens, exactly
    assert table.take("k", 1, per_minute=600, now=103.0) == pytest.approx(0.1)
    # a clock that went backwards refills nothing
    assert table.take("k", 1, per_minute=600, now=50.0) == pytest.approx(0.1)
    assert table.take("k", 600, per_minute=600, now=1000.0) is None  # capped at 600
    assert table.take("k", 601, per_minute=600, now=9000.0) == math.inf
    assert table.take("k", 600, per_minute=600, now=9000.0) is None
    # a block of exactly a minute's worth can pass again, after a minute
    assert table.take("k", 600, per_minute=600, now=9000.0) == pytest.approx(60.0)
    # the wait counts the tokens already there: 0.5 tokens after 0.05 s, 0.5 more to go
    assert table.take("k", 1, per_minute=600, now=9000.05) == pytest.approx(0.05)
    # without `now`: the monotonic clock
    start = time.monotonic()
    assert table.take("m", 60, per_minute=60) is None
    wait = table.take("m", 30, per_minute=60)
    assert 29.0 < wait <= 30.0 + (time.monotonic() - start)
    table.close()


def test_lifetime_allowances_and_in_flight_counts_at_their_limits(tmp_path):
    table = QuotaTable.create(tmp_path / "quota", workers=2)
    assert table.take_total("p/m/1/a", 12, 12) is None  # exactly the limit
    assert table.take_total("p/m/1/a", 1, 12) == 12
    assert table.take_total("p/m/1/b", 13, 12) == 0 and table.take_total("p/m/1/b", 7, 12) is None
    assert table.take_total("p/m/1/b", 6, 12) == 7
    assert table.acquire("k", 2, worker=1) is None
    assert table.acquire("k", 2, worker=1) is None
    assert table.acquire("k", 2, worker=0) == 2
    table.release("k", worker=0)  # nothing of worker 0's to release: stays at 0
    assert table.in_flight("k") == 2 and table.acquire("k", 3, worker=0) is None
    table.release("k", worker=1)  # one of worker 1's two calls ends
    assert table.in_flight("k") == 2
    assert table.acquire("k", 3, worker=1) is None
    table.reset_worker(1)  # worker 1 died with its two calls in flight
    assert table.in_flight("k") == 1
    table.release("k", worker=0)
    assert table.in_flight("k") == 0
    table.close()


# ----------------------------------------------------------------------------- the interceptor
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed-models")
    linear_model(3, "small", 1).save(folder / "small.json")
    return folder


def _row(n: int = 1, s: int = 1) -> pb.PredictRequest:
    from heml.he import wire

    request = pb.PredictRequest(
        model="small", layout=LAYOUT_TO_PB["row"], n=n, samples_per_ciphertext=s
    )
    request.ciphertexts.extend([bytes(wire.ciphertext_size(2048))] * (-(-n // s)))
    return request


def _auth(key: str, *extra):
    return (("authorization", f"Bearer {key}"), *extra)


def _fails(call, request, code, metadata, timeout=10):
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=timeout, metadata=metadata)
        if not isinstance(result, (pb.PredictResponse, pb.ModelInfo, pb.ListModelsResponse)):
            list(result)
    assert info.value.code() == code, info.value.details()
    return info.value


def _records(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "heml.requests"]


def test_calls_without_a_valid_key_are_unauthenticated_and_health_checks_are_exempt(
    folder, tmp_path
):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")
    with inprocess_server(folder, api_keys=str(keys)) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        listing = pb.ListModelsRequest()
        err = _fails(stub.ListModels, listing, UNAUTHENTICATED, None)
        assert err.details() == "missing API key: send the metadata 'authorization: Bearer <key>'"
        err = _fails(stub.ListModels, listing, UNAUTHENTICATED, _auth(new_api_key()))
        assert err.details() == "invalid API key"
        err = _fails(stub.PredictStream, iter([_row()]), UNAUTHENTICATED, _auth(alice[:-1]))
        assert err.details() == "invalid API key"
        assert [m.name for m in stub.ListModels(listing, timeout=10, metadata=_auth(alice)).models]
        assert stub.Predict(_row(), timeout=10, metadata=_auth(alice)).n == 1
        channel.close()
    # the health service needs no key (a server with one registered, as heml serve has)
    server = grpc.server(
        __import__("concurrent.futures").futures.ThreadPoolExecutor(2),
        interceptors=[_interceptor(keys)],
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
    finally:
        server.stop(None).wait()


def _interceptor(keys):
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig

    return build_interceptor(ServerConfig(models_dir=".", api_keys=str(keys)))


def test_a_keys_concurrency_limit_holds_on_every_rpc_kind_and_frees_its_slot(folder, tmp_path):
    """max_concurrent counts the key's calls in progress: one more is RESOURCE_EXHAUSTED with
    retry-after 1.000, another key is not affected, and a finished call frees its slot."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=1)
    bob = issue_key(keys, "bob")
    carol = issue_key(keys, "carol", max_concurrent=2)
    with inprocess_server(folder, api_keys=str(keys)) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        release = threading.Event()

        def held():
            first = _row(n=2)  # a block of 2 ciphertexts: the call stays open for the second
            del first.ciphertexts[1:]
            yield first
            release.wait(30)

        open_call = stub.PredictStream(held(), timeout=60, metadata=_auth(alice))
        deadline = time.monotonic() + 20
        while True:  # until the server has admitted the held call
            try:
                stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=_auth(alice))
            except grpc.RpcError as exc:
                assert exc.code() == EXHAUSTED
                busy = exc
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert busy.details() == (
            "API key 'alice' has 1 call(s) in flight, its limit is 1; retry when one finishes"
        )
        assert dict(busy.trailing_metadata())["retry-after"] == "1.000"
        for call, request in [
            (stub.Predict, _row()),
            (stub.GetModel, pb.GetModelRequest(name="small")),
            (stub.PredictStream, iter([_row()])),
        ]:
            _fails(call, request, EXHAUSTED, _auth(alice))
        assert stub.Predict(_row(), timeout=10, metadata=_auth(bob)).n == 1  # another key
        release.set()
        with pytest.raises(grpc.RpcError) as info:  # the held stream ends one ciphertext short
            list(open_call)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deadline = time.monotonic() + 20
        while True:  # its slot is free again (released when the call ended, however it ended)
            try:
                assert stub.Predict(_row(), timeout=10, metadata=_auth(alice)).n == 1
                break
            except grpc.RpcError as exc:
                assert exc.code() == EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.02)
        for _ in range(3):  # refused and successful calls alike leave nothing in flight
            assert stub.Predict(_row(), timeout=10, metadata=_auth(alice)).n == 1
            stub.GetModel(pb.GetModelRequest(name="small"), timeout=10, metadata=_auth(alice))
            _fails(stub.Predict, _row(n=0), grpc.StatusCode.INVALID_ARGUMENT, _auth(alice))
        channel.close()
    # a finished call releases its own slot once (its handler and gRPC's end-of-call callback
    # both end it): another call of the key in flight keeps its slot
    with _server(folder, api_keys=str(keys)) as (stub, interceptor):
        release.clear()
        held_calls = [stub.PredictStream(held(), timeout=60, metadata=_auth(carol))]
        _wait_in_flight(interceptor, "carol", 1)
        for _ in range(3):
            assert stub.Predict(_row(), timeout=10, metadata=_auth(carol)).n == 1
        _wait_in_flight(interceptor, "carol", 1)
        held_calls.append(stub.PredictStream(held(), timeout=60, metadata=_auth(carol)))
        _wait_in_flight(interceptor, "carol", 2)
        err = _fails(stub.Predict, _row(), EXHAUSTED, _auth(carol))
        assert "'carol' has 2 call(s) in flight, its limit is 2" in err.details()
        release.set()
        for call in held_calls:
            with pytest.raises(grpc.RpcError):
                list(call)
        _wait_in_flight(interceptor, "carol", 0)


def _wait_in_flight(interceptor, key_id: str, count: int) -> None:
    """Wait until the shared table counts ``count`` calls of the key in flight (a call is
    counted when the server starts it and uncounted just after it answers)."""
    deadline = time.monotonic() + 20
    while interceptor.quotas.table.in_flight(key_id) != count:
        assert time.monotonic() < deadline, interceptor.quotas.table.in_flight(key_id)
        time.sleep(0.02)


def test_a_keys_rate_quota_charges_computed_slots_and_says_when_to_retry(folder, tmp_path):
    """predictions_per_minute is a token bucket in computed sample slots: a ROW sample group
    of the d = 3 model computes 2048 // 3 = 682 slots, whatever n says."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", predictions_per_minute=1364)
    small = issue_key(keys, "small", predictions_per_minute=681)
    with inprocess_server(folder, api_keys=str(keys)) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        assert stub.Predict(_row(n=2, s=2), timeout=10, metadata=_auth(alice)).n == 2  # 682
        replies = stub.PredictStream(iter([_row(n=1)]), timeout=10, metadata=_auth(alice))
        assert [r.n for r in replies] == [1]  # 1364: the whole minute
        err = _fails(stub.Predict, _row(), EXHAUSTED, _auth(alice))
        left, wait = re.fullmatch(
            r"API key 'alice' is over its quota of 1364 predictions per minute \(this block "
            r"computes 682\); retry in (\d+\.\d) s",
            err.details(),
        ).group(0, 1)
        assert 29.0 <= float(wait) <= 30.0, left  # 682 tokens at 1364 / 60 per second
        retry = float(dict(err.trailing_metadata())["retry-after"])
        assert 29.0 <= retry <= 30.0
        err = _fails(stub.PredictStream, iter([_row()]), EXHAUSTED, _auth(small))
        assert err.details() == (
            "this block computes 682 sample slots, more than API key 'small' may use in a minute "
            "(681); send smaller blocks (ROW layout) or ask for a larger quota"
        )
        assert "retry-after" not in dict(err.trailing_metadata())
        channel.close()


def test_a_full_quota_table_refuses_rather_than_leaving_a_key_unlimited(folder, tmp_path):
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig

    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", predictions_per_minute=10**6)
    table = QuotaTable.create(tmp_path / "quota", workers=1, capacity=1)
    table.take("someone-else", 1, 10)

    class Runtime:
        quota_path = str(tmp_path / "quota")
        metrics_dir = None

    config = ServerConfig(models_dir=str(folder), api_keys=str(keys))
    interceptor = build_interceptor(config, worker=0, runtime=Runtime())
    assert interceptor.quotas.table.capacity == 1 and interceptor.keys is not None
    from concurrent import futures

    from heml.server.registry import Registry
    from heml.server.servicer import InferenceServicer, add_to_server

    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[interceptor])
    add_to_server(InferenceServicer(Registry.from_folder(folder)[0]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        err = _fails(stub.Predict, _row(), EXHAUSTED, _auth(alice))
        assert err.details() == "quota table full; try again later"
        channel.close()
    finally:
        server.stop(None).wait()
        table.close()


def test_without_api_keys_there_is_no_key_store_and_no_quota_table(folder, tmp_path):
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig

    interceptor = build_interceptor(ServerConfig(models_dir=str(folder)), worker=3)
    assert (interceptor.keys, interceptor.quotas, interceptor.worker) == (None, None, 3)
    assert interceptor.max_samples_per_request == 1 << 20 and not interceptor.metrics.enabled
    # a single process with API keys: a private table of one worker slot, used as slot 0
    keys = tmp_path / "keys"
    issue_key(keys, "alice")
    config = ServerConfig(models_dir=str(folder), api_keys=str(keys), max_samples_per_request=7)
    interceptor = build_interceptor(config, worker=3)
    assert (
        interceptor.quotas.worker,
        interceptor.quotas.table.workers,
        interceptor.max_samples_per_request,
    ) == (
        0,
        1,
        7,
    )
    assert interceptor.quotas.acquire("alice", 1, "call-1") is None
    assert interceptor.quotas.table.in_flight("alice") == 1  # counted in slot 0 of 1
    assert [k.key_id for k in interceptor.keys.keys] == ["alice"]


def test_every_kind_of_rpc_is_guarded_with_a_handler_of_its_own_kind(tmp_path):
    """The interceptor wraps unary and streaming handlers alike: without a key each kind gets a
    clean UNAUTHENTICATED, with one it runs; unknown methods stay UNIMPLEMENTED."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=1)

    def unary_stream(request, context):
        yield request
        yield request

    def stream_unary(requests, context):
        return b"".join(requests)

    handlers = {
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    }
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[_interceptor(keys)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        us = channel.unary_stream("/t.Echo/UnaryStream")
        su = channel.stream_unary("/t.Echo/StreamUnary")
        for metadata in (None, _auth(new_api_key())):
            _fails(us, b"x", UNAUTHENTICATED, metadata)
            _fails(su, iter([b"x"]), UNAUTHENTICATED, metadata)
        for _ in range(2):  # the slot of max_concurrent=1 is freed after each call
            assert list(us(b"ab", timeout=10, metadata=_auth(alice))) == [b"ab", b"ab"]
            assert su(iter([b"a", b"b"]), timeout=10, metadata=_auth(alice)) == b"ab"
        _fails(channel.unary_unary("/t.Echo/Nope"), b"", grpc.StatusCode.UNIMPLEMENTED, None)
        channel.close()
    finally:
        server.stop(None).wait()


@contextlib.contextmanager
def _server(folder, runtime=None, **options):
    """A worker's stack (as tests/guard_support.py) with this ``runtime`` for the interceptor:
    the supervisor's quota table path and whether metrics are on."""
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig
    from heml.server.registry import Registry
    from heml.server.servicer import InferenceServicer, add_to_server

    config = ServerConfig(models_dir=str(folder), **options)
    interceptor = build_interceptor(config, worker=0, runtime=runtime)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=config.grpc_options(reuse_port=False),
        interceptors=[interceptor],
    )
    add_to_server(InferenceServicer(Registry.from_folder(folder)[0]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    try:
        yield heml_pb2_grpc.InferenceStub(channel), interceptor
    finally:
        channel.close()
        server.stop(None).wait()


def _counts(metric) -> dict[tuple, float]:
    """{(sample name, *label values): value} of a prometheus-client metric."""
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


class _Metrics:
    quota_path = None
    metrics_dir = "on"  # metrics on (in this process's memory: no multiprocess directory)


def test_the_request_log_and_metrics_record_what_each_call_did(folder, tmp_path, caplog):
    """One log line per call with the key, the model, the layout and the computed slots (never
    the client's strings as given), and the metrics per method, model, status and key: what
    docs/security.md ("Request log", "Metrics") says an operator sees."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", predictions_per_minute=11000, max_concurrent=5)
    caplog.set_level(logging.INFO, logger="heml.requests")
    with _server(folder, _Metrics(), api_keys=str(keys), max_samples_per_request=5000) as (
        stub,
        interceptor,
    ):
        metadata = _auth(alice, ("x-request-id", "g 1"))
        stub.GetModel(pb.GetModelRequest(name="small"), timeout=10, metadata=metadata)
        stub.Predict(_row(n=2, s=2), timeout=10, metadata=_auth(alice))
        two = [_row(n=1), _row(n=3, s=3)]
        two[0].request_id, two[1].request_id = "first one", "second"
        assert len(list(stub.PredictStream(iter(two), timeout=10, metadata=_auth(alice)))) == 2
        column = pb.PredictRequest(model="small", layout=LAYOUT_TO_PB["column"], n=5)
        column.ciphertexts.extend([bytes(28704)] * 3)
        mixed = [_row(n=1), column]
        mixed[0].request_id = "in-the-block"  # the metadata's x-request-id wins
        metadata = _auth(alice, ("x-request-id", "m"))
        assert len(list(stub.PredictStream(iter(mixed), timeout=10, metadata=metadata))) == 2
        _fails(stub.Predict, _row(n=0), grpc.StatusCode.INVALID_ARGUMENT, _auth(alice))
        # over the per-call limit (5000 slots), then over alice's minute (11000 tokens)
        _fails(stub.PredictStream, iter([column, column]), EXHAUSTED, _auth(alice))
        _fails(stub.Predict, _row(), EXHAUSTED, _auth(alice))
        metrics = interceptor.metrics
    get, unary, stream, mixed_line, refused, over, rate = _records(caplog)[-7:]
    assert (get["method"], get["model"], get["version"], get["request_id"]) == (
        "GetModel",
        "small",
        1,
        "g_1",
    )
    assert (get["key_id"], get["status"], get["blocks"], get["computed"]) == ("alice", "OK", 0, 0)
    assert (unary["model"], unary["layout"], unary["n"], unary["ciphertexts"]) == (
        "small",
        "row",
        2,
        1,
    )
    assert (unary["computed"], unary["blocks"], unary["status"]) == (682, 1, "OK")
    assert unary["peer"].startswith("ipv4:127.0.0.1:") and 0 < unary["latency_ms"] < 30000
    assert (stream["n"], stream["blocks"], stream["computed"], stream["request_id"]) == (
        4,
        2,
        1364,
        "first_one",  # the first block's id, made safe (no x-request-id metadata)
    )
    assert stream["ciphertexts"] == 2 and mixed_line["ciphertexts"] == 1 + 3
    assert (mixed_line["layout"], mixed_line["request_id"], mixed_line["computed"]) == (
        "mixed",
        "m",
        682 + 4096,
    )
    assert (refused["status"], refused["model"], refused["blocks"]) == ("INVALID_ARGUMENT", "", 0)
    assert (over["status"], over["blocks"], rate["status"]) == (
        "RESOURCE_EXHAUSTED",
        1,
        "RESOURCE_EXHAUSTED",
    )
    requests = _counts(metrics._requests)
    assert requests[("heml_requests_total", "GetModel", "small", "OK")] == 1
    assert requests[("heml_requests_total", "Predict", "small", "OK")] == 1
    assert requests[("heml_requests_total", "PredictStream", "small", "OK")] == 2
    assert requests[("heml_requests_total", "Predict", "", "INVALID_ARGUMENT")] == 1
    latency = _counts(metrics._latency)
    assert latency[("heml_request_duration_seconds_count", "Predict")] == 3
    assert 0 < latency[("heml_request_duration_seconds_sum", "Predict")] < 30
    computed, requested = _counts(metrics._computed), _counts(metrics._requested)
    # 682 + 1364 + 4778 admitted, then the first COLUMN block of the refused stream (4096)
    assert computed[("heml_predictions_computed_total", "small")] == 682 + 1364 + 4778 + 4096
    assert requested[("heml_predictions_requested_total", "small")] == 2 + 4 + 6 + 5
    rejections = _counts(metrics._rejections)
    assert rejections[("heml_quota_rejections_total", "alice", "request")] == 1
    assert rejections[("heml_quota_rejections_total", "alice", "rate")] == 1


def test_messages_are_bounded_by_the_configured_sizes(folder):
    """--max-receive-bytes bounds a request message: one over it gets RESOURCE_EXHAUSTED from
    gRPC before any handler runs; the default (8 MiB) takes the SDK's 4 MiB messages."""
    request = _row(n=256, s=1)  # 256 ROW ciphertexts of 14368 bytes: 3.5 MiB
    size = request.ByteSize()
    assert 3 << 20 < size < 4 << 20
    with _server(folder) as (stub, _interceptor):
        assert stub.Predict(request, timeout=60).n == 256
    with _server(folder, max_receive_bytes=size - 1) as (stub, _interceptor):
        _fails(stub.Predict, request, EXHAUSTED, None)
        assert stub.Predict(_row(), timeout=10).n == 1
    with _server(folder, max_send_bytes=100) as (stub, _interceptor):  # a reply is ~12 KiB
        _fails(stub.Predict, _row(), EXHAUSTED, None)


def test_without_api_keys_a_refusal_is_counted_under_an_empty_key_id(folder):
    """The rejection metric's key_id label is empty for a call without an API key (labels are
    bounded: key ids from the key file, nothing a client chose)."""
    with _server(folder, _Metrics(), max_samples_per_request=682) as (stub, interceptor):
        _fails(stub.Predict, _row(n=2, s=1), EXHAUSTED, None)
        rejections = _counts(interceptor.metrics._rejections)
    assert rejections == {("heml_quota_rejections_total", "", "request"): 1}
