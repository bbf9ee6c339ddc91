"""API key files: `heml keys issue|revoke|list`, parsing, checking bearer metadata, reloads."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from heml.server.auth import (
    ApiKeyFileError,
    AuthError,
    KeyStore,
    issue_key,
    parse_key_file,
    read_key_file,
    revoke_key,
)

from .security_support import bearer, run_cli


# ---------------------------------------------------------------------- the key file
def test_issue_prints_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    path = tmp_path / "api-keys.jsonl"
    code, out, err = run_cli(
        capsys, "keys", "issue", "--api-keys", str(path), "--id", "alice",
        "--predictions-per-minute", "600", "--max-concurrent", "2",
    )  # fmt: skip
    key = out.strip()
    assert code == 0 and out == key + "\n" and key.startswith("heml_") and len(key) == 48
    assert key not in err and "shown only this once" in err
    assert (os.stat(path).st_mode & 0o777) == 0o600
    text = path.read_text()
    assert key not in text
    entry = json.loads(text)
    assert entry["id"] == "alice"
    assert entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert (entry["predictions_per_minute"], entry["max_concurrent"]) == (600, 2)

    second = issue_key(path, "bob")
    assert second != key
    assert [k.key_id for k in read_key_file(path)] == ["alice", "bob"]
    code, listing, _ = run_cli(capsys, "keys", "list", "--api-keys", str(path))
    assert code == 0 and "alice" in listing and "600" in listing and "bob" in listing
    assert entry["sha256"] not in listing and key not in listing

    code, _, err = run_cli(capsys, "keys", "issue", "--api-keys", str(path), "--id", "alice")
    assert code == 2 and "already has a key with id 'alice'" in err
    with pytest.raises(ApiKeyFileError, match="invalid key id"):
        issue_key(path, "no spaces")
    code, _, err = run_cli(capsys, "keys", "revoke", "--api-keys", str(path), "--id", "alice")
    assert code == 0 and [k.key_id for k in read_key_file(path)] == ["bob"]
    code, _, err = run_cli(capsys, "keys", "revoke", "--api-keys", str(path), "--id", "alice")
    assert code == 2 and "no key with id 'alice'" in err
    assert (os.stat(path).st_mode & 0o777) == 0o600  # still private after the rewrite


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "line 1: not a JSON object"),
        ('{"id": "a", "sha256": "00"}', "sha256 must be 64"),
        ('{"id": "", "sha256": "' + "0" * 64 + '"}', "id must be"),
        ('{"id": "a", "sha256": "' + "0" * 64 + '", "max_concurent": 2}', "unknown field"),
        ('{"id": "a", "sha256": "' + "0" * 64 + '", "max_concurrent": 0}', "positive integer"),
        ('{"id": "a", "sha256": "' + "0" * 64 + '", "predictions_per_minute": true}', "positive"),
    ],
)
def test_malformed_key_files_are_refused_with_the_line(line, message):
    with pytest.raises(ApiKeyFileError, match=message):
        parse_key_file(line)


def test_comments_and_blank_lines_are_allowed():
    entry = '{"id": "a", "sha256": "' + "0" * 64 + '", "predictions_per_minute": null}'
    (key,) = parse_key_file("# clients\n\n" + entry + "\n")
    assert (key.key_id, key.predictions_per_minute, key.max_concurrent) == ("a", None, None)


def test_duplicate_ids_are_refused():
    entry = '{"id": "a", "sha256": "' + "0" * 64 + '"}'
    with pytest.raises(ApiKeyFileError, match="duplicate id 'a'"):
        parse_key_file(entry + "\n" + entry)


def test_authenticate_parses_bearer_metadata(tmp_path):
    path = tmp_path / "keys"
    key = issue_key(path, "alice")
    other = issue_key(path, "bob", max_concurrent=3)
    store = KeyStore(path)
    assert store.authenticate(bearer(key)).key_id == "alice"
    found = store.authenticate((("authorization", f"bearer  {other} "),))
    assert (found.key_id, found.max_concurrent) == ("bob", 3)
    for metadata, message in [
        ((), "missing API key"),
        ((("authorization", f"Basic {key}"),), "malformed"),
        ((("authorization", "Bearer"),), "malformed"),
        ((("authorization", f"Bearer {key} x"),), "malformed"),
        ((*bearer(key), *bearer(key)), "more than one"),
        (bearer(key[:-1] + ("A" if key[-1] != "A" else "B")), "invalid API key"),
    ]:
        with pytest.raises(AuthError, match=message):
            store.authenticate(metadata)


def test_key_store_reloads_changes_and_keeps_keys_on_a_bad_edit(tmp_path):
    path = tmp_path / "keys"
    key = issue_key(path, "alice")
    store = KeyStore(path, reload_interval=0.0)
    newer = issue_key(path, "bob")
    assert store.authenticate(bearer(newer)).key_id == "bob"
    revoke_key(path, "alice")
    with pytest.raises(AuthError):
        store.authenticate(bearer(key))
    path.write_text("garbage\n")  # a broken edit: keep serving the previous keys
    assert store.authenticate(bearer(newer)).key_id == "bob"


def test_group_writable_key_file_is_refused(tmp_path):
    path = tmp_path / "keys"
    issue_key(path, "alice")
    os.chmod(path, 0o620)
    with pytest.raises(ApiKeyFileError, match="chmod 600"):
        read_key_file(path)
