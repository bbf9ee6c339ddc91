"""Contracts that keep the repository honest: generated code, trust boundaries, versions."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import heml
from heml._codegen import ROOT, generate
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc


def test_generated_protobuf_code_is_up_to_date(tmp_path):
    generated = generate(tmp_path)
    assert generated, "protoc produced nothing"
    for path in generated:
        committed = ROOT / "heml" / "v1" / path.name
        assert committed.exists(), f"{path.name} is not committed; run `make proto`"
        assert committed.read_text() == path.read_text(), (
            f"heml/v1/{path.name} is stale: run `make proto` and commit the result"
        )


def test_server_code_never_imports_client_key_material():
    code = (
        "import sys, heml.server.worker, heml.server.servicer, heml.server.supervisor\n"
        "bad = [m for m in ('heml.he.keys', 'heml.he.decrypt', 'heml.he.encrypt', 'heml.client')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"server imports client-side modules: {out.stdout}"


def test_no_pickle_anywhere_in_the_package():
    src = Path(heml.__file__).parent
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if "_pb2" not in p.name
        and ("import pickle" in p.read_text() or "pickle.load" in p.read_text())
    ]
    assert offenders == []


class _FutureServer(heml_pb2_grpc.InferenceServicer):
    def ListModels(self, request, context):
        return pb.ListModelsResponse(
            server=pb.ServerInfo(protocol_version="9.0", server_version="9")
        )


def test_client_refuses_a_different_major_protocol_version():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    heml_pb2_grpc.add_InferenceServicer_to_server(_FutureServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            heml.Client(f"127.0.0.1:{port}") as c,
            pytest.raises(heml.errors.VersionMismatch) as info,
        ):
            c.models()
        assert "9.0" in str(info.value) and heml.PROTOCOL_VERSION in str(info.value)
    finally:
        server.stop(0)


def test_serving_a_folder_without_valid_models_is_an_error(tmp_path):
    (tmp_path / "junk.json").write_text("[]")
    from heml.server import ServerStartError

    with pytest.raises(ServerStartError, match="no valid model.*junk.json"):
        heml.serve(tmp_path, port=0)


def test_closed_client_says_so(server):
    c = heml.Client(f"localhost:{server.port}")
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.models()
