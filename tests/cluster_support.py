"""Real processes for the cluster tests: `heml serve` replicas, nginx, redis-server.

Everything binds 127.0.0.1 on free ports and is stopped by its own pid (process group for
replicas, so a SIGKILL takes the whole replica down as a crashed host or container would).
A missing nginx or redis-server skips the tests that need it, except under CI=true, where
the skip would hide untested code and so is a failure (`make test` installs both first).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str) -> str | None:
    """`name` on PATH or in the sbin folders a non-root PATH often lacks (nginx is there)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def require_binary(name: str, package: str) -> str:
    """The binary's path; skip without it, or fail under CI=true (CI must run these tests)."""
    path = find_binary(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; `make test` installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def wait_port(port: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"the process for port {port} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


# ---------------------------------------------------------------------- nginx
def render_nginx(
    listen: str,
    replicas: list[str],
    run_dir: str | Path,
    error_log: str | None = None,
    access_log: str | None = None,
) -> str:
    """deploy/nginx/nginx.conf.template with its placeholders filled (see its header);
    logs default to error.log and access.log in `run_dir`."""
    out = []
    for line in NGINX_TEMPLATE.read_text().splitlines():
        if "{{REPLICA}}" in line and not line.lstrip().startswith("#"):
            out.extend(line.replace("{{REPLICA}}", r) for r in replicas)
        else:
            out.append(line)
    text = "\n".join(out) + "\n"
    text = text.replace("{{LISTEN}}", listen).replace("{{RUN_DIR}}", str(run_dir))
    text = text.replace("{{ERROR_LOG}}", error_log or f"{run_dir}/error.log")
    text = text.replace("{{ACCESS_LOG}}", access_log or f"{run_dir}/access.log")
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    left = re.findall(r"\{\{[A-Z_]+\}\}", code)
    assert not left, f"unfilled placeholders {left}"
    return text


class Nginx:
    """nginx in the foreground (`daemon off;`), config and logs in a private folder."""

    def __init__(self, replicas: list[str], port: int | None = None) -> None:
        binary = require_binary("nginx", "nginx")
        self.port = port or free_port()
        # not under pytest's 0700 tmp folders: nginx workers run as `nobody` when started
        # by root and must reach their temp folders
        self.run_dir = Path(tempfile.mkdtemp(prefix="heml-nginx-"))
        self.run_dir.chmod(0o755)
        self.conf = self.run_dir / "nginx.conf"
        try:
            self.conf.write_text(render_nginx(f"127.0.0.1:{self.port}", replicas, self.run_dir))
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf), "-p", str(self.run_dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_port(self.port, 20, alive=lambda: self.proc.poll() is None)
        except AssertionError:
            self.stop()
            raise AssertionError(f"nginx did not start:\n{self.error_log}") from None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def error_log(self) -> str:
        path = self.run_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[str]:
        path = self.run_dir / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


# ---------------------------------------------------------------------- replicas
# Runs in the replica's own interpreter, then execs `heml serve` in place: Linux SIGKILLs it
# when the test process exits (PR_SET_PDEATHSIG survives exec). A preexec_fn would run Python
# in a child forked from a process with gRPC threads, which can crash before exec.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


@contextlib.contextmanager
def balanced(start_replicas):
    """(replicas, nginx): the replicas ``start_replicas()`` returns, behind one nginx; both are
    stopped on the way out, whatever the test raised."""
    replicas: list[Replica] = []
    nginx = None
    try:
        replicas = start_replicas()
        nginx = Nginx([r.target for r in replicas])
        yield replicas, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()


class _PortStillHeld(Exception):
    """A replica start refused because its port was still held."""


class Replica:
    """One `python -m heml serve` in its own process group, with Prometheus /metrics."""

    def __init__(self, models: Path, port: int | None = None, *extra: str) -> None:
        self.models = models
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.extra = extra
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, attempts: int = 5) -> None:
        """Start the replica; a start refused because its port is still held (the sockets of
        a replica killed a moment ago) is tried again, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except _PortStillHeld:
                if attempt == attempts - 1:
                    raise AssertionError("port still held:\n" + "".join(self.lines)) from None
                time.sleep(0.5)

    def _start_once(self, timeout: float) -> None:
        args = [
            sys.executable, "-c", _DIE_WITH_PARENT, "-m", "heml", "serve",
            "--models", str(self.models),
            "--port", str(self.port),
            "--workers", "1",
            "--metrics-port", str(self.metrics_port),
            "--reload-seconds", "0",
            "--drain-seconds", "0",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # kill() takes the process group down
        )
        ready = threading.Event()
        proc = self.proc

        def drain() -> None:
            for line in proc.stderr:
                self.lines.append(line)
                if "heml serving" in line:
                    ready.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                reader.join(5)  # the exited process's last lines (its error) are read
                if proc.returncode is not None and "in use by another process" in (
                    self.lines[-1] if self.lines else ""
                ):
                    raise _PortStillHeld
                raise AssertionError("replica did not start:\n" + "".join(self.lines))

    def kill(self) -> None:
        """SIGKILL the whole replica (supervisor and workers), like a crashed host."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            # the workers die a moment after the supervisor; until the last one has, its socket
            # holds the port and a restart is (rightly) refused as "in use by another process"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        # a worker orphaned by a failed shutdown would keep the port
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def calls(self, method: str = "Predict", status: str | None = "OK") -> int:
        """Calls of `method` this replica answered with `status` (any: None), its own count."""
        total = 0.0
        pattern = re.compile(r"^heml_requests_total\{([^}]*)\}\s+([0-9.eE+]+)$")
        for line in self.metrics().splitlines():
            m = pattern.match(line)
            if (
                m
                and f'method="{method}"' in m[1]
                and (status is None or f'status="{status}"' in m[1])
            ):
                total += float(m[2])
        return int(total)


# ---------------------------------------------------------------------- redis
class Redis:
    """redis-server on loopback. ``persist=True`` logs every write to an append-only file
    (fsync always) in its folder, so a stop and ``start()`` again keeps the counts, as a
    production Redis with AOF does; without it a restart starts empty.

    ``config``: extra redis.conf lines (``requirepass …``, ``user …`` ACL rules), written to a
    file in its folder that the command line's options follow. ``tls``: a dict with the PEM
    paths ``cert``, ``key`` and ``ca`` (the CA that client certificates must chain to): the
    server then listens with TLS only (``port 0``, ``tls-port``), and ``url`` is rediss://;
    the tests' ``client()`` presents ``client_cert``/``client_key`` (default: the server's
    own pair) and trusts ``server_ca`` (default: ``ca``).
    ``auth``: (user, password) the tests' own ``client()`` logs in with (user None: default)."""

    def __init__(
        self,
        persist: bool = False,
        config: tuple[str, ...] | list[str] = (),
        tls: dict | None = None,
        auth: tuple[str | None, str] | None = None,
    ) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.port = free_port()
        self.persist = persist
        self.config = list(config)
        self.tls = tls
        self.auth = auth
        self.dir = Path(tempfile.mkdtemp(prefix="heml-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (again) on the same port and folder."""
        conf = self.dir / "redis.conf"
        conf.write_text("".join(f"{line}\n" for line in self.config))
        conf.chmod(0o600)  # may hold a password
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else []
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls["cert"]),
                "--tls-key-file", str(self.tls["key"]),
                "--tls-ca-cert-file", str(self.tls["ca"]),
            ]  # fmt: skip
        args = [
            self.binary, str(conf), "--bind", "127.0.0.1", *listen,
            "--save", "", "--appendonly", "no", *aof, "--dir", str(self.dir),
            "--protected-mode", "yes", "--daemonize", "no",
        ]  # fmt: skip
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        try:
            wait_port(self.port, 20, alive=lambda: proc.poll() is None)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log.read_text(errors='replace')}") from None

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """One command in RESP, its raw reply (small replies; no client library needed;
        plaintext and no login: for servers without ``tls`` or ``auth``, else use client())."""
        assert self.tls is None and self.auth is None, "command() neither logs in nor speaks TLS"
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            s.sendall(payload.encode())
            return s.recv(65536)

    def client(self):
        """A redis-py client for the tests' own reads and writes (also called unbound with
        any object that has a ``port``: a plaintext Redis without login)."""
        import redis

        kw: dict = {}
        auth, tls = getattr(self, "auth", None), getattr(self, "tls", None)  # also given a port
        if auth is not None:
            kw["username"], kw["password"] = auth
        if tls is not None:
            kw.update(
                ssl=True,
                ssl_ca_certs=str(tls.get("server_ca", tls["ca"])),
                ssl_certfile=str(tls.get("client_cert", tls["cert"])),
                ssl_keyfile=str(tls.get("client_key", tls["key"])),
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)

    def halt(self) -> None:
        """Stop the server (SIGTERM: it finishes the command it runs), keep its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


COMPOSE_REPLICAS = ["replica-1:50051", "replica-2:50051", "replica-3:50051"]


def compose_nginx_conf() -> str:
    """deploy/nginx/compose.conf: the template rendered for deploy/docker-compose.yml."""
    header = (
        "# GENERATED from nginx.conf.template (tests/cluster_support.py compose_nginx_conf;\n"
        "# a test checks the two agree): listen 0.0.0.0:8080, replicas replica-1..3:50051,\n"
        "# logs to the container's stderr/stdout.\n"
    )
    return header + render_nginx(
        "0.0.0.0:8080", COMPOSE_REPLICAS, "/tmp", "/dev/stderr", "/dev/stdout"
    )


class ScoringLoad:
    """Client threads scoring the same rows against ``target`` until stopped, each call checked
    against the plaintext scores: ``ok`` holds the finish times of correct calls, ``errors``
    anything a caller saw, ``clients`` the SDK clients (for their ``retried`` counts)."""

    def __init__(self, target: str, X, want, threads: int = 4) -> None:
        import heml

        from .conftest import assert_scores_close

        self.ok: list[float] = []
        self.errors: list[BaseException] = []
        self.clients: list = []
        self._stop = threading.Event()

        def load() -> None:
            try:
                with heml.Client(target, timeout=30) as client:
                    self.clients.append(client)
                    model = client.model("m")
                    while not self._stop.is_set():
                        assert_scores_close(model.decision_function(X), want)
                        self.ok.append(time.monotonic())
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        self._threads = [threading.Thread(target=load) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
