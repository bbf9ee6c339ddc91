"""Client targets that name several replicas: ``h1:p1,h2:p2`` and ``dns:///name:port``.

gRPC balances over every address of such a target per call with its ``round_robin`` policy
(a replica whose connection broke is skipped until it reconnects), so the SDK's retry of an
UNAVAILABLE call goes to another replica. A plain ``host:port`` keeps gRPC's default
(``pick_first``: one connection).

gRPC has no target for a list of host names, so a comma list is turned into its
``ipv4:``/``ipv6:`` multi-address syntax; host names in it are resolved once, here (a static
list: use ``dns:///name:port`` when the set of replicas changes).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# gRPC waits up to 120 s between reconnection attempts by default: a replica back after a
# long outage would get no call for that long. 10 s at most with several replicas.
RECONNECT = ("grpc.max_reconnect_backoff_ms", 10_000)


def _split(entry: str, target: str) -> tuple[str, int]:
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]:")
    else:
        host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"target {target!r}: {entry!r} is not host:port; a list of replicas is "
            "host:port,host:port (IPv6 as [addr]:port)"
        )
    return host, int(port)


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def channel_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target string for ``target`` and the channel options it needs.

    ``h1:p1,h2:p2`` -> ``ipv4:a1:p1,a2:p2`` (or ``ipv6:[a1]:p1,…``) with round robin;
    ``dns:///name:port`` and gRPC's own ``ipv4:a1:p1,a2:p2`` -> themselves with round robin
    (``dns:`` every address DNS returns, re-resolved when a connection breaks); anything
    else -> itself, no extra option.
    """
    if target.startswith("dns:") or (target.startswith(("ipv4:", "ipv6:")) and "," in target):
        return target, [("grpc.service_config", ROUND_ROBIN), RECONNECT]  # gRPC's own lists
    if "," not in target:
        return target, []
    entries = [e.strip() for e in target.split(",")]
    if any(not e for e in entries) or any(
        "://" in e or e.startswith(("unix:", "ipv")) for e in entries
    ):
        raise ValueError(
            f"target {target!r}: a list of replicas is host:port,host:port (no empty entry, "
            "no scheme; for DNS use dns:///name:port)"
        )
    v4: list[str] = []
    v6: list[str] = []
    names: list[str] = []
    for entry in entries:
        host, port = _split(entry, target)
        found = _addresses(host, port)
        if str(found[0]) != host:  # a name, resolved (an IP literal stands for itself)
            names.append(host)
        four = [a for a in found if isinstance(a, ipaddress.IPv4Address)]
        six = [a for a in found if isinstance(a, ipaddress.IPv6Address)]
        v4.extend(f"{a}:{port}" for a in four)
        v6.extend(f"[{a}]:{port}" for a in six)
        if not four:
            v4.append("")  # marks an entry with no IPv4 address
        if not six:
            v6.append("")
    options: list[tuple[str, Any]] = [("grpc.service_config", ROUND_ROBIN), RECONNECT]
    if names:
        # TLS checks the server certificate against this name (one certificate for the
        # service, valid for the first name listed)
        options.append(("grpc.default_authority", entries[0]))
    if all(v4):
        return "ipv4:" + ",".join(dict.fromkeys(v4)), options
    if all(v6):
        return "ipv6:" + ",".join(dict.fromkeys(v6)), options
    raise ValueError(
        f"target {target!r} mixes IPv4-only and IPv6-only replicas; gRPC needs one family "
        "per list (use dns:///name:port or one family)"
    )
