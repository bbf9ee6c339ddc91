"""Redis AUTH, ACL and TLS for ``--state`` (docs/deploy.md, 'Keep Redis private').

Real redis-servers on loopback: one with ``requirepass``, one whose heml user has exactly the
ACL docs/deploy.md gives operators, TLS-only ones whose certificates come from a CA made here
(tmp_path; no key is committed). Each protected case has its control: the same calls against
a Redis without a password, or with the right CA, succeed. Skips (no redis-server) fail under
CI=true, as in tests/test_cluster_state.py.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import heml
import heml.errors
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.private import KEY_NONCE_BYTES
from heml.server.auth import AuthError, issue_key, read_key_file
from heml.server.state import StateUnavailable, check_state_url
from heml.server.state import redis_backend as rb

from .cluster_support import ROOT, Redis, Replica
from .guard_support import linear_model
from .security_support import TestCA, write_pem_files
from .test_cluster_state import PARAMS, _auth, _served

PASSWORD = "Pw-9f3kQ7zZ-not-in-logs"  # distinctive: found wherever it leaks
ADMIN = ("admin", "admin-Pw-4x8")  # the tests' own login (the full rights an operator has)


def _documented_acl() -> str:
    """The ACL rule docs/deploy.md tells operators to give heml's Redis user."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    rules = re.findall(r"^ *(user heml on >PASSWORD .*)$", text, re.M)
    assert len(rules) == 1, "docs/deploy.md must give exactly one ACL rule for heml's user"
    return rules[0]


def _acl(password: str, drop: str | None = None) -> str:
    words = _documented_acl().replace(">PASSWORD", ">" + password).split()
    return " ".join(w for w in words if w != drop)


def _url(server: Redis, user: str | None, password: str | None, scheme="redis", query=""):
    login = f"{user or ''}:{password}@" if password is not None else ""
    return f"{scheme}://{login}127.0.0.1:{server.port}/0{query}"


@pytest.fixture(scope="module")
def public_keys():
    sk = KeySet().get(PARAMS)
    return [(bytes([i]) * KEY_NONCE_BYTES, public_key_p0(sk, bytes([i]) * KEY_NONCE_BYTES))
            for i in range(2)]  # fmt: skip


@pytest.fixture
def servers():
    made: list[Redis] = []

    def make(**kw) -> Redis:
        made.append(Redis(**kw))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _no_leak(text: str, secret: str = PASSWORD) -> None:
    assert secret not in text, f"the password leaked: {text[:400]}"


