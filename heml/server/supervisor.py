"""The supervisor: validates models, reserves the port, forks workers, replaces dead ones.

Workers are forked before any gRPC object exists in this process (gRPC is not fork-safe once
started); each worker runs its own gRPC server on the same port with SO_REUSEPORT, so the
kernel spreads connections across them. A worker that dies is replaced; SIGTERM/SIGINT stop
all workers gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time

from ..errors import HemlError, ModelError
from ._fork import fork_child
from .options import ServerConfig
from .registry import scan
from .runtime import Runtime

log = logging.getLogger("heml.server")
READY_TIMEOUT = 120.0
RESTART_BACKOFF = (0.1, 5.0)


class NoModelsError(ModelError):
    """The model folder holds no valid model."""


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits (no orphaned servers)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def refuse_port_in_use(host: str, port: int) -> None:
    """Fail if another process listens on ``host:port``.

    Workers share the port with SO_REUSEPORT, which would also let a second `heml serve` (or
    anything else run by the same user) join it and take half the connections. A probe bound
    without SO_REUSEPORT conflicts with any listener on the port (SO_REUSEADDR still lets it
    past connections in TIME_WAIT, so a restart right after a stop works)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"cannot serve on {host}:{port}: the port is in use by another process "
                f"({exc.strerror}); stop it or choose another --port"
            ) from exc


@contextlib.contextmanager
def reserve_port(host: str, port: int):
    """Bind (not listen) with SO_REUSEPORT so the port stays ours while workers bind it."""
    refuse_port_in_use(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.workers: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self.port = 0
        self.restarts = 0
        self.runtime: Runtime | None = None  # quota table, metrics exporter

    def _fork_worker(self, slot: int, ready_w: int | None) -> int:
        supervisor = os.getpid()

        def run() -> int:
            from .worker import run_worker

            # a worker outlives a SIGKILLed supervisor otherwise, and keeps serving on the
            # port with nobody to replace it or stop it
            _die_with_parent()
            if os.getppid() != supervisor:  # the supervisor died before the line above
                return 1

            if self.runtime is not None:
                self.runtime.in_worker()
            return run_worker(self.config, self.port, ready_w, slot=slot, runtime=self.runtime)

        pid = fork_child(run, what="worker")
        self.workers[pid] = slot
        return pid

    def run(self, announce=None) -> int:
        models, errors = scan(self.config.models_dir)
        for name, reason in errors.items():
            log.warning("skipping model file %s: %s", name, reason)
        if not models:
            detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "no *.json files"
            raise NoModelsError(
                f"no valid model in {self.config.models_dir!r} ({detail}); export one with "
                "heml.export(...).save(path) or `heml train`"
            )
        for m in models:
            mdl = m.model
            eps = f" ε={mdl.dp.get('epsilon'):g}" if mdl.is_private else ""
            log.info(
                "model %s v%d: %s, d=%d, k=%d%s",
                mdl.name,
                mdl.version,
                mdl.task,
                mdl.n_features,
                mdl.n_outputs,
                eps,
            )
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        with (
            reserve_port(self.config.host, self.config.port) as port,
            Runtime(self.config) as runtime,
        ):
            self.port, self.runtime = port, runtime
            pipes = []
            for slot in range(self.config.workers):
                r, w = os.pipe()
                self._fork_worker(slot, w)
                os.close(w)
                pipes.append(r)
            deadline = time.monotonic() + READY_TIMEOUT
            for r in pipes:
                ok = _wait_readable(r, deadline) and os.read(r, 1) == b"R"
                os.close(r)
                if not ok:
                    self._stop_all()
                    raise RuntimeError("a worker failed to start; see the log above")
            log.info(
                "heml serving %d model(s) on %s:%d with %d worker(s)",
                len(models),
                self.config.host,
                port,
                self.config.workers,
            )
            if announce is not None:
                announce(
                    {
                        "port": port,
                        "pid": os.getpid(),
                        "workers": sorted(self.workers),
                        "models": [f"{m.model.name}:{m.model.version}" for m in models],
                        "errors": errors,
                        "metrics_port": runtime.metrics_port,
                    }
                )
            return self._watch()

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True

    def _watch(self) -> int:
        backoff = RESTART_BACKOFF[0]
        while not self.stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid and pid in self.workers:
                slot = self.workers.pop(pid)
                if self.stopping:
                    break
                log.warning("worker %d exited (%s); starting a replacement", pid, _describe(status))
                self.runtime.worker_exited(pid, slot)
                time.sleep(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF[1])
                if self.stopping:
                    break
                self._fork_worker(slot, None)
                self.restarts += 1
                continue
            if pid and self.runtime.child_exited(pid):
                continue
            backoff = max(RESTART_BACKOFF[0], backoff / 2)
            time.sleep(0.1)
        self._stop_all()
        return 0

    def _stop_all(self) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_seconds + self.config.grace_seconds + 5
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.workers.clear()


def _wait_readable(fd: int, deadline: float) -> bool:
    import select

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            return True


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s [%(process)d] %(message)s",
        stream=sys.stderr,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``heml.serve`` (a child process that reports on --ready-fd)."""
    p = argparse.ArgumentParser(prog="python -m heml.server.supervisor")
    p.add_argument("--config", required=True, help="ServerConfig as JSON")
    p.add_argument("--ready-fd", type=int, required=True)
    args = p.parse_args(argv)
    config = ServerConfig(**json.loads(args.config))
    configure_logging(config.log_level)
    _die_with_parent()

    def announce(info: dict) -> None:
        os.write(args.ready_fd, (json.dumps(info) + "\n").encode())
        os.close(args.ready_fd)

    try:
        return Supervisor(config).run(announce)
    except (HemlError, OSError, RuntimeError, ValueError) as exc:
        os.write(args.ready_fd, (json.dumps({"error": str(exc)}) + "\n").encode())
        return 2


if __name__ == "__main__":
    sys.exit(main())
