"""Search's hot path on grpc's sync server (server/app.py ``Api.serve``): a plain search of a
``quick`` collection is answered on the gRPC thread that took it, every other call on the
event loop through the async pipeline. Both must refuse and answer alike, under the same
limits, without holding up other calls, and stop cleanly."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import lamina
from lamina.cli import build_parser
from lamina.config import Limits, ServerConfig
from lamina.engine.database import Database
from lamina.errors import InvalidArgument
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.server.app import CallAborted, CallContext
from lamina.server.auth import ApiKey, hash_key, new_key
from lamina.testing import ServerProcess
from tests.conftest import ServerThread
from tests.test_limits import wait_for

SEARCH = "/lamina.v1.Search/Search"
DIM = 768
ROWS = 4_000  # a mutable segment the engine still counts as quick (scanned exactly, ~1 ms)


def quick_collection(address: str, key: str | None = None, name: str = "q") -> np.ndarray:
    """A ``quick`` collection of ``ROWS`` random rows; its vectors."""
    vectors = np.random.default_rng(3).standard_normal((ROWS, DIM)).astype(np.float32)
    with lamina.connect(address, api_key=key) as client:
        col = client.create_collection(name, dim=DIM)
        col.upsert(list(range(ROWS)), vectors, [{"i": i} for i in range(ROWS)])
    return vectors


def search_bytes(vector: np.ndarray, collection: str = "q", k: int = 5) -> bytes:
    request = spb.SearchRequest(collection=collection, vector=vector.astype(np.float32).tobytes(), k=k)
    request.with_payload = True
    return request.SerializeToString()


def through_grpc(address: str, raw: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """The answer to ``raw`` over gRPC (bytes), or (code, details) of its status."""
    with grpc.insecure_channel(address) as channel:
        try:
            return channel.unary_unary(SEARCH)(raw, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def through_loop(srv: ServerThread, raw: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """The answer to ``raw`` through ``Api.call`` on the server's event loop (the async
    pipeline, as the web console calls it), in the same form as ``through_grpc``."""
    assert srv.server.api is not None
    call = srv.server.api.call("Search/Search", raw, CallContext(metadata, timeout=30))
    try:
        return asyncio.run_coroutine_threadsafe(call, srv.loop).result(30).SerializeToString()
    except CallAborted as exc:
        return exc.code, exc.details


@pytest.mark.parametrize("sync_server", [True, False], ids=["sync", "aio"])
def test_the_hot_path_and_the_async_path_answer_and_refuse_alike(tmp_path: Path, sync_server: bool) -> None:
    """Over gRPC (the hot path on the sync server; grpc.aio's handlers otherwise) and through
    ``Api.call`` on the event loop: the same answer, or the same status and message."""
    admin, scoped = new_key(), new_key()
    keys = [
        ApiKey("admin", hash_key(admin), "admin"),
        ApiKey("scoped", hash_key(scoped), "read", frozenset({"kb"})),
    ]
    srv = ServerThread(tmp_path / "data", keys=keys, sync_server=sync_server)
    try:
        vectors = quick_collection(srv.address, admin)
        assert srv.db.get_collection("q").quick()
        good = (("x-api-key", admin),)
        cases: dict[str, tuple[bytes, tuple[tuple[str, str], ...]]] = {
            "found": (search_bytes(vectors[11]), good),
            "bad dimension": (search_bytes(np.ones(DIM + 3)), good),
            "unknown collection": (search_bytes(vectors[0], "nowhere"), good),
            "no key": (search_bytes(vectors[0]), ()),
            "bad key": (search_bytes(vectors[0]), (("x-api-key", "lk_not_a_key"),)),
            "other collection's key": (search_bytes(vectors[0]), (("x-api-key", scoped),)),
            "malformed": (b"\x0a\x05ab", good),
            "empty vector": (search_bytes(np.ones(0)), good),
        }
        expected = {
            "bad dimension": grpc.StatusCode.INVALID_ARGUMENT,
            "unknown collection": grpc.StatusCode.NOT_FOUND,
            "no key": grpc.StatusCode.UNAUTHENTICATED,
            "bad key": grpc.StatusCode.UNAUTHENTICATED,
            "other collection's key": grpc.StatusCode.PERMISSION_DENIED,
            "malformed": grpc.StatusCode.INVALID_ARGUMENT,
            "empty vector": grpc.StatusCode.INVALID_ARGUMENT,
        }
        for case, (raw, metadata) in cases.items():
            hot, loop = through_grpc(srv.address, raw, metadata), through_loop(srv, raw, metadata)
            assert hot == loop, case
            if case == "found":
                answer = spb.SearchResponse.FromString(hot)
                assert answer.hits[0].id.num == 11 and len(answer.hits) == 5, case
                assert json.loads(answer.hits[0].payload_json) == {"i": 11}
            else:
                code, details = hot
                assert code == expected[case] and details, case

        # a deadline already passed: DEADLINE_EXCEEDED on both paths, nothing left in flight. Over
        # the wire grpc rounds a 1 us timeout up (to 1 ms), so a search faster than that may
        # answer in time: of 50 such calls, some fail and every one that fails says why
        codes = []
        with grpc.insecure_channel(srv.address) as channel:
            for _ in range(50):
                try:
                    channel.unary_unary(SEARCH)(search_bytes(vectors[0]), metadata=good, timeout=1e-6)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert srv.server.api is not None
        late = srv.server.api.call("Search/Search", search_bytes(vectors[0]), CallContext(good, timeout=0))
        with pytest.raises(CallAborted) as aborted:
            asyncio.run_coroutine_threadsafe(late, srv.loop).result(30)
        assert aborted.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the client gave up at once; the server may still be finishing that call
        assert wait_for(lambda: srv.server.gate.in_flight == 0, timeout=10)
    finally:
        srv.stop()


def hammer(address: str, raw: bytes, threads: int, calls: int) -> list[Any]:
    """``threads`` threads sending ``calls`` searches each over one channel: each answer's
    (code, details, trailing metadata), or "ok"."""
    outcomes: list[Any] = []
    with grpc.insecure_channel(address) as channel:
        search = channel.unary_unary(SEARCH)

        def run() -> None:
            for _ in range(calls):
                try:
                    search(raw, timeout=60)
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), exc.details(), tuple(exc.trailing_metadata() or ())))

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
    return outcomes


def burst(address: str, raw: bytes) -> list[Any]:
    """``hammer`` in rounds until some calls were refused (at most 10 rounds): searches overlap
    while their scans run without the GIL, but how often depends on the machine's load."""
    outcomes: list[Any] = []
    for _ in range(10):
        outcomes += hammer(address, raw, threads=8, calls=25)
        if any(o != "ok" for o in outcomes):
            break
    return outcomes


def test_a_burst_of_hot_searches_past_the_limits_is_refused_at_once(tmp_path: Path) -> None:
    """Hot searches run at once on grpc's threads, so the Gate's limits hold for them: past
    ``max_concurrent_requests`` they are answered RESOURCE_EXHAUSTED with the Gate's message
    and the retry mark, counted as rejected, and nothing stays in flight."""
    srv = ServerThread(tmp_path / "data", limits=Limits(max_concurrent_requests=1), sync_server=True)
    try:
        vectors = quick_collection(srv.address)
        outcomes = burst(srv.address, search_bytes(vectors[5]))
        refused = [o for o in outcomes if o != "ok"]
        assert "ok" in outcomes and refused, f"none of {len(outcomes)} overlapping searches was refused"
        for code, details, trailing in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert "server is busy" in details and "max_concurrent_requests=1" in details
            assert ("lamina-retry", "busy") in trailing
        with lamina.connect(srv.address) as client:
            info = client.server_info()
        assert info["requests_rejected"] == len(refused) and info["requests_in_flight"] == 0
        assert info["requests_served"] >= len(outcomes) - len(refused)
    finally:
        srv.stop()

    # the per-caller limit: one connection is one caller (the server has no keys)
    srv = ServerThread(tmp_path / "data", limits=Limits(max_requests_per_caller=1), sync_server=True)
    try:
        outcomes = burst(srv.address, search_bytes(vectors[5]))
        refused = [o for o in outcomes if o != "ok"]
        assert "ok" in outcomes and refused
        for code, details, _ in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many requests at once from this caller" in details
    finally:
        srv.stop()


def test_a_search_in_progress_does_not_hold_up_other_calls(tmp_path: Path) -> None:
    """While hot searches run one after another on grpc's threads, calls served on the event
    loop (GetInfo) are answered meanwhile: they see the searches in flight. Served on the
    event loop itself, a search would hold the loop until done and GetInfo would never see one."""
    srv = ServerThread(tmp_path / "data", sync_server=True)
    try:
        vectors = quick_collection(srv.address)
        stop = threading.Event()
        seen: list[int] = []

        def search() -> None:
            with grpc.insecure_channel(srv.address) as channel:
                call = channel.unary_unary(SEARCH)
                while not stop.is_set():
                    call(search_bytes(vectors[1], k=100), timeout=60)

        searchers = [threading.Thread(target=search) for _ in range(3)]
        for t in searchers:
            t.start()
        try:
            with lamina.connect(srv.address) as client:
                for _ in range(400):
                    seen.append(client.server_info()["requests_in_flight"])
                    if max(seen) >= 1:
                        break
        finally:
            stop.set()
            for t in searchers:
                t.join(60)
        assert max(seen) >= 1, f"GetInfo never saw a search in flight in {len(seen)} calls"
    finally:
        srv.stop()


def test_stop_drains_the_hot_searches_and_closes_the_data(tmp_path: Path) -> None:
    """Stopping a server under a stream of hot searches: each search is answered or refused
    with a clear status (never INTERNAL or UNKNOWN), stop returns, and the data reopens whole."""
    srv = ServerThread(tmp_path / "data", sync_server=True)
    vectors = quick_collection(srv.address)
    outcomes: list[Any] = []
    started = threading.Event()

    def search() -> None:
        with grpc.insecure_channel(srv.address) as channel:
            call = channel.unary_unary(SEARCH)
            while True:
                try:
                    call(search_bytes(vectors[2]), timeout=30)
                    outcomes.append("ok")
                    started.set()
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        return

    searchers = [threading.Thread(target=search) for _ in range(4)]
    for t in searchers:
        t.start()
    assert started.wait(30)
    srv.stop()
    for t in searchers:
        t.join(60)
    assert not any(t.is_alive() for t in searchers)
    refused = [o for o in outcomes if o != "ok"]
    clear = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert refused and all(code in clear for code, _ in refused), refused
    db = Database(tmp_path / "data")
    try:
        assert db.get_collection("q").count() == ROWS
    finally:
        db.close()


def test_lamina_serve_picks_its_server_model_from_its_config_or_its_flag(tmp_path: Path) -> None:
    """grpc's sync server is the default (one process, and every process of ``--processes 2``);
    ``sync_server = false`` in the config file or ``--aio-server`` serves on grpc.aio's (every
    process), ``--sync-server`` overrides the config file; a setting that is not a boolean is
    refused with its name, and the two flags together are refused."""
    with pytest.raises(InvalidArgument, match="sync_server must be a bool"):
        ServerConfig.from_dict({"sync_server": "yes"})
    assert ServerConfig().sync_server
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--sync-server", "--aio-server"])
    config = tmp_path / "lamina.toml"
    config.write_text("sync_server = false\n")
    sync, aio = "on grpc's sync server", "on grpc's aio server"
    for name, extra, processes, line, other in (
        ("default", ("--run-dir", str(tmp_path / "run-default")), 2, sync, aio),
        ("config", ("--config", str(config), "--run-dir", str(tmp_path / "run-config")), 2, aio, sync),
        ("flag", ("--aio-server",), 1, aio, sync),
        ("both", ("--config", str(config), "--sync-server"), 1, sync, aio),
    ):
        (tmp_path / name).mkdir()
        srv = ServerProcess(tmp_path / name / "data", *extra, processes=processes)
        try:
            vectors = quick_collection(srv.address)
            with lamina.connect(srv.address) as client:
                col = client.get_collection("q")
                assert [h.id for h in col.search(vectors[7], k=3)][:1] == [7]
            served = functools.partial(_logged, srv.log, line, processes)
            assert wait_for(served), srv.log.read_text()
            assert other not in srv.log.read_text()
        finally:
            srv.terminate()


def _logged(log: Path, line: str, times: int) -> bool:
    """Whether ``log`` holds ``line`` ``times`` times."""
    return log.read_text().count(line) == times