def _failure_chain(exc: BaseException) -> str:
    out = []
    while exc is not None:
        out.append(f"{type(exc).__name__}: {exc!r} {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


# ---------------------------------------------------------------------- AUTH (requirepass)
def test_requirepass_the_right_password_charges_a_wrong_or_missing_one_fails_closed(
    servers, caplog
):
    """Control: a Redis without requirepass takes a charge with no password in the URL. With
    requirepass the same URL, and a wrong password, are refused: the charge fails with
    StateUnavailable (UNAVAILABLE), nothing is counted, one log line says the login was
    refused; the password appears in no log line or error."""
    open_server = servers()
    state = rb.RedisState(_url(open_server, None, None), start=False)
    try:
        assert state.quotas.take("ann", 3, 60, "open.0") is None  # control
        assert state.quotas.charged("ann") == 3
    finally:
        state.close()

    server = servers(config=[f"requirepass {PASSWORD}"], auth=(None, PASSWORD))
    admin = server.client()
    right = rb.RedisState(_url(server, None, PASSWORD), start=False)
    try:
        assert right.quotas.take("ann", 3, 60, "ok.0") is None
        assert int(admin.hget("heml:q:ann", "charged")) == 3
    finally:
        right.close()

    wrong = "not-" + PASSWORD[::-1]
    for label, url in (("wrong", _url(server, None, wrong)), ("missing", _url(server, None, None))):
        caplog.clear()
        with caplog.at_level(logging.INFO, "heml.server"):
            problem = rb.ping(url)  # what `heml serve` logs at start
            assert problem is not None and "refused heml's login" in problem, (label, problem)
            state = rb.RedisState(url, start=False)
            try:
                for i in range(3):
                    with pytest.raises(StateUnavailable) as info:
                        state.quotas.take("ann", 3, 60, f"{label}.{i}")
                    _no_leak(_failure_chain(info.value), wrong)
                assert not state.sync()
            finally:
                state.close()
        logins = [r for r in caplog.records if "refused heml's login" in r.getMessage()]
        assert len(logins) == 1 and logins[0].levelname == "ERROR", (label, caplog.text)
        assert "check the user and password" in logins[0].getMessage()
        _no_leak(caplog.text + problem, wrong)
        assert int(admin.hget("heml:q:ann", "charged")) == 3, f"{label}: a refused call counted"

    # recovers without a restart once Redis takes the URL's password (here: set on Redis' side)
    state = rb.RedisState(_url(server, None, wrong), start=False)
    try:
        with pytest.raises(StateUnavailable):
            state.quotas.take("ann", 1, 60, "later.0")
        admin.config_set("requirepass", wrong)
        assert state.sync()
        assert state.quotas.take("ann", 1, 60, "later.1") is None
        assert int(admin.hget("heml:q:ann", "charged")) == 4
    finally:
        state.close()


def test_api_keys_fail_closed_behind_a_wrong_password_and_work_behind_the_right_one(
    tmp_path, servers
):
    keys = tmp_path / "keys"
    key = issue_key(keys, "ann")
    server = servers(config=[f"requirepass {PASSWORD}"], auth=(None, PASSWORD))
    for password, works in ((PASSWORD, True), ("wrong", False)):
        state = rb.RedisState(_url(server, None, password), api_keys=str(keys), start=False)
        try:
            if works:  # control: the key file's key is accepted once revocations were read
                assert state.keys.authenticate(_auth(key)).key_id == "ann"
            else:
                with pytest.raises(StateUnavailable):
                    state.keys.authenticate(_auth(key))
        finally:
            state.close()


# ---------------------------------------------------------------------- the documented ACL
def _every_path(url: str, admin, keys: Path, public_keys) -> None:
    """Everything heml does in Redis: the startup check, syncs, API keys (`heml keys issue` and
    `revoke --state` too), rate limit, allowance, in-flight slots, voids, the key registry
    across two replicas and its deletion. Raises on the first thing refused."""
    assert rb.ping(url) is None, "startup check"
    key = issue_key(keys, "ann", predictions_per_minute=60)
    a = rb.RedisState(url, api_keys=str(keys), start=False)
    b = rb.RedisState(url, start=False)
    try:
        assert a.sync() and b.sync(), "sync"
        assert a.keys.authenticate(_auth(key)).key_id == "ann"
        assert a.quotas.take("ann", 2, 60, "p.0") is None
        assert b.quotas.take_total("private/m/1/ann", 1, 5, "p.1") is None
        assert a.quotas.acquire("ann", 2, "call") is None
        a.quotas.release("ann", "call")
        assert a.quotas.void(["p.0"]) is None and not a._pending, "void deferred"
        assert a.quotas.charged("ann") == 0
        assert not admin.smembers("heml:c:ann"), "release"
        mine = a.private_keys(_served(per=1))
        evicted = mine.register(*public_keys[0], "key:ann")
        registered = mine.register(*public_keys[1], "key:ann")  # its cap is 1: evicts the first
        other = b.private_keys(_served(per=1))
        assert registered in other and evicted not in other, "eviction"
        assert other.take(registered, 1, 5) is None
        bob = issue_key(keys, "bob")
        (entry,) = [k for k in read_key_file(keys) if k.key_id == "bob"]
        rb.publish_key(url, entry)
        assert rb.publish_revocation(url, "bob", [entry.digest])
        assert a.sync(), "sync after revoke"
        with pytest.raises(AuthError):
            a.keys.authenticate(_auth(bob))
        a.forget_registry("m", 1)
        assert not admin.exists("heml:pk:m:1:owner"), "registry deletion"
    finally:
        a.close()
        b.close()


def test_the_documented_acl_is_enough_for_every_path_and_each_command_in_it_is_needed(
    tmp_path, servers, public_keys, caplog
):
    """docs/deploy.md's ACL rule for heml's user (keys ``heml:*`` only, a list of commands)
    runs every path with nothing denied (Redis' ACL LOG stays empty). Each command it grants
    is needed: the rule without it makes some path fail closed, with one log line naming the
    ACL, and Redis logs the denial of exactly that command."""
    rule = _acl(PASSWORD)
    assert " ~heml:* " in rule and "+@all" not in rule and "allkeys" not in rule
    server = servers(
        config=[f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all", rule, "user default off"],
        auth=ADMIN,
    )
    admin = server.client()
    url = _url(server, "heml", PASSWORD)
    _every_path(url, admin, tmp_path / "k0", public_keys)
    assert admin.acl_log() == []

    commands = [w[1:] for w in rule.split() if w.startswith("+")]
    assert len(commands) >= 20
    for i, command in enumerate(commands):
        narrower = _acl(PASSWORD, "+" + command).split()[2:]  # after "user heml"
        admin.execute_command("ACL", "SETUSER", "heml", "reset", *narrower)
        admin.flushall()
        admin.script_flush()  # so the scripts are loaded again (SCRIPT LOAD is needed)
        admin.acl_log_reset()
        caplog.clear()
        try:
            _every_path(url, admin, tmp_path / f"k{i + 1}", public_keys)
            failed = None
        except Exception as exc:
            failed = exc
        denied = {e["object"] for e in admin.acl_log()}
        assert failed is not None and denied == {command}, (command, denied, failed)


def test_a_user_without_a_needed_command_fails_closed_with_one_clear_line(servers, caplog):
    """Without EVALSHA (the scripts) every charge fails closed with UNAVAILABLE; the log says
    an ACL is missing, once, not 'malformed data' on every call."""
    server = servers(
        config=[f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all", _acl(PASSWORD, "+evalsha"),
                "user default off"],
        auth=ADMIN,
    )  # fmt: skip
    state = rb.RedisState(_url(server, "heml", PASSWORD), start=False)
    try:
        with caplog.at_level(logging.INFO, "heml.server"):
            for i in range(3):
                with pytest.raises(StateUnavailable, match="denies a command"):
                    state.quotas.take("ann", 1, 60, f"d.{i}")
        lines = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(lines) == 1 and "denied a command heml needs" in lines[0].getMessage()
        assert "evalsha" in lines[0].getMessage() and "docs/deploy.md" in lines[0].getMessage()
    finally:
        state.close()
    assert not server.client().exists("heml:q:ann")


# ---------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Our CA with a server certificate (localhost, 127.0.0.1) and a client certificate for
    heml; another CA with a server certificate for the same names (a Redis heml must refuse)."""
    folder = tmp_path_factory.mktemp("redis-pki")
    ours, theirs = TestCA("heml redis CA"), TestCA("another CA")
    files = {"ca": ours.pem, "other_ca": theirs.pem}
    files["cert"], files["key"] = ours.issue("redis", server=True)
    files["client_cert"], files["client_key"] = ours.issue("heml", server=False)
    files["other_cert"], files["other_key"] = theirs.issue("redis", server=True)
    return write_pem_files(folder, files)


def _tls(pki, signed_by: str = "ours") -> dict:
    """The helper's tls= for a server whose certificate ``signed_by`` ours or the other CA
    (client certificates must come from our CA either way)."""
    prefix = "" if signed_by == "ours" else "other_"
    return {
        "cert": pki[prefix + "cert"],
        "key": pki[prefix + "key"],
        "ca": pki["ca"],
        "client_cert": pki["client_cert"],
        "client_key": pki["client_key"],
        "server_ca": pki["ca" if signed_by == "ours" else "other_ca"],  # for the tests' client
    }


def _tls_query(pki, ca: str = "ca", client: bool = True) -> str:
    query = f"?ssl_ca_certs={pki[ca]}"
    if client:
        query += f"&ssl_certfile={pki['client_cert']}&ssl_keyfile={pki['client_key']}"
    return query


def _refused(url: str, caplog, expect: str) -> str:
    """A charge through ``url`` fails closed; the log line (once) says why, containing
    ``expect``. Returns the log."""
    caplog.clear()
    with caplog.at_level(logging.INFO, "heml.server"):
        problem = rb.ping(url)
        assert problem is not None
        state = rb.RedisState(url, start=False)
        try:
            for i in range(2):
                with pytest.raises(StateUnavailable):
                    state.quotas.take("ann", 1, 60, f"r.{i}")
        finally:
            state.close()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and expect in lines[0], (expect, lines, problem)
    assert expect in problem, problem
    return caplog.text


def test_rediss_with_our_ca_works_and_a_server_signed_by_another_ca_is_refused(
    pki, servers, caplog
):
    """The pair: the same rediss:// URL form, the same CA file, two TLS-only servers that
    differ only in who signed their certificate. Ours serves a charge end to end; the other
    is refused at the handshake (fail closed: StateUnavailable, nothing charged there)."""
    good = servers(tls=_tls(pki))
    bad = servers(tls=_tls(pki, signed_by="theirs"))
    url = _url(good, None, None, "rediss", _tls_query(pki))
    assert check_state_url(url) == url
    state = rb.RedisState(url, start=False)
    try:
        assert state.quotas.take("ann", 3, 60, "tls.0") is None
        assert int(good.client().hget("heml:q:ann", "charged")) == 3
    finally:
        state.close()
    _refused(_url(bad, None, None, "rediss", _tls_query(pki)), caplog, "CERTIFICATE_VERIFY_FAILED")
    # the other server's own client (trusting the other CA): it answers, nothing was charged
    other = bad.client()
    assert other.ping() and not other.exists("heml:q:ann")
    # without ssl_ca_certs the system CA bundle is used, which does not hold our CA: refused
    _refused(_url(good, None, None, "rediss"), caplog, "CERTIFICATE_VERIFY_FAILED")


def test_tls_without_the_client_certificate_redis_requires_is_refused(pki, servers, caplog):
    """Redis' default tls-auth-clients yes: a URL without ssl_certfile/ssl_keyfile fails
    closed (the control, with them, is the test above)."""
    server = servers(tls=_tls(pki))
    _refused(_url(server, None, None, "rediss", _tls_query(pki, client=False)), caplog, "")
    assert not server.client().exists("heml:q:ann")


def test_plaintext_redis_to_a_tls_only_port_fails_closed(pki, servers, caplog):
    server = servers(tls=_tls(pki))
    _refused(_url(server, None, None, "redis"), caplog, "")
    client = server.client()  # control: the port serves TLS, and nothing was charged
    assert client.ping() and not client.exists("heml:q:ann")


def test_tls_options_in_the_url_are_checked_before_anything_connects(pki):
    """A misspelt option would reach redis-py as a keyword its connection rejects (a traceback
    at the first call); a TLS option on redis:// would be refused the same way, and a missing
    CA file only at the first connection. Each is a one-line ValueError at start, naming the
    option, quoting no value."""
    base = "rediss://heml:secretpw@127.0.0.1:6380/0"
    assert check_state_url(base + _tls_query(pki)) == base + _tls_query(pki)  # control
    for url, why in (
        (base + f"?ssl_ca_cert={pki['ca']}", "an option heml does not accept"),
        (base.replace("rediss", "redis") + f"?ssl_ca_certs={pki['ca']}", "needs TLS: use rediss"),
        (base + "?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs names no readable file"),
        (base + "?ssl_keyfile=/nonexistent/k.pem", "ssl_keyfile names no readable file"),
        (base + "?socket_timeout=60", "an option heml does not accept"),
        (base + "?db=one", "db must be a number"),
    ):
        with pytest.raises(ValueError, match=why) as info:
            check_state_url(url)
        assert "secretpw" not in str(info.value) and "nonexistent" not in str(info.value)
        assert "ssl_ca_cert=" not in str(info.value)


# ---------------------------------------------------------------------- `heml serve`
def _cmdlines(pgid: int) -> str:
    """The command lines of every process in a replica's process group (supervisor and
    workers), as ``ps`` shows them."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ProcessLookupError):
                continue
    return "\n".join(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    models = root / "models"
    models.mkdir()
    linear_model(3, "m", 1).save(models / "m.json")
    keys = root / "keys"
    key = issue_key(keys, "ann", predictions_per_minute=100_000)
    return models, keys, key


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_heml_serve_over_tls_with_the_acl_user_charges_and_keeps_the_password_hidden(
    pki, servers, served, monkeypatch
):
    """`heml serve --state env` with HEML_STATE_URL = rediss://heml:<password>@…?ssl_ca_certs=
    …&ssl_certfile=…&ssl_keyfile=… (the documented form, the documented ACL user): a scored
    call is charged in Redis. With a wrong password the replica starts, says in one line that
    Redis refused its login, and answers the call UNAVAILABLE, charging nothing. The password
    appears in no process's command line, no log line and no error the client sees."""
    models, keys, key = served
    server = servers(
        tls=_tls(pki),
        config=[f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all", _acl(PASSWORD),
                "user default off"],
        auth=ADMIN,
    )  # fmt: skip
    admin = server.client()
    X = np.random.default_rng(14).uniform(-1, 1, size=(4, 3))
    for password in (PASSWORD, "Wrong-" + PASSWORD):
        url = _url(server, "heml", password, "rediss", _tls_query(pki))
        monkeypatch.setenv("HEML_STATE_URL", url)
        replica = Replica(models, None, "--state", "env", "--api-keys", str(keys))
        try:
            seen = _cmdlines(replica.proc.pid)
            assert "--state env" in seen and "heml" in seen  # control: we read their argv
            _no_leak(seen, password)
            with heml.Client(replica.target, api_key=key, timeout=20, retries=0) as client:
                if password == PASSWORD:
                    assert client.model("m").predict(X).shape == (4,)
                    charged = int(admin.hget("heml:q:ann", "charged"))
                    assert charged > 0
                else:
                    with pytest.raises(heml.errors.ServerUnavailable) as info:
                        client.model("m").predict(X)
                    assert info.value.code == "UNAVAILABLE"
                    _no_leak(f"{info.value} {info.value.details}", password)
                    assert int(admin.hget("heml:q:ann", "charged")) == charged
        finally:
            replica.stop()
        log = "".join(replica.lines)
        _no_leak(log, password)
        if password != PASSWORD:
            assert "refused heml's login" in log, log[-2000:]
    assert admin.acl_log() == [] or {e["reason"] for e in admin.acl_log()} == {"auth"}


def test_heml_serve_refuses_to_start_with_a_bad_option_in_one_line(monkeypatch, pki):
    """A misspelt TLS option: `heml serve` exits at once with one line naming the option
    (not a traceback at the first call), and the password is not in it."""
    monkeypatch.setenv(
        "HEML_STATE_URL", f"rediss://heml:{PASSWORD}@127.0.0.1:1/0?ssl_ca_cert={pki['ca']}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "heml", "serve", "--models", str(ROOT), "--state", "env"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "option heml does not accept" in lines[0], done.stderr
    _no_leak(done.stderr + done.stdout)


def test_a_void_denied_by_the_acl_is_kept_until_the_acl_allows_it(servers, caplog):
    """A charge made, then the operator narrows the ACL (here: HMGET, which only the void
    script needs among what a sync runs): the void of a failed call cannot run. It stays
    queued, and is sent once the ACL is fixed, so the failed call costs nothing; it is not
    dropped as if the data were malformed (the call would stay charged for good)."""
    server = servers(
        config=[f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all", _acl(PASSWORD), "user default off"],
        auth=ADMIN,
    )
    admin = server.client()
    state = rb.RedisState(_url(server, "heml", PASSWORD), start=False)
    try:
        assert state.quotas.take("ann", 5, 60, "v.0") is None
        assert state.quotas.charged("ann") == 5
        admin.execute_command("ACL", "SETUSER", "heml", "-hmget")
        with caplog.at_level(logging.INFO, "heml.server"):
            state.quotas.void(["v.0"])  # its call failed: undo the charge
            assert len(state._pending) == 1
            assert not state.sync()
        assert len(state._pending) == 1, "the denied void was dropped"
        assert "denied a command heml needs" in caplog.text
        admin.execute_command("ACL", "SETUSER", "heml", "+hmget")
        assert state.sync() and not state._pending
        assert state.quotas.charged("ann") == 0
    finally:
        state.close()
