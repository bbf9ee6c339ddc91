"""What the supervisor prepares before forking workers, and tidies when they die or stop.

* checks the API key file and the TLS files (a mistake stops startup with one clear line);
* a private 0700 directory holding the shared quota table (heml.server.quota) and, with
  ``metrics_port``, prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``
  is set here, before any worker imports prometheus-client);
* the metrics exporter process (heml.server.metrics), restarted if it dies.

Nothing here creates a thread or a gRPC object: the supervisor must stay safe to fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

from . import metrics, tls
from .auth import read_key_file
from .options import ServerConfig
from .quota import QuotaTable

log = logging.getLogger("heml.server")


class Runtime:
    """Per-server shared state; a context manager around the supervisor's life."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        tls.check_files(config.tls_cert, config.tls_key, config.tls_client_ca)
        if config.api_keys:
            log.info("%d API key(s) in %s", len(read_key_file(config.api_keys)), config.api_keys)
        self.directory: str | None = None  # private (0700), only when something is shared
        embedded_quotas = bool(config.api_keys) and config.state is None
        if config.state is not None:
            self._check_state(config.state_url)
        if embedded_quotas or config.metrics_port is not None:
            self.directory = tempfile.mkdtemp(prefix="heml-run-")
        self.quota_path: str | None = None
        self.metrics_dir: str | None = None
        self.exporter: metrics.MetricsExporter | None = None
        self._quota: QuotaTable | None = None
        try:
            if embedded_quotas:
                self.quota_path = os.path.join(self.directory, "quota")
                self._quota = QuotaTable.create(self.quota_path, workers=config.workers)
            if config.metrics_port is not None:
                self.metrics_dir = os.path.join(self.directory, "metrics")
                os.mkdir(self.metrics_dir, 0o700)
                os.environ[metrics.ENV] = self.metrics_dir
                self.exporter = metrics.MetricsExporter(
                    config.metrics_host or metrics.DEFAULT_HOST,
                    config.metrics_port,
                    self.metrics_dir,
                )
        except BaseException:
            self.close()
            raise
        self._warn_if_open()

    @staticmethod
    def _check_state(url: str) -> None:
        """Say where the shared state is, and whether it answers (the server starts either
        way: calls fail closed with UNAVAILABLE until Redis answers)."""
        from .state.redis_backend import ping, safe_url

        problem = ping(url)  # a socket opened and closed here: no thread before the fork
        if problem is None:
            log.info("shared state in Redis at %s", safe_url(url))
        else:
            log.error(
                "shared state at %s does not answer (%s); calls fail with UNAVAILABLE until "
                "it does",
                safe_url(url),
                problem,
            )

    def _warn_if_open(self) -> None:
        c = self.config
        loopback = c.host in ("127.0.0.1", "::1", "localhost")
        if not loopback and c.api_keys is None:
            log.warning(
                "no API keys (--api-keys): anyone who reaches %s can list and score models", c.host
            )
        if not loopback and c.tls_cert is None:
            log.warning(
                "no TLS (--tls-cert/--tls-key): API keys and model metadata cross the network "
                "in clear text"
            )

    @property
    def metrics_port(self) -> int | None:
        return self.exporter.port if self.exporter is not None else None

    def __enter__(self) -> Runtime:
        if self.exporter is not None:
            self.exporter.start()
            log.info("metrics on http://%s:%d/metrics", self.exporter.host, self.exporter.port)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ hooks
    def in_worker(self) -> None:
        """Called in a freshly forked worker: drop what only the supervisor should hold."""
        if self.exporter is not None:
            self.exporter.close_in_child()
        if self._quota is not None:
            self._quota.close()  # the worker maps the table itself
            self._quota = None

    def worker_exited(self, pid: int, slot: int) -> None:
        """A worker died: forget its in-flight calls before its replacement takes the slot."""
        if self._quota is not None:
            self._quota.reset_worker(slot)
        if self.metrics_dir is not None:
            metrics.mark_worker_dead(pid, self.metrics_dir)

    def child_exited(self, pid: int) -> bool:
        """True if ``pid`` was one of ours besides the workers (then it has been restarted)."""
        if self.exporter is not None and pid == self.exporter.pid:
            log.warning("metrics exporter %d exited; starting a replacement", pid)
            self.exporter.pid = None
            self.exporter.start()
            return True
        return False

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None
        if self._quota is not None:
            self._quota.close()
            self._quota = None
        if self.metrics_dir is not None and os.environ.get(metrics.ENV) == self.metrics_dir:
            del os.environ[metrics.ENV]
        if self.directory is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)
            self.directory = None
