"""The holes of the security review of issue #25, one test each, against a real server on
loopback: names anchored at their true end, tenants that learn nothing of each other,
requests whose cost is bounded before they start and whose work stops with their client,
answers refused before they outgrow a message, and a metrics endpoint that is no wider
than the gRPC port."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import trustme

import lamina
from lamina.client.api import is_address
from lamina.config import Limits
from lamina.engine.database import Database
from lamina.engine.tenants import TenantFields
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import collections_pb2_grpc as cgrpc
from lamina.server.app import LaminaServer
from lamina.server.auth import ApiKey, hash_key, new_key
from lamina.server.metrics import exposure_warnings
from lamina.server.network import host_port, is_loopback
from lamina.types import CollectionConfig
from lamina.validation import check_collection_name, check_tenant
from tests.conftest import ServerProcess, ServerThread
from tests.test_limits import wait_for


# ---------------------------------------------------------------- hole 5: names end where they end
def test_names_with_a_trailing_newline_are_refused_and_old_ones_stay_manageable(
    server: ServerThread, tmp_path: Path
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = cgrpc.CollectionsStub(channel)
        for bad in ("x\n", "docs\n", "a" * 128 + "\n"):
            with pytest.raises(grpc.RpcError) as err:
                stub.Create(cpb.CreateCollectionRequest(name=bad, config=cpb.CollectionConfig(dim=4)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid collection name" in (err.value.details() or "")
        assert not any(p.name.endswith("\n") for p in (server.data / "collections").iterdir())
    for bad in ("x\n", "x\r", "snap\n"):
        with pytest.raises(lamina.InvalidArgument):
            check_collection_name(bad)
    for bad in ("acme\x7f", "acme\x85", "acme\n"):  # DEL and C1 controls too, not only C0
        with pytest.raises(lamina.InvalidArgument):
            check_tenant(bad)
    assert is_address("localhost:6334") and not is_address("localhost:6334\n")
    with pytest.raises(lamina.InvalidArgument):
        ApiKey.from_dict({"name": 'ops"\nrole = "admin', "hash": hash_key("k"), "role": "read"}, "keys[0]")
    quoted = ApiKey("a\\b", hash_key("k"), "read", frozenset({"docs"})).to_toml()
    assert 'name = "a\\\\b"' in quoted

    # a collection (and its snapshot) made by an older version under such a name can still be deleted
    data = tmp_path / "legacy"
    with Database(data) as db:
        db.create_collection("x", CollectionConfig(dim=4))
        snap = db.create_snapshot("x")
    (data / "collections" / "x").rename(data / "collections" / "x\n")
    (data / "snapshots" / "x").rename(data / "snapshots" / "x\n")
    with Database(data) as db:
        assert db.list_collections() == ["x\n"]
        db.delete_snapshot("x\n", snap.name)
        assert not (data / "snapshots" / "x\n" / snap.name).exists()
        with pytest.raises(lamina.InvalidArgument):
            db.delete_snapshot("../x\n", snap.name)
        db.delete_collection("x\n")
    shutil.rmtree(data)


# ---------------------------------------------------------------- hole 1: a tenant learns only its own fields
def _multi_tenant_server(tmp_path: Path) -> tuple[ServerThread, str]:
    """A server with keys (an admin, and a reader scoped to tenant acme) and the multi-tenant
    collection "mt": acme's points have body/lang/owner, globex's also globex_ssn."""
    acme_secret = "lam_acme-reader-secret"
    srv = ServerThread(
        tmp_path / "data",
        keys=[
            ApiKey("root", hash_key("lam_root-secret"), "admin"),
            ApiKey("acme", hash_key(acme_secret), "read", tenants=frozenset({"acme"})),
        ],
    )
    rng = np.random.default_rng(1)
    with lamina.connect(srv.address, api_key="lam_root-secret") as admin:
        mt = admin.create_collection(
            "mt",
            dim=8,
            multi_tenant=True,
            payload_index={"lang": "keyword"},
            tenant_index_rows=64,
            segment_rows=256,
        )
        mt.upsert(
            list(range(600)),
            rng.standard_normal((600, 8)),
            [{"body": "hello", "lang": "en", "owner": f"a{i}"} for i in range(600)],
            tenant="acme",
        )
        mt.upsert(
            list(range(50)),
            rng.standard_normal((50, 8)),
            [{"body": "x", "lang": "de", "owner": "g", "globex_ssn": "123"} for _ in range(50)],
            tenant="globex",
        )
        mt.optimize()
    return srv, acme_secret


def test_a_tenant_learns_nothing_of_other_tenants_fields(tmp_path: Path) -> None:
    srv, secret = _multi_tenant_server(tmp_path)
    try:
        with lamina.connect(srv.address, api_key=secret) as client:
            mt = client.get_collection("mt")
            answers = {}
            for field in ("nosuchfield", "globex_ssn"):  # a field of another tenant looks like no field
                with pytest.raises(lamina.InvalidArgument) as err:
                    mt.count(filter={field: "x"}, tenant="acme")
                answers[field] = str(err.value).replace(field, "<field>")
                assert "globex_ssn" not in answers[field]
                assert "known fields: body, lang, owner" in str(err.value)
            assert answers["nosuchfield"] == answers["globex_ssn"]
            assert mt.count(filter={"owner": "a1"}, tenant="acme") == 1  # its own fields work
            assert mt.count(filter={"lang": "de"}, tenant="acme") == 0  # declared ones too
            # explain names the tenant's graphs without their codes (which tell creation order)
            plan = mt.explain(np.ones(8), k=5, tenant="acme")
            names = {s.segment for s in plan.segments}
            assert names <= {"tenant", "tenant-partition-main", "tenant-partition-delta"}, names
            assert "tenant-partition-main" in names
    finally:
        srv.stop()
    # the map survives a restart, and a collection written before it was kept learns it once
    with Database(tmp_path / "data") as db:
        col = db.get_collection("mt")
        with pytest.raises(lamina.InvalidArgument, match="known fields: body, lang, owner\\)"):
            col.count({"globex_ssn": "1"}, tenant="acme")
        assert col.count({"globex_ssn": "123"}, tenant="globex") == 50
        learned = TenantFields.learn(col._store, col._tenants.names)  # as for an older collection
        assert learned.by_tenant == {
            "acme": {"body", "lang", "owner"},
            "globex": {"body", "lang", "owner", "globex_ssn"},
        }


# ---------------------------------------------------------------- hole 2: BM25 statistics are the tenant's own
def test_a_tenants_text_scores_depend_only_on_its_own_documents(server: ServerThread) -> None:
    acme_docs = ["secret plan for the launch", "hello world", "the plan is secret", "nothing here"]
    rng = np.random.default_rng(2)
    with lamina.connect(server.address) as client:
        mt = client.create_collection(
            "mt", dim=4, multi_tenant=True, payload_index={"body": "text"}, segment_rows=256
        )
        alone = client.create_collection("alone", dim=4, payload_index={"body": "text"})  # the reference
        vectors = rng.standard_normal((len(acme_docs), 4))
        payloads = [{"body": d} for d in acme_docs]
        mt.upsert(list(range(len(acme_docs))), vectors, payloads, tenant="acme")
        alone.upsert(list(range(len(acme_docs))), vectors, payloads)

        def scores(col: lamina.Collection, **tenant: str) -> dict[object, float]:
            return {h.id: round(h.score, 5) for h in col.query(text="secret plan", k=10, **tenant)}

        expected = scores(alone)
        assert len(expected) == 2 and scores(mt, tenant="acme") == expected
        # another tenant writes (sealed and mutable), deletes, and writes again: acme's scores stay
        for round_ in range(3):
            n = 300
            mt.upsert(
                list(range(n)),
                rng.standard_normal((n, 4)),
                [{"body": "secret " * (1 + i % 3) + "plan" * (round_ % 2)} for i in range(n)],
                tenant="globex",
            )
            if round_ == 1:
                mt.delete(filter={"body": {"$exists": True}}, tenant="globex")
            assert scores(mt, tenant="acme") == expected, round_
        mt.optimize()
        assert scores(mt, tenant="acme") == expected
        assert mt.count(tenant="globex") == 300


# ---------------------------------------------------------------- hole 3: bounded, stopped, fair
#: a valid filter that checks 300 conditions on every unindexed payload: tens of seconds over 20,000
SLOW = {"$or": [{"tag": f"nope-{i}"} for i in range(300)]}


def _tagged(client: lamina.Client, n: int = 20_000) -> lamina.Collection:
    col = client.create_collection("t", dim=8, segment_rows=1_000_000)
    rng = np.random.default_rng(3)
    for lo in range(0, n, 10_000):
        ids = list(range(lo, lo + 10_000))
        col.upsert(ids, rng.standard_normal((10_000, 8)), [{"tag": f"t{i}", "n": i} for i in ids])
    return col


def test_expensive_requests_are_bounded_stopped_with_their_client_and_do_not_starve_others(
    tmp_path: Path,
) -> None:
    # bounded before it starts: a cost past the limits is refused, naming the limit and the way out
    small = ServerThread(tmp_path / "small", limits=Limits(max_filter_checks=100_000, max_filter_terms=2_000))
    try:
        with lamina.connect(small.address) as client:
            col = _tagged(client)
            wide = {"tag": {"$in": [f"t{i}" for i in range(0, 2_000, 2)]}}  # 1,000 values: one set lookup
            assert col.count(wide) == 1_000
            ten = {"$or": [{"tag": f"t{i}"} for i in range(10)]}  # 20,000 rows x 10 conditions
            with pytest.raises(
                lamina.ResourceExhausted, match=r"max_filter_checks=100,000: create a payload index on 'tag'"
            ):
                col.count(ten)
            with pytest.raises(lamina.ResourceExhausted, match="max_filter_terms"):
                col.count({"tag": {"$nin": [str(i) for i in range(2_001)]}})
            col.create_payload_index("tag", "keyword")
            assert col.count(ten) == 10  # the index answers it now
    finally:
        small.stop()

    limits = Limits(max_filter_checks=10**9, max_requests_per_caller=6)
    srv = ServerThread(tmp_path / "big", workers=4, limits=limits)
    heavy_threads: list[threading.Thread] = []
    try:
        with lamina.connect(srv.address) as admin:
            _tagged(admin)
            gate = srv.server.gate
            # the work stops when its client has gone
            with lamina.connect(srv.address, timeout=0.5) as hasty, pytest.raises(lamina.DeadlineExceeded):
                hasty.get_collection("t").count(SLOW)
            assert wait_for(lambda: gate.in_flight == 0, 5), "the abandoned count kept running"
            assert admin.server_info()["requests_abandoned"] >= 1

            # one caller floods with heavy requests; another's trivial calls still answer at once
            heavy = lamina.connect(srv.address, timeout=60, retries=0)
            refused: list[str] = []

            def flood() -> None:
                try:
                    heavy.get_collection("t").count(SLOW)
                except lamina.ResourceExhausted as exc:
                    refused.append(str(exc))
                except lamina.LaminaError:
                    pass

            heavy_threads = [threading.Thread(target=flood) for _ in range(8)]
            for thread in heavy_threads:
                thread.start()
            assert wait_for(lambda: gate.in_flight >= 6 and len(refused) >= 2, 10)  # 6 per caller
            with lamina.connect(srv.address, timeout=30) as light:
                waits = []
                for _ in range(5):
                    started = time.monotonic()
                    assert light.get_collection("t").count() == 20_000
                    waits.append(time.monotonic() - started)
            assert max(waits) < 2.0, waits
            assert gate.in_flight >= 6  # the flood is still running meanwhile
            assert all("max_requests_per_caller=6" in r for r in refused), refused
    finally:
        # shutdown honours its grace (1 s here), then stops the work in flight
        started = time.monotonic()
        srv.stop()
        stopped_in = time.monotonic() - started
        for thread in heavy_threads:
            thread.join(10)
    assert stopped_in < 6.0, stopped_in


# ---------------------------------------------------------------- hole 4: answers that cannot be sent are never built
def test_answers_larger_than_a_message_are_refused_before_the_work(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data", limits=Limits(max_message_bytes=8 << 20))
    try:
        with lamina.connect(srv.address) as client:
            col = client.create_collection("c", dim=64)
            rng = np.random.default_rng(4)
            col.upsert(list(range(3_000)), rng.standard_normal((3_000, 64)), [{"body": "x" * 40}] * 3_000)
            queries = rng.standard_normal((200, 64)).astype(np.float32)
            # 200 queries x k=10,000 bounded by the 3,000 points there are, with vectors and payloads
            with pytest.raises(lamina.ResourceExhausted) as err:
                col.search_batch(queries, k=10_000, with_vector=True, with_payload=True)
            message = str(err.value)
            assert "600,000 results" in message and "max_message_bytes=8 MiB" in message
            assert "with_vector=False" in message and "scroll" in message and "nothing was done" in message
            # what fits is answered, with k bounded by the collection's size
            hits = col.search_batch(queries[:5], k=10_000, with_vector=False, with_payload=False)
            assert [len(h) for h in hits] == [3_000] * 5
            assert len(col.search(queries[0], k=10_000, with_payload=False)) == 3_000
            page, _ = col.scroll(limit=10_000, with_vector=True)
            assert len(page) == 3_000
    finally:
        srv.stop()


# ---------------------------------------------------------------- hole 6: metrics no wider than gRPC; scoped info
def _scrape(url: str, context: ssl.SSLContext | None, key: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_take_tls_and_a_key_and_scoped_keys_see_only_their_scope(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    secrets = {"root": new_key(), "kb": new_key(), "metrics": new_key()}
    srv = ServerThread(
        tmp_path / "data",
        keys=[
            ApiKey("root", hash_key(secrets["root"]), "admin"),
            ApiKey("kb-reader", hash_key(secrets["kb"]), "read", frozenset({"kb"})),
        ],
        tls=(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()),
        metrics_port=0,
        metrics_key=hash_key(secrets["metrics"]),
    )
    try:
        with lamina.connect(f"localhost:{srv.port}", api_key=secrets["root"], ca_cert=ca_file) as root:
            for name, n in (("kb", 3), ("secret-project", 5)):
                root.create_collection(name, dim=4).upsert(list(range(n)), np.ones((n, 4)))
            assert root.server_info()["collections"] == 2
        url = f"https://localhost:{srv.server.metrics_port}/metrics"
        trusted = ssl.create_default_context(cafile=str(ca_file))
        assert _scrape(url, trusted, None)[0] == 401
        assert _scrape(url, trusted, secrets["kb"])[0] == 401  # an API key is not the metrics key
        status, body = _scrape(url, trusted, secrets["metrics"])
        assert status == 200
        assert "lamina_collection_points 8.0" in body and "lamina_collections 2.0" in body
        assert "secret-project" not in body and 'collection="' not in body  # totals, no names
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://localhost:{srv.server.metrics_port}/metrics", timeout=5).read()

        with lamina.connect(f"localhost:{srv.port}", api_key=secrets["kb"], ca_cert=ca_file) as reader:
            for _ in range(3):
                reader.get_collection("kb").count()
            info = reader.server_info()
            assert info["collections"] == 1  # what its scope covers, not the server's totals
            assert info["requests_served"] == 6 and info["requests_in_flight"] == 0  # its own requests
    finally:
        srv.stop()

    # [::1] is loopback and written once in brackets; warnings where other machines can reach metrics
    assert (
        is_loopback("[::1]") and is_loopback("::1") and is_loopback("127.0.0.2") and is_loopback("localhost")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    assert host_port("[::1]", 6334) == "[::1]:6334" == host_port("::1", 6334)
    assert exposure_warnings("[::1]", tls=False, key=False) == []
    assert len(exposure_warnings("0.0.0.0", tls=False, key=False)) == 2
    assert exposure_warnings("0.0.0.0", tls=True, key=True) == []
    if socket.has_ipv6:
        with Database(tmp_path / "v6") as db:
            server = LaminaServer(db, "[::1]", 0)  # no keys: allowed, it is loopback
            try:
                port = asyncio.run(_start_stop(server))
            except OSError:
                port = None  # no IPv6 on this machine's loopback
            assert port is None or port > 0


async def _start_stop(server: LaminaServer) -> int:
    port = await server.start()
    await server.stop(grace=0)
    return port


def test_sigterm_stops_work_in_flight_after_the_grace_period(
    tmp_path: Path, server_process: type[ServerProcess]
) -> None:
    proc = server_process(tmp_path / "data", "--workers", "2", "--limit", f"max_filter_checks={10**9}")
    with lamina.connect(proc.address) as client:
        _tagged(client, 40_000)
    heavy = lamina.connect(proc.address, timeout=120, retries=0)
    outcomes: list[str] = []

    def slow_count() -> None:
        try:
            # 48,000,000 unindexed checks: far longer than the 5 s grace even alone on an idle
            # machine (12,000,000 took 5.1 s on a quiet one, and a count begun 1 s before the
            # SIGTERM then finished within the grace)
            heavy.get_collection("t").count({"$or": [{"tag": f"nope-{i}"} for i in range(1200)]})
            outcomes.append("ok")
        except lamina.LaminaError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=slow_count) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0
    took = time.monotonic() - started
    for thread in threads:
        thread.join(10)
    heavy.close()
    log = proc.log.read_text()
    assert took < 5 + 4, f"SIGTERM took {took:.1f} s with a 5 s grace period:\n{log[-2000:]}"
    assert "then stopping them" in log and "stopping the work of" in log
    assert outcomes and "ok" not in outcomes, outcomes
