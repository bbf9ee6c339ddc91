"""``heml health``: ask a server's grpc.health.v1 service whether it is SERVING.

For container health checks (deploy/Dockerfile's HEALTHCHECK) and Kubernetes exec probes
where the native gRPC probe cannot be used (it speaks no TLS). Exit 0 when SERVING, 1 when
not serving or unreachable, 2 on bad usage; one line on stderr otherwise. Imports only gRPC:
a probe that runs every few seconds must not load TenSEAL or scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check(
    server: str,
    service: str = "",
    timeout: float = 5.0,
    root_certificates: bytes | None = None,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
) -> str:
    """The health status name of `service` on `server` ("SERVING", "NOT_SERVING", …).

    Raises grpc.RpcError when the server cannot be reached or does not know `service`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if root_certificates is not None or client_cert is not None:
        creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
        channel = grpc.secure_channel(server, creds)
    else:
        channel = grpc.insecure_channel(server)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def cmd_health(args: argparse.Namespace) -> int:
    import grpc

    def pem(path: str | None, flag: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            print(f"heml health: cannot read {flag} {path}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(2) from None

    if (args.cert is None) != (args.key is None):
        print("heml health: --cert and --key go together (mTLS)", file=sys.stderr)
        return 2
    try:
        status = check(
            args.server,
            args.service,
            args.timeout,
            pem(args.ca, "--ca"),
            pem(args.cert, "--cert"),
            pem(args.key, "--key"),
        )
    except grpc.RpcError as exc:
        print(f"heml health: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        what = f"service {args.service!r}" if args.service else "server"
        print(f"heml health: {args.server}: {what} is {status}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(status)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "health", help="exit 0 if a server's gRPC health service says SERVING (probes)"
    )
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--service", default="", help="health service name (default: the whole server)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument("--ca", metavar="PEM", help="CA that signed the server's certificate")
    p.add_argument("--cert", metavar="PEM", help="TLS client certificate (mTLS)")
    p.add_argument("--key", metavar="PEM", help="TLS client private key (mTLS)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when SERVING")
    p.set_defaults(func=cmd_health)
