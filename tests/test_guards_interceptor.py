"""The interceptor's concurrency slot when a call ends before its handler does (issue 18;
docs/security.md, "Quotas": ``max_concurrent`` counts a key's calls in progress).

A call whose deadline passes (or whose client goes away) is over for the client at once; its
slot must be free at once too, not when the handler's work ends, and a call that ends while
it is being admitted must not keep the slot it was just given. Real gRPC on loopback, the
real interceptor and quota table; the handlers stand in for slow work and wait on an event the
test controls, so the tests do not depend on how long HE work takes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent import futures

import grpc
import pytest

from heml.server.auth import issue_key

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _auth(key: str):
    return (("authorization", f"Bearer {key}"),)


@contextlib.contextmanager
def _echo_server(keys, handlers, runtime=None, worker=0, **options):
    """The worker's interceptor (API keys from ``keys``) in front of ``handlers``."""
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig

    config = ServerConfig(models_dir=".", api_keys=str(keys), **options)
    interceptor = build_interceptor(config, worker=worker, runtime=runtime)
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Slow", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, interceptor
    finally:
        channel.close()
        server.stop(None).wait()
        interceptor.state.close()


@pytest.fixture(params=["embedded", "redis"])
def state(request):
    """The state backend's options and a reader of alice's calls in flight."""
    if request.param == "embedded":
        return {}, lambda interceptor: interceptor.quotas.table.in_flight("alice")
    redis = request.getfixturevalue("redis_server")
    client = redis.client()
    client.flushall()
    return {"state": redis.url}, lambda _interceptor: client.scard("heml:c:alice")


def _until(condition, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_call_past_its_deadline_frees_its_slot_while_its_handler_still_works(tmp_path, state):
    """max_concurrent=1: the first call's deadline passes while its handler still computes;
    the key's next call is admitted before that work ends (the slot was released when the
    call ended), and the late handler's own end does not release a second time."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=1)
    started, finish, finished = threading.Event(), threading.Event(), threading.Event()

    def slow(request, context):
        started.set()
        finish.wait(60)
        finished.set()
        return request

    def quick(request, context):
        return b"ok:" + request

    handlers = {
        "Work": grpc.unary_unary_rpc_method_handler(slow),
        "Quick": grpc.unary_unary_rpc_method_handler(quick),
    }
    options, in_flight = state
    with _echo_server(keys, handlers, **options) as (channel, interceptor):
        work, quick_call = channel.unary_unary("/t.Slow/Work"), channel.unary_unary("/t.Slow/Quick")
        try:
            with pytest.raises(grpc.RpcError) as info:
                work(b"x", timeout=0.5, metadata=_auth(alice))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert started.is_set() and not finished.is_set()

            def admitted() -> bool:
                try:
                    return quick_call(b"1", timeout=10, metadata=_auth(alice)) == b"ok:1"
                except grpc.RpcError as exc:
                    assert exc.code() == EXHAUSTED, exc.details()
                    return False

            assert _until(admitted), "the slot stayed taken until the handler's work ended"
            assert not finished.is_set()  # admitted while the first handler still works
            assert in_flight(interceptor) == 0
        finally:
            finish.set()
        assert _until(finished.is_set)
        time.sleep(0.1)  # the late handler has returned through the interceptor
        assert in_flight(interceptor) == 0
        # exactly one slot: a held call makes the next one wait, whatever happened before
        finish.clear()
        started.clear()
        held = work.future(b"y", timeout=30, metadata=_auth(alice))
        assert _until(started.is_set)
        with pytest.raises(grpc.RpcError) as info:
            quick_call(b"2", timeout=10, metadata=_auth(alice))
        assert info.value.code() == EXHAUSTED
        assert "'alice' has 1 call(s) in flight, its limit is 1" in info.value.details()
        finish.set()
        assert held.result(timeout=30) == b"y"
        assert _until(lambda: in_flight(interceptor) == 0)


class _PausedQuotas:
    """The real quota table's client, with ``acquire`` held until the test lets it go: the
    window in which a call can end while the interceptor is admitting it."""

    def __init__(self, real) -> None:
        self._real = real
        self.entered = threading.Event()
        self.go = threading.Event()

    def acquire(self, *args):
        self.entered.set()
        assert self.go.wait(30)
        return self._real.acquire(*args)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_call_that_ends_while_it_is_admitted_does_not_keep_the_slot(tmp_path, caplog, state):
    """The deadline passes while the interceptor is taking the key's slot: once taken, the slot
    is given back at once (nothing else would release it), the handler never runs, and the key
    can call again."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=1)
    ran = threading.Event()

    def work(request, context):
        ran.set()
        return request

    caplog.set_level(logging.INFO, logger="heml.requests")
    handlers = {"Work": grpc.unary_unary_rpc_method_handler(work)}
    options, in_flight = state
    with _echo_server(keys, handlers, **options) as (channel, interceptor):
        real = interceptor.quotas
        paused = _PausedQuotas(real)
        interceptor.quotas = paused
        call = channel.unary_unary("/t.Slow/Work")
        try:
            with pytest.raises(grpc.RpcError) as info:
                call(b"x", timeout=0.5, metadata=_auth(alice))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert paused.entered.is_set()
            # the end-of-call callback has run (its log line) while acquire is still held
            assert _until(lambda: any(r.name == "heml.requests" for r in caplog.records))
        finally:
            paused.go.set()
        # the slot the held acquire took is released by enter() itself
        assert _until(lambda: in_flight(interceptor) == 0), in_flight(interceptor)
        time.sleep(0.2)
        assert not ran.is_set()
        assert in_flight(interceptor) == 0
        interceptor.quotas = real
        assert call(b"z", timeout=30, metadata=_auth(alice)) == b"z"
        assert in_flight(interceptor) == 0


class _Runtime:
    """A supervisor's runtime as the interceptor sees it: the shared quota table's path, and
    metrics on (kept in this process's memory)."""

    metrics_dir = "on"

    def __init__(self, quota_path=None) -> None:
        self.quota_path = quota_path


def test_a_concurrency_refusal_is_counted_and_a_full_table_refuses(tmp_path):
    """A call over max_concurrent is counted under (key, "concurrency"); a key whose record
    finds no room in a full quota table is refused RESOURCE_EXHAUSTED, not let in unlimited."""
    from heml.server.quota import QuotaTable

    from .test_guards_keys_quotas import _counts

    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=1)
    started, finish = threading.Event(), threading.Event()

    def slow(request, context):
        started.set()
        finish.wait(30)
        return request

    handlers = {"Work": grpc.unary_unary_rpc_method_handler(slow)}
    with _echo_server(keys, handlers, _Runtime()) as (channel, interceptor):
        work = channel.unary_unary("/t.Slow/Work")
        held = work.future(b"x", timeout=30, metadata=_auth(alice))
        try:
            assert _until(started.is_set)
            with pytest.raises(grpc.RpcError) as info:
                work(b"y", timeout=30, metadata=_auth(alice))
            assert info.value.code() == EXHAUSTED
        finally:
            finish.set()
        assert held.result(timeout=30) == b"x"
        rejections = _counts(interceptor.metrics._rejections)
    assert rejections == {("heml_quota_rejections_total", "alice", "concurrency"): 1}
    table = QuotaTable.create(tmp_path / "quota", workers=1, capacity=1)
    try:
        table.take("someone-else", 1, 10)
        with _echo_server(keys, handlers, _Runtime(str(tmp_path / "quota"))) as (channel, _i):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/t.Slow/Work")(b"z", timeout=30, metadata=_auth(alice))
            assert info.value.code() == EXHAUSTED
            assert info.value.details() == "quota table full; try again later"
    finally:
        table.close()


