"""Server settings and the gRPC option block, in one place."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    models_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 1
    threads: int = 8  # per worker: I/O concurrency (HE work holds the GIL)
    max_concurrent_rpcs: int = 64  # per worker; beyond this callers get RESOURCE_EXHAUSTED
    max_receive_bytes: int = 8 * MiB  # clients send ≤ 4 MiB per message
    max_send_bytes: int = 32 * MiB
    grace_seconds: float = 30.0  # in-flight calls may finish within this after SIGTERM
    drain_seconds: float = 1.0  # health says NOT_SERVING this long before new calls are refused
    reload_seconds: float = 2.0  # how often workers re-read the model folder (0: never)
    log_level: str = "WARNING"  # heml.serve() is quiet; `heml serve` logs at INFO
    # security (docs/security.md): all off by default, paths are made absolute
    api_keys: str | None = None  # key file from `heml keys issue`; None = no authentication
    tls_cert: str | None = None  # PEM certificate chain: serve TLS only (needs tls_key)
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_client_ca: str | None = None  # PEM CA bundle: require client certificates (mTLS)
    metrics_port: int | None = None  # Prometheus /metrics (0 = any free port); None = off
    metrics_host: str | None = None  # address for /metrics (default: 127.0.0.1, not host)
    # sample slots one call may compute (a stream: all its blocks); ≥ the SDK's 32 COLUMN blocks
    max_samples_per_request: int = 1 << 20
    # where quotas, the model-privacy key registry and API-key revocations live: None (or
    # "embedded") = this host; "redis://host:6379/0" / "rediss://…" = shared by every replica;
    # "env" = the URL in HEML_STATE_URL, read by each process that connects (kept as "env"
    # here, so the URL and its password never reach a command line or a log)
    state: str | None = None

    def __post_init__(self) -> None:
        for name in ("api_keys", "tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.path.abspath(os.fspath(value)))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.max_samples_per_request < 1:
            raise ValueError("max_samples_per_request must be at least 1")
        from .state import check_state_url

        url = check_state_url(self.state)  # checks "env" too (ValueError with the remedy)
        object.__setattr__(self, "state", "env" if url is not None and self.state == "env" else url)

    @property
    def state_url(self) -> str | None:
        """The state URL, "env" resolved from HEML_STATE_URL now (None: embedded)."""
        from .state import check_state_url

        return check_state_url(self.state)

    def to_dict(self) -> dict:
        return asdict(self)

    def grpc_options(self, reuse_port: bool) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", self.max_send_bytes),
            # several worker processes share the port; the kernel balances connections
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # rebalance long-lived connections across workers now and then
            ("grpc.max_connection_age_ms", 10 * 60 * 1000),
            ("grpc.max_connection_age_grace_ms", 30 * 1000),
            ("grpc.keepalive_time_ms", 60 * 1000),
            ("grpc.keepalive_timeout_ms", 20 * 1000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
