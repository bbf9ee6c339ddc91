"""Helpers for the guard tests (tests/test_guards_*.py): small models and a worker's gRPC stack
running in the test process.

In-process so that a mutation run (`make mutate`, docs/testing.md) sees which tests reach the
servicer: heml.serve's workers are other processes. The stack is the one a worker builds
(heml/server/worker.py): interceptor, servicer, registry, on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from sklearn.linear_model import LinearRegression

import heml


def linear_model(d: int, name: str, seed: int) -> heml.LinearModel:
    """A servable linear regression with d features in [-1, 1] and random weights."""
    reg = LinearRegression()
    rng = np.random.default_rng(seed)
    reg.coef_, reg.intercept_, reg.n_features_in_ = rng.uniform(-1, 1, d), 0.25, d
    return heml.export(reg, name=name, bounds=(-1.0, 1.0))


@contextlib.contextmanager
def inprocess_server(folder: str | Path, registry=None, **options) -> Iterator[int]:
    """Serve the models in ``folder`` (or an already loaded ``registry`` of them) from this
    process; yields the port.

    Tests that share a registry should still start the server per test (it takes
    milliseconds): a mutation run attributes what a fixture calls to the first test that uses
    it, so a module-wide server would hide the servicer's wiring from the other tests."""
    from heml.server.interceptor import build_interceptor
    from heml.server.options import ServerConfig
    from heml.server.registry import Registry
    from heml.server.servicer import InferenceServicer, add_to_server

    config = ServerConfig(models_dir=str(folder), **options)
    if registry is None:
        registry, _errors = Registry.from_folder(folder)
    interceptor = build_interceptor(config)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=config.grpc_options(reuse_port=False),
        interceptors=[interceptor],
    )
    add_to_server(InferenceServicer(registry), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()
        interceptor.state.close()  # its quota table, or the Redis state's thread


def replay_urandom(monkeypatch, module, stream: bytes) -> list[int]:
    """Make ``module.os.urandom`` return ``stream`` in order, as known bytes to check a draw
    against; returns the list the sizes of the calls are appended to."""
    taken: list[int] = []

    def fake(k: int) -> bytes:
        start = sum(taken)
        taken.append(k)
        return stream[start : start + k]

    monkeypatch.setattr(module.os, "urandom", fake)
    return taken


def child_env() -> dict[str, str]:
    """The environment for a `python -m heml ...` child run in another directory.

    Under `make mutate`'s coverage pass (MUTANT_UNDER_TEST=stats) the child would try to record
    its own coverage from that directory, which has no mutmut config, and fail: mutmut then
    refuses to run at all. A mutant's name is passed on (the child runs the mutated code)."""
    import os

    env = dict(os.environ)
    if env.get("MUTANT_UNDER_TEST") == "stats":
        del env["MUTANT_UNDER_TEST"]
    return env


# `heml train` run as a child process through a tiny argparse harness (heml.dp.cli alone, the
# way `python -m heml train` dispatches to it)
HARNESS = (
    "import argparse, sys\n"
    "from heml.dp.cli import register\n"
    "p = argparse.ArgumentParser(prog='heml')\n"
    "register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def heml_train(*args, cwd):
    """`heml train ARGS` in ``cwd``; the CompletedProcess (text output)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", HARNESS, "train", *map(str, args)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