def test_a_guarded_handler_keeps_the_methods_serializers(tmp_path):
    """The interceptor's handler decodes requests and encodes replies as the method it wraps
    does (heml's own methods parse their bytes themselves; other services need this)."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")

    def shout(request, context):
        assert isinstance(request, str)
        return request.upper()

    handler = grpc.unary_unary_rpc_method_handler(
        shout, request_deserializer=bytes.decode, response_serializer=str.encode
    )
    with _echo_server(keys, {"Shout": handler}) as (channel, _interceptor):
        call = channel.unary_unary("/t.Slow/Shout")
        # 5 s, not 30: a reply gRPC cannot encode is never sent, so a broken serializer shows
        # as this deadline passing (make mutate waited it out for each such mutant)
        assert call(b"hey", timeout=5, metadata=_auth(alice)) == b"HEY"


def test_a_worker_counts_its_calls_in_its_own_slot_of_the_shared_table(tmp_path):
    """Under a supervisor the quota table has a slot per worker (a dead worker's slot is reset
    without touching the others'): worker 1's call in flight is counted in slot 1."""
    from heml.server.quota import QuotaTable

    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", max_concurrent=3)
    started, finish = threading.Event(), threading.Event()

    def slow(request, context):
        started.set()
        finish.wait(30)
        return request

    table = QuotaTable.create(tmp_path / "quota", workers=2)
    handlers = {"Work": grpc.unary_unary_rpc_method_handler(slow)}
    try:
        with _echo_server(keys, handlers, _Runtime(str(tmp_path / "quota")), worker=1) as (
            channel,
            _interceptor,
        ):
            held = channel.unary_unary("/t.Slow/Work").future(b"x", metadata=_auth(alice))
            try:
                assert _until(started.is_set)
                assert table.in_flight("alice") == 1
                table.reset_worker(0)
                assert table.in_flight("alice") == 1  # not in slot 0
                table.reset_worker(1)
                assert table.in_flight("alice") == 0
            finally:
                finish.set()
            assert held.result(timeout=30) == b"x"
    finally:
        table.close()
