"""Deployment files (deploy/) agree with the code, and `heml health` answers probes.

Docker and Kubernetes cannot run here; these tests check what can be checked without them:
the YAML parses, every `heml serve` / `heml health` flag the files use exists, the probes
name the health services the server registers, the generated copies match their sources.
"""

from __future__ import annotations

import re
import shlex
from concurrent import futures

import grpc
import pytest

from heml.cli import build_parser, main
from heml.server.worker import SERVICE_NAME

from .cluster_support import ROOT, compose_nginx_conf, free_port

DEPLOY = ROOT / "deploy"
YAML_FILES = [*sorted(DEPLOY.rglob("*.yaml")), DEPLOY / "docker-compose.yml"]


def _yaml():
    return pytest.importorskip("yaml", reason="PyYAML is not installed")


def _docs(path):
    return [d for d in _yaml().safe_load_all(path.read_text()) if d is not None]


def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def unknown_flags(words: list[str], command: str) -> list[str]:
    """Flags after `heml COMMAND` in `words` that `heml COMMAND --help` does not list."""
    known = _flags(command)
    out, inside = [], False
    for w in words:
        if w == command:
            inside = True
        elif inside and w.startswith("--"):
            flag = w.split("=", 1)[0]
            if flag not in known:
                out.append(flag)
    return out


def _commands() -> list[tuple[str, list[str]]]:
    """(file, words) of every heml command line in deploy/, commented-out ones included."""
    found = []
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in dockerfile.splitlines():
        if line.startswith(("CMD", "HEALTHCHECK")):
            words = re.findall(r'"([^"]*)"', line) or line.split()
            found.append(("Dockerfile", [x for w in words for x in shlex.split(w)]))
    compose = (DEPLOY / "docker-compose.yml").read_text()
    # the command list, with commented-out items, as one word list
    items = re.findall(
        r"^\s*#?\s*- (\S.*)$", compose.split("command:", 1)[1].split("volumes:")[0], re.M
    )
    found.append(("docker-compose.yml", [i.strip().strip('"') for i in items]))
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                words = list(c.get("command", [])) + list(c.get("args", []))
                if words[:1] == ["heml"]:
                    found.append((path.name, words))
    return found


def test_every_deploy_yaml_parses():
    for path in YAML_FILES:
        docs = _docs(path)
        assert docs, path
        if path.parent.name == "k8s":
            for d in docs:
                assert {"apiVersion", "kind", "metadata"} <= d.keys(), path
                assert d["metadata"].get("namespace", "heml") == "heml" or d["kind"] == "Namespace"


def test_flags_used_in_deploy_files_exist_in_the_cli():
    _yaml()
    commands = _commands()
    files = {f for f, _ in commands}
    assert {"Dockerfile", "docker-compose.yml", "replicas.yaml"} <= files, files
    for name, words in commands:
        command = "serve" if "serve" in words else "health"
        assert unknown_flags(words, command) == [], (name, words)
    # the control: the check does catch a flag the CLI lacks
    assert unknown_flags(["heml", "serve", "--models", "m", "--no-such-flag"], "serve") == [
        "--no-such-flag"
    ]


def test_probes_name_health_services_the_server_registers():
    (deployment,) = [
        d for d in _docs(DEPLOY / "k8s" / "replicas.yaml") if d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = int(container["args"][container["args"].index("--port") + 1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == port
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME)
    envoy = _yaml().safe_load((DEPLOY / "envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == SERVICE_NAME


def test_generated_copies_match_their_sources():
    assert (DEPLOY / "nginx" / "compose.conf").read_text() == compose_nginx_conf()
    yaml = _yaml()
    configmap = _docs(DEPLOY / "k8s" / "envoy.yaml")[0]
    assert yaml.safe_load(configmap["data"]["envoy.yaml"]) == yaml.safe_load(
        (DEPLOY / "envoy.yaml").read_text()
    )


# ---------------------------------------------------------------------- heml health
def test_health_says_serving_for_a_running_server(server, capsys):
    assert main(["health", "--server", f"127.0.0.1:{server.port}"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", "--server", f"127.0.0.1:{server.port}", "--service", SERVICE_NAME]) == 0


def test_health_fails_for_unknown_service_and_unreachable_server(server, capsys):
    assert main(["health", "--server", f"127.0.0.1:{server.port}", "--service", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    port = free_port()  # nothing listens there
    assert main(["health", "--server", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("heml health: ") and err.count("\n") == 1


def test_health_fails_for_a_server_that_is_not_serving(capsys):
    """A draining server (NOT_SERVING) must fail the probe, not just an unreachable one."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert main(["health", "--server", f"127.0.0.1:{port}", "-q"]) == 0
        servicer.enter_graceful_shutdown()
        assert main(["health", "--server", f"127.0.0.1:{port}", "-q"]) == 1
        assert "is NOT_SERVING" in capsys.readouterr().err
    finally:
        server.stop(0)
