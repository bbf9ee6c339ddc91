"""Server limits and version checks: deadlines before HE work, the concurrency cap, bad streams,
and what GetModel says about versions."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tenseal
from sklearn.linear_model import LinearRegression

import heml
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .security_support import HeldStream, normalized, requests_for, stub_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A d = 1000 model (a COLUMN block is 1000 ciphertexts, ≈ 0.3 s of server work) served with
    room for only two calls at a time."""
    folder = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(60, 1000))
    reg = LinearRegression().fit(X, X[:, :5].sum(axis=1))
    heml.export(reg, name="wide", bounds=(-1, 1)).save(folder / "wide.json")
    with heml.serve(folder, max_concurrent_rpcs=2) as server:
        yield server, X


def test_the_deadline_is_checked_before_any_he_work(wide):
    server, _X = wide
    channel, stub = stub_for(server.address)
    header = pb.PredictRequest(model="wide", layout=pb.COLUMN, n=1, total_ciphertexts=1000)

    def header_then_wait():
        yield header  # the block is declared; its 1000 ciphertexts never need to come
        threading.Event().wait(2)

    with pytest.raises(grpc.RpcError) as info:
        list(stub.PredictStream(header_then_wait(), timeout=0.2))
    # the server's own refusal (the client's timer would say just "Deadline Exceeded")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "ms left, but 1000 ciphertexts need about" in info.value.details()
    channel.close()


def test_maximum_concurrent_rpcs_refuses_the_call_over_the_cap(wide):
    server, X = wide
    with heml.Client(server.address) as client:
        model = client.model("wide")
        row, _col = requests_for(model, normalized(model, X[:1]))
    channels = [stub_for(server.address) for _ in range(3)]
    held = [HeldStream(stub, row) for _channel, stub in channels[:2]]  # both being served
    try:
        with pytest.raises(grpc.RpcError) as info:
            channels[2][1].ListModels(pb.ListModelsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held.pop().finish()
        # a slot is free again: gRPC frees it a moment after the stream's last reply, which
        # under load came after the next call had been refused
        deadline = time.monotonic() + 10
        while True:
            try:
                channels[2][1].ListModels(pb.ListModelsRequest(), timeout=5)
                break
            except grpc.RpcError as exc:
                busy = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for stream in held:
            stream.finish()
        for channel, _stub in channels:
            channel.close()


def test_undecodable_stream_messages_are_invalid_argument(wide):
    server, _X = wide
    channel = grpc.insecure_channel(server.address)
    raw = channel.stream_stream(
        "/heml.v1.Inference/PredictStream",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(raw(iter([b"\xff" * 64]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not a valid heml.v1.PredictRequest" in info.value.details()
    channel.close()


def test_get_model_reports_server_protocol_and_tenseal_versions(wide):
    server, _X = wide
    with heml.Client(server.address) as client:
        info = client.model("wide").info.server
    assert info.server_version == heml.__version__
    assert info.protocol_version == heml.PROTOCOL_VERSION
    assert info.tenseal_version == tenseal.__version__


class _OtherMajor(heml_pb2_grpc.InferenceServicer):
    def __init__(self, version: str) -> None:
        self.version = version

    def GetModel(self, request, context):
        return pb.ModelInfo(name=request.name, server=pb.ServerInfo(protocol_version=self.version))


@pytest.mark.parametrize("version, shown", [("9.0", "9.0"), ("", "unknown")])
def test_the_sdk_refuses_another_major_version_on_get_model(version, shown):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    heml_pb2_grpc.add_InferenceServicer_to_server(_OtherMajor(version), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            heml.Client(f"127.0.0.1:{port}") as client,
            pytest.raises(heml.errors.VersionMismatch) as info,
        ):
            client.model("anything")
        message = str(info.value)
        assert f"protocol {shown}" in message and heml.PROTOCOL_VERSION in message
    finally:
        server.stop(0)
