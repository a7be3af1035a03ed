"""Limits, deadlines and back-pressure of the server, and its config file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import lamina
from lamina.cli import build_parser
from lamina.client.transport import Op
from lamina.config import Limits, ServerConfig
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.serving import server_config
from lamina.testing import free_port
from tests.conftest import ServerProcess, ServerThread

DIM = 64


def slow_collection(client: lamina.Client, n: int = 45_000) -> tuple[lamina.Collection, np.ndarray]:
    """A collection where a batch search of a few hundred queries with k=1000 takes seconds (its
    ``n`` rows all in the mutable segment: not ``quick`` above engine/plain.py's 40,000)."""
    col = client.create_collection("slow", dim=DIM, segment_rows=1_000_000)
    rng = np.random.default_rng(0)
    for lo in range(0, n, 5000):
        col.upsert(list(range(lo, lo + 5000)), rng.standard_normal((5000, DIM)))
    return col, rng.standard_normal((400, DIM)).astype(np.float32)


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_work_stops_when_the_client_gives_up(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data", workers=1)
    try:
        with lamina.connect(srv.address) as client, lamina.connect(srv.address, timeout=0.5) as hasty:
            col, queries = slow_collection(client)
            impatient = hasty.get_collection("slow")
            # a long batch search whose client leaves after 0.5 s: the server stops between blocks
            with pytest.raises(lamina.DeadlineExceeded):
                impatient.search_batch(queries, k=1000, with_payload=False)
            assert wait_for(lambda: client.server_info()["requests_abandoned"] == 1)
            assert wait_for(lambda: client.server_info()["requests_in_flight"] == 0)

            # a write queued behind a long search, whose deadline passes while it waits, is never applied
            blocker = threading.Thread(target=lambda: col.search_batch(queries, k=1000, with_payload=False))
            blocker.start()
            time.sleep(0.3)
            with pytest.raises(lamina.DeadlineExceeded):
                impatient.upsert([999_999], np.ones((1, DIM)))
            blocker.join(120)
            assert wait_for(lambda: client.server_info()["requests_abandoned"] == 2)
            assert col.get([999_999]) == [] and col.count() == 45_000
    finally:
        srv.stop()


def test_overload_is_answered_resource_exhausted(tmp_path: Path) -> None:
    limits = Limits(max_concurrent_requests=2)
    srv = ServerThread(tmp_path / "data", limits=limits, workers=1)
    try:
        with lamina.connect(srv.address, retries=0) as client:
            col, queries = slow_collection(client, n=5000)
            outcomes: list[str] = []

            def search() -> None:
                try:
                    col.search_batch(queries[:100], k=1000, with_payload=False)
                    outcomes.append("ok")
                except lamina.ResourceExhausted as exc:
                    assert "server is busy" in str(exc) and "max_concurrent_requests=2" in str(exc)
                    outcomes.append("busy")

            threads = [threading.Thread(target=search) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert len(outcomes) == 8 and "ok" in outcomes and "busy" in outcomes
            info = client.server_info()
            assert info["requests_rejected"] == outcomes.count("busy")
            assert col.count() == 5000  # and it still serves
    finally:
        srv.stop()


def test_configured_limits_are_enforced(tmp_path: Path) -> None:
    limits = Limits(
        max_batch=10, max_k=5, max_payload_bytes=100, max_filter_depth=2, max_message_bytes=64 << 10
    )
    srv = ServerThread(tmp_path / "data", limits=limits)
    try:
        with lamina.connect(srv.address) as client:
            col = client.create_collection("c", dim=4)
            col.upsert(list(range(10)), np.ones((10, 4)))
            with pytest.raises(lamina.ResourceExhausted, match="limit of 10"):
                col._transport.run(
                    Op("upsert", ("c", list(range(11)), np.ones((11, 4), np.float32), None, None))
                )
            with pytest.raises(lamina.InvalidArgument, match="k=6 exceeds the maximum of 5"):
                col._transport.run(
                    Op("search", ("c", np.ones(4, np.float32), 6, None, True, False, None, None))
                )
            with pytest.raises(lamina.InvalidArgument, match="over the limit of 100"):
                col._transport.run(
                    Op("upsert", ("c", [1], np.ones((1, 4), np.float32), [{"x": "y" * 200}], None))
                )
            with pytest.raises(lamina.InvalidArgument, match="deeper than 2"):
                col._transport.run(Op("count", ("c", {"$and": [{"$or": [{"$not": {"a": 1}}]}]}, None)))
            with pytest.raises(lamina.ResourceExhausted):  # past max_message_bytes: gRPC refuses it
                col._transport.run(
                    Op("upsert", ("c", [1], np.ones((1, 4), np.float32), [{"x": "y" * 70_000}], None))
                )
            assert col.count() == 10 and col.get([1])[0].payload == {}
    finally:
        srv.stop()


def test_malformed_bytes_get_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/lamina.v1.Collections/Get")
        good = cpb.GetCollectionRequest(name="x").SerializeToString()
        for raw in (good[:-1], b"\x0a\x03\xff\xfe\xfd", b"\xff\xff\xff"):
            with pytest.raises(grpc.RpcError) as info:
                call(raw, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in (info.value.details() or "")


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "lamina.toml"
    path.write_text("port = 7000\nworkers = 3\n[limits]\nmax_k = 50\nmax_batch = 200\n")
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--limit", "max_k=70", "--port", "7001"]
    )
    config = server_config(args)
    assert (config.port, config.workers, config.host) == (7001, 3, "127.0.0.1")
    assert (config.limits.max_k, config.limits.max_batch, config.limits.max_dim) == (70, 200, 65_536)
    for text, words in [
        ("prot = 1", "unknown setting 'prot'"),
        ("port = 'x'", "port must be a int"),
        ("[limits]\nmax_kk = 3", "max_kk is not a limit"),
        ("[limits]\nmax_k = 0", "max_k must be a positive integer"),
        ("port = ", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(lamina.InvalidArgument, match=words):
            ServerConfig.load(path)
    with pytest.raises(lamina.InvalidArgument, match="NAME=INTEGER"):
        server_config(build_parser().parse_args(["serve", "--limit", "max_k"]))


def test_server_process_reads_its_config(tmp_path: Path, server_process: type[ServerProcess]) -> None:
    path = tmp_path / "lamina.toml"
    path.write_text("[limits]\nmax_k = 3\n")
    proc = server_process(tmp_path / "data", "--config", str(path))
    with lamina.connect(proc.address) as client:
        col = client.create_collection("c", dim=2)
        col.upsert([1, 2, 3, 4], np.eye(4, 2) + 0.1)
        with pytest.raises(lamina.InvalidArgument, match="k=4 exceeds the maximum of 3"):
            col._transport.run(Op("search", ("c", np.ones(2, np.float32), 4, None, True, False, None, None)))


def test_client_retries_a_busy_server_and_an_unreachable_one(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data", limits=Limits(max_concurrent_requests=1), workers=1)
    try:
        with lamina.connect(srv.address) as setup:
            _, queries = slow_collection(setup, n=5000)
        with (
            lamina.connect(srv.address, retries=0) as eager,
            lamina.connect(srv.address, retries=12) as patient,
        ):
            blocker = threading.Thread(
                target=lambda: eager.get_collection("slow").search_batch(
                    queries[:150], k=1000, with_payload=False
                )
            )
            blocker.start()
            assert wait_for(lambda: srv.server.gate.in_flight == 1)
            with pytest.raises(lamina.ResourceExhausted, match="server is busy"):
                eager.get_collection("slow").count()
            assert patient.get_collection("slow").count() == 5000  # sent again until the server took it
            blocker.join(60)
            assert srv.server.gate.rejected >= 2
    finally:
        srv.stop()

    # a server that is down at first: repeatable requests are sent again until it answers
    port = free_port()
    found: list[int] = []
    with lamina.connect(f"127.0.0.1:{port}", retries=10) as client:
        caller = threading.Thread(target=lambda: found.append(len(client.list_collections())))
        caller.start()
        time.sleep(0.5)
        late = ServerThread(tmp_path / "late", port=port)
        try:
            caller.join(60)
            assert found == [0]
            with (
                lamina.connect(f"127.0.0.1:{free_port()}", retries=0) as nobody,
                pytest.raises(lamina.Unavailable),
            ):
                nobody.list_collections()
        finally:
            late.stop()


def test_quick_search_is_answered_where_it_arrives(tmp_path: Path) -> None:
    """A plain search of a collection its index answers (``quick``) runs where it arrives (on
    grpc.aio's server the event loop, on the sync server the gRPC thread that took it), not on a
    worker: with the only worker busy on a long batch search, it is answered at once; it is
    counted as served and leaves nothing in flight, and its errors keep their status."""
    srv = ServerThread(tmp_path / "data", workers=1)
    try:
        with lamina.connect(srv.address) as client:
            slow, queries = slow_collection(client)  # 45,000 rows in the tail: not quick
            quick = client.create_collection("quick", dim=DIM)
            vectors = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
            quick.upsert(list(range(200)), vectors)
            assert srv.db.get_collection("quick").quick() and not srv.db.get_collection("slow").quick()
            blocker = threading.Thread(target=lambda: slow.search_batch(queries, k=1000, with_payload=False))
            blocker.start()
            assert wait_for(lambda: srv.server.gate.in_flight == 1)
            hits = quick.search(vectors[7], k=3)
            assert srv.server.gate.in_flight == 1, "the quick search waited for the busy worker"
            assert hits[0].id == 7 and len(hits) == 3
            with pytest.raises(lamina.InvalidArgument, match="dimension"):
                quick.search(np.ones(DIM + 1), k=3)
            blocker.join(120)
            served = client.server_info()["requests_served"]
            quick.search(vectors[8], k=3)
            info = client.server_info()
            assert info["requests_served"] == served + 1  # the search (GetInfo is not a job)
            assert info["requests_in_flight"] == 0
    finally:
        srv.stop()
