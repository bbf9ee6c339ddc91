"""heml.serve: run a heml server in worker processes and get a handle to it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import HemlError
from .options import ServerConfig
from .state import STATE_URL_ENV

__all__ = ["ServerConfig", "ServerHandle", "serve"]


class ServerStartError(HemlError, RuntimeError):
    """The server could not start (no valid model, port in use, worker failure)."""


class ServerHandle:
    """A running server: ``.port``, ``.address``, ``.stop()``; a context manager."""

    def __init__(self, proc: subprocess.Popen, info: dict, config: ServerConfig) -> None:
        self._proc = proc
        self.config = config
        self.port: int = int(info["port"])
        self.pid: int = proc.pid
        self.worker_pids: list[int] = list(info.get("workers", []))
        self.models: list[str] = list(info.get("models", []))
        self.load_errors: dict[str, str] = dict(info.get("errors", {}))
        self.metrics_port: int | None = info.get("metrics_port")  # with metrics_port=…

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def current_worker_pids(self) -> list[int]:
        """The supervisor's live worker processes now (workers that died were replaced)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid and fields[0] not in ("Z", "X"):
                pids.append(int(entry))
        return sorted(pids)

    def stop(self, grace: float | None = None) -> int:
        """Stop gracefully (in-flight calls finish within ``grace`` seconds); returns exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            wait = (grace if grace is not None else self.config.grace_seconds) + 10
            wait += self.config.drain_seconds
            try:
                self._proc.wait(wait)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<heml server {self.address} {state}, {len(self.models)} model(s)>"


def serve(
    models_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 1,
    timeout: float = 120.0,
    **options,
) -> ServerHandle:
    """Start a server for the models in ``models_dir``; returns once it answers health checks.

    HE work runs in ``workers`` separate processes (never in the caller's interpreter).
    ``port=0`` picks a free port (see ``handle.port``). Extra keyword ``options`` are
    ``ServerConfig`` fields (``threads``, ``max_concurrent_rpcs``, ``max_receive_bytes``, …),
    the same as ``heml serve``'s flags: ``api_keys``, ``tls_cert``, ``tls_key``,
    ``tls_client_ca``, ``metrics_port`` (0 = any; see ``handle.metrics_port``),
    ``max_samples_per_request`` (docs/security.md), ``state`` (``"redis://host:6379/0"``:
    quotas, model-privacy keys and revocations shared with other replicas; docs/deploy.md).
    Broken model files are skipped and listed in ``handle.load_errors``; a folder with no valid
    model raises ``ServerStartError``.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    config = ServerConfig(
        models_dir=str(Path(models_dir).resolve()), host=host, port=port, workers=workers, **options
    )
    settings, env = config.to_dict(), None
    if config.state not in (None, "env"):  # the URL (maybe a password) goes by environment:
        env = {**os.environ, STATE_URL_ENV: config.state}  # a command line is shown by ps
        settings["state"] = "env"
    r, w = os.pipe()
    cmd = [
        sys.executable,
        "-m",
        "heml.server.supervisor",
        "--config",
        json.dumps(settings),
        "--ready-fd",
        str(w),
    ]
    proc = subprocess.Popen(cmd, pass_fds=(w,), close_fds=True, env=env)
    os.close(w)
    try:
        line = _read_line(r, timeout, proc)
    finally:
        os.close(r)
    if not line:
        proc.kill()
        proc.wait()
        raise ServerStartError("the server did not start (see its log on stderr)")
    info = json.loads(line)
    if "error" in info:
        proc.wait(10)
        raise ServerStartError(info["error"])
    handle = ServerHandle(proc, info, config)
    if config.tls_cert is None:  # with TLS the workers' readiness (above) is the check
        _wait_healthy(handle, timeout)
    return handle


def _read_line(fd: int, timeout: float, proc: subprocess.Popen) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or (proc.poll() is not None and not select.select([fd], [], [], 0)[0]):
            return ""
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode().strip()


def _wait_healthy(handle: ServerHandle, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{'localhost' if handle.config.host in ('0.0.0.0', '::') else handle.config.host}"
    target = f"[{target}]:{handle.port}" if ":" in target else f"{target}:{handle.port}"
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or not handle.running:
                handle.stop()
                raise ServerStartError(f"server on {target} did not become healthy")
            time.sleep(0.05)
