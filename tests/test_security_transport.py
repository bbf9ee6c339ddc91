"""Transport defaults (issue 13, item 8): no plaintext to another machine unless asked, /metrics
on loopback unless asked, and key files that others can read or write are flagged."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import heml
from heml.errors import InsecureTransport, KeyFileError
from heml.he.keys import KeyFileWarning, KeySet

from .security_support import TestCA

LOOPBACK = [
    "localhost:50051",
    "LOCALHOST:50051",
    "127.0.0.1:50051",
    "127.3.2.1:50051",
    "[::1]:50051",
    "unix:/tmp/heml.sock",
    "ipv4:127.0.0.1:1,127.0.0.2:2",
    "dns:///localhost:50051",
]
REMOTE = [
    "10.1.2.3:50051",
    "heml.example.com:50051",
    "localhost.example.com:50051",
    "127.0.0.1.example.com:50051",
    "[2001:db8::1]:50051",
    "ipv4:127.0.0.1:1,10.0.0.1:2",  # one remote address is enough
    "dns:///heml.example.com:443",
    "dns://8.8.8.8/localhost:50051",  # a remote resolver says where "localhost" is
]


@pytest.mark.parametrize("target", REMOTE)
def test_plaintext_to_another_machine_is_refused_unless_insecure(target):
    with pytest.raises(InsecureTransport, match=r"root_certificates=.*insecure=True"):
        heml.Client(target)
    heml.Client(target, insecure=True).close()  # the caller's explicit choice


@pytest.mark.parametrize("target", LOOPBACK)
def test_plaintext_to_this_machine_needs_no_flag(target):
    heml.Client(target).close()


def test_tls_to_another_machine_needs_no_flag():
    heml.Client("10.1.2.3:50051", root_certificates=TestCA("heml test CA").pem).close()


def _outbound_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent
        address = s.getsockname()[0]
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def _listening(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(addr)  # 32-bit words in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, words))
    return found


def test_metrics_bind_loopback_unless_told_and_a_remote_client_needs_insecure(model_dir):
    with heml.serve(model_dir, host="0.0.0.0", port=0, metrics_port=0) as server:
        assert _listening(server.port) & {"0.0.0.0", "::"}  # gRPC: where it was told
        assert _listening(server.metrics_port) == {"127.0.0.1"}  # /metrics: loopback
        address = _outbound_address()
        if address is not None:  # a real connection over a non-loopback interface
            with pytest.raises(InsecureTransport):
                heml.Client(f"{address}:{server.port}")
            with heml.Client(f"{address}:{server.port}", insecure=True) as client:
                assert {m.name for m in client.models()} == {"cancer", "wine", "diabetes-raw"}
    with heml.serve(model_dir, port=0, metrics_port=0, metrics_host="0.0.0.0") as server:
        assert _listening(server.metrics_port) == {"0.0.0.0"}  # told otherwise


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HEML_API_KEY="")
    return subprocess.run(
        [sys.executable, "-m", "heml", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_refuses_plaintext_to_another_machine_with_the_remedy():
    proc = _cli("models", "--server", "192.0.2.1:50051", "--timeout", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ca PEM" in lines[0] and "--insecure" in lines[0]
    # with --insecure it really tries (TEST-NET-1 answers nobody: a failed remote call)
    proc = _cli("models", "--server", "192.0.2.1:50051", "--timeout", "1", "--insecure")
    assert proc.returncode == 1 and "refusing" not in proc.stderr


def test_metrics_host_help_names_the_loopback_default():
    proc = _cli("serve", "--help")
    assert "default 127.0.0.1" in " ".join(proc.stdout.split())


# ---------------------------------------------------------------------- key file permissions
def test_a_key_file_others_can_read_warns_and_one_they_can_write_is_refused(tmp_path):
    path = tmp_path / "me.keys"
    KeySet().save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0600: silent
        KeySet.load(path)
    for mode in (0o640, 0o604):
        os.chmod(path, mode)
        with pytest.warns(KeyFileWarning, match="readable by group or others.*chmod 600"):
            KeySet.load(path)
        with pytest.warns(KeyFileWarning):
            heml.Client("localhost:1", keys=path).close()
    for mode in (0o620, 0o602, 0o666):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match="writable by group or others.*chmod 600"):
            KeySet.load(path)
