"""redis-server as the cluster tests start it (for the coming `heml serve --state redis://`)."""

from __future__ import annotations

import socket

import pytest

from .cluster_support import Redis


def test_redis_server_runs_on_loopback_only_and_stops():
    redis = Redis()
    try:
        assert redis.command("PING") == b"+PONG\r\n"
        assert redis.command("SET", "heml:probe", "1") == b"+OK\r\n"
        assert redis.command("CONFIG", "GET", "bind").endswith(b"$9\r\n127.0.0.1\r\n")
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    finally:
        redis.stop()
    assert redis.proc.returncode is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis.port), 1):
        pass
