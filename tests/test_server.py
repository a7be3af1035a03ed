"""The gRPC surface itself: status codes, health checking, reflection, info."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import lamina
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import collections_pb2_grpc as cgrpc
from lamina.proto.lamina.v1 import common_pb2 as pb
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import points_pb2_grpc as pgrpc
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.proto.lamina.v1 import search_pb2_grpc as sgrpc
from tests.conftest import ServerThread


@pytest.fixture
def channel(server: ServerThread) -> grpc.Channel:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def status_of(call: object, request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)  # type: ignore[operator]
    return info.value.code(), info.value.details()


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lamina.v1.Points", "lamina.v1.Search", "lamina.v1.Collections", "lamina.v1.Info"):
        assert (
            stub.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "lamina.v1.Collections",
        "lamina.v1.Points",
        "lamina.v1.Search",
        "lamina.v1.Info",
        "grpc.health.v1.Health",
    } <= names


def test_raw_requests_get_precise_status_codes(channel: grpc.Channel) -> None:
    collections = cgrpc.CollectionsStub(channel)
    points = pgrpc.PointsStub(channel)
    search = sgrpc.SearchStub(channel)
    create = cpb.CreateCollectionRequest(name="c", config=cpb.CollectionConfig(dim=4, metric=cpb.L2))
    collections.Create(create)

    assert status_of(collections.Create, create)[0] == grpc.StatusCode.ALREADY_EXISTS
    assert status_of(collections.Get, cpb.GetCollectionRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    code, details = status_of(
        collections.Create,
        cpb.CreateCollectionRequest(name="d", config=cpb.CollectionConfig(dim=4, metric=99)),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metric" in details
    code, details = status_of(points.Upsert, ppb.UpsertRequest(collection="", ids=[pb.PointId(num=1)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "collection name is empty" in details
    vectors = pb.Vectors(dim=4, data=np.ones(4, dtype="<f4").tobytes()[:-1])
    code, details = status_of(
        points.Upsert, ppb.UpsertRequest(collection="c", ids=[pb.PointId(num=1)], vectors=vectors)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "whole number" in details
    code, details = status_of(
        points.Upsert, ppb.UpsertRequest(collection="c", ids=[pb.PointId()], vectors=vectors)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "neither num nor str" in details
    code, details = status_of(search.Search, spb.SearchRequest(collection="c", vector=b"\x00" * 16, k=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "k must be positive" in details
    code, details = status_of(
        search.Search, spb.SearchRequest(collection="c", vector=b"\x00" * 16, k=1, filter_json="{bad")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not valid JSON" in details
    code, _ = status_of(search.Search, spb.SearchRequest(collection="missing", vector=b"\x00" * 16, k=1))
    assert code == grpc.StatusCode.NOT_FOUND
    assert points.Count(ppb.CountRequest(collection="c")).count == 0


def test_info_reports_version(server: ServerThread) -> None:
    with lamina.connect(server.address) as db:
        info = db.server_info()
    assert info["version"] == lamina.__version__ and info["mode"] == "server"


def test_unreachable_server_is_unavailable() -> None:
    from lamina.testing import free_port

    with (
        lamina.connect(f"127.0.0.1:{free_port()}", timeout=2) as db,
        pytest.raises((lamina.Unavailable, lamina.DeadlineExceeded)),
    ):
        db.list_collections()


def test_connect_picks_transport_by_target(tmp_path: object) -> None:
    from lamina.client.embedded import EmbeddedTransport
    from lamina.client.transport import GrpcTransport

    remote = lamina.connect("localhost:6334")
    assert isinstance(remote._transport, GrpcTransport)
    remote.close()
    local = lamina.connect(str(tmp_path))
    assert isinstance(local._transport, EmbeddedTransport)
    local.close()


def test_message_over_the_size_limit_is_resource_exhausted(server: ServerThread) -> None:
    with lamina.connect(server.address) as db:
        col = db.create_collection("big", dim=4096)
        vectors = np.ones((4500, 4096), dtype=np.float32)  # 74 MB, over the 64 MiB message limit
        with pytest.raises(lamina.ResourceExhausted):
            col.upsert(list(range(4500)), vectors)
        assert col.count() == 0
        assert col.upsert(list(range(100)), vectors[:100]) == 100  # the server is fine


def test_health_command_for_probes(server: ServerThread) -> None:
    from lamina.testing import free_port
    from tests.test_cli import lamina_cmd

    ok = lamina_cmd("health", "-t", server.address)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    with lamina.connect(server.address) as db:
        assert db.is_serving()
    down = lamina_cmd("health", "-t", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1 and down.stdout.strip() == "NOT SERVING"


def test_json_logs_for_log_collectors(tmp_path: Path) -> None:
    import json

    from lamina.testing import ServerProcess

    proc = ServerProcess(tmp_path / "data", global_args=("--log-format", "json"))
    try:
        with lamina.connect(proc.address) as db:
            db.create_collection("docs", dim=2)
    finally:
        assert proc.terminate() == 0
    entries = [json.loads(line) for line in proc.log.read_text().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    messages = [e["message"] for e in entries]
    assert any(m.startswith("serving on 127.0.0.1") for m in messages)
    assert any(m.startswith("created collection 'docs'") for m in messages)
    assert entries[-1]["message"].startswith("stopped") and entries[-1]["level"] == "info"
