"""Prometheus metrics across worker processes (``--metrics-port``), on 127.0.0.1 unless
``--metrics-host`` names another address.

Each worker counts in its own process; prometheus-client's multiprocess mode makes the counts
add up. The supervisor creates a fresh private directory, puts it in
``PROMETHEUS_MULTIPROC_DIR`` before forking, and every worker's metric values are then backed
by files in it (one per process; prometheus-client is imported only after the fork). A
separate exporter process, forked by the supervisor like the workers, serves ``/metrics`` with a
``MultiProcessCollector`` that sums those files. The port is bound by the supervisor before
any fork, so a busy port stops startup with a clear error, and the supervisor keeps the socket
and restarts the exporter if it dies. The supervisor itself stays single-threaded and never
creates a gRPC object. Counters of a worker that died remain in the directory, so totals never
go backwards; the directory is deleted when the server stops.

Metrics (labels are bounded: model names only for served models, key ids from the key file):

* ``heml_requests_total{method, model, status}``
* ``heml_request_duration_seconds{method}`` (histogram)
* ``heml_predictions_computed_total{model}``: sample slots admitted for HE evaluation, the
  quota unit (what the ciphertexts can carry, ≥ the samples declared)
* ``heml_predictions_requested_total{model}``: samples the clients declared (n)
* ``heml_quota_rejections_total{key_id, limit}`` with limit ``rate``, ``concurrency`` or
  ``request``
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ._fork import fork_child

log = logging.getLogger("heml.server")
ENV = "PROMETHEUS_MULTIPROC_DIR"
# /metrics binds loopback unless --metrics-host says otherwise, whatever --host is: its labels
# (model names, API key ids) and traffic counts are for the operator, not for every client
DEFAULT_HOST = "127.0.0.1"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """The metrics one worker updates; every method is a no-op when metrics are off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # a private registry: in multiprocess mode the values live in files either way
        registry = CollectorRegistry()
        self._requests = Counter(
            "heml_requests",
            "Calls answered, by method, model and gRPC status",
            ["method", "model", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "heml_request_duration_seconds",
            "Time from the start of a call to its status, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._computed = Counter(
            "heml_predictions_computed",
            "Sample slots admitted for encrypted evaluation (the quota unit: what the "
            "ciphertexts can carry, at least the samples declared)",
            ["model"],
            registry=registry,
        )
        self._requested = Counter(
            "heml_predictions_requested",
            "Samples declared by clients (n) in admitted blocks",
            ["model"],
            registry=registry,
        )
        self._rejections = Counter(
            "heml_quota_rejections",
            "Calls refused by a per-key quota (rate, concurrency) or the per-call limit",
            ["key_id", "limit"],
            registry=registry,
        )

    def request(self, method: str, model: str, status: str, seconds: float) -> None:
        if self.enabled:
            self._requests.labels(method, model, status).inc()
            self._latency.labels(method).observe(seconds)

    def admitted(self, model: str, computed: int, requested: int) -> None:
        if self.enabled:
            self._computed.labels(model).inc(computed)
            self._requested.labels(model).inc(requested)

    def rejected(self, key_id: str, limit: str) -> None:
        if self.enabled:
            self._rejections.labels(key_id, limit).inc()


# ---------------------------------------------------------------------- the exporter process
class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a scraper may take to send its request

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "metrics are at /metrics")
            return
        body, content_type = self.server.collect()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # no access log on stderr
        pass


class MetricsExporter:
    """``/metrics`` over HTTP from a forked child process (see the module docstring)."""

    def __init__(self, host: str, port: int, directory: str) -> None:
        self.directory = directory
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (ThreadingHTTPServer,), {"address_family": family})
        try:
            self._server = server_cls((host, port), _Handler)
        except OSError as exc:
            raise OSError(f"cannot bind the metrics port {host}:{port}: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_address[1]
        self.pid: int | None = None

    def start(self) -> int:
        """Fork the serving process (from a process with no threads); returns its pid."""
        pid = fork_child(self._run_child, what="metrics exporter", sigint=signal.SIG_IGN)
        self.pid = pid
        return pid

    def _run_child(self) -> int:
        # SIGINT is ignored: the supervisor stops us; die with the parent too
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        self._serve()
        return 0

    def _serve(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        self._server.collect = lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
        self._server.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None

    def close(self) -> None:
        self.stop()
        self._server.server_close()

    def close_in_child(self) -> None:
        """In a worker: drop the inherited listening socket (only the exporter serves it)."""
        with contextlib.suppress(OSError):
            self._server.socket.close()


def mark_worker_dead(pid: int, directory: str) -> None:
    """Tidy a dead worker's live-gauge files (counters stay: totals must not go backwards)."""
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
