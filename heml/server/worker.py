"""One worker process: its own gRPC server on the shared port, HE work single-threaded."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent import futures

from .options import ServerConfig
from .registry import Registry

log = logging.getLogger("heml.server")
SERVICE_NAME = "heml.v1.Inference"


def run_worker(
    config: ServerConfig, port: int, ready_fd: int | None = None, *, slot: int = 0, runtime=None
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. gRPC is created here, after fork.

    ``slot`` is this worker's index (0..workers-1) in the shared quota table that the
    supervisor's ``runtime`` (heml.server.runtime) prepared; without one, quotas are private.
    """
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from .._memory import keep_freed_memory
    from . import tls
    from .interceptor import build_interceptor
    from .servicer import InferenceServicer, add_to_server

    keep_freed_memory()  # requests reuse freed memory instead of faulting it in again
    registry, _errors = Registry.from_folder(config.models_dir)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="heml-rpc"),
        options=config.grpc_options(reuse_port=True),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        interceptors=[build_interceptor(config, slot, runtime)],  # keys, quotas, log, metrics
    )
    add_to_server(InferenceServicer(registry), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.host}:{port}"
    bound = tls.add_port(server, address, config.tls_cert, config.tls_key, config.tls_client_ca)
    if bound != port:
        log.error("worker could not bind %s:%d", config.host, port)
        return 3
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()
    if config.reload_seconds > 0:
        registry.watch(stop, config.reload_seconds)

    def _on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if ready_fd is not None:
        os.write(ready_fd, b"R")
        os.close(ready_fd)
    log.info(
        "worker %d serving %d model(s) on %s:%d", os.getpid(), len(registry), config.host, port
    )
    while not stop.wait(0.1):
        pass
    # NOT_SERVING first, keep answering for the drain period (load balancers and clients
    # notice), then stop accepting calls and let in-flight ones finish within the grace period
    health_servicer.enter_graceful_shutdown()
    time.sleep(config.drain_seconds)
    server.stop(config.grace_seconds).wait()
    log.info("worker %d stopped", os.getpid())
    return 0
