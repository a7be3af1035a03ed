"""The web console's JSON API over real HTTP, beside a real gRPC server on loopback: the
same answers, rules, limits and error messages as the gRPC API, short JSON errors, TLS,
the metrics history, the CLI flags, and the pages shipped in the built wheel."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import trustme

import lamina
from lamina.config import Limits, ServerConfig
from lamina.errors import InvalidArgument
from lamina.server.auth import ApiKey, hash_key, new_key
from lamina.server.metrics import BUCKETS, bucket_quantile
from lamina.testing import ServerProcess, free_port
from tests.conftest import ROOT, ServerThread

DIM = 8


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    raw: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """One HTTP request to the console; (status, decoded JSON body)."""
    conn = (
        http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
        if context
        else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    )
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), data[:200]
        return response.status, orjson.loads(data)
    finally:
        conn.close()


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ServerThread]:
    """A server without keys (loopback) with its console, and collection ``docs``: 300
    points on a line (point i at i * e0, l2), so the nearest ids to point i are known."""
    srv = ServerThread(
        tmp_path / "data", console=True, sample_every=0.2, limits=Limits(max_message_bytes=1 << 16)
    )
    with lamina.connect(srv.address) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2", index={"type": "flat"}, segment_rows=256)
        vectors = np.zeros((300, DIM), dtype=np.float32)
        vectors[:, 0] = np.arange(300)
        payloads = [{"n": i, "lang": "en" if i % 2 else "de"} for i in range(300)]
        col.upsert(list(range(300)), vectors, payloads)
        col.optimize()
    yield srv
    srv.stop()


def test_pages_and_data_answer_as_the_grpc_api_does(open_server: ServerThread) -> None:
    assert open_server.console is not None
    port = open_server.console.port
    status, session = call(port, "GET", "/api/session")
    assert status == 200 and session["auth_required"] is False and session["allowed"]["delete_collection"]

    status, listing = call(port, "GET", "/api/collections")
    assert status == 200
    (docs,) = listing["collections"]
    assert docs["name"] == "docs" and docs["count"] == 300 and docs["config"]["metric"] == "l2"
    assert docs["status"]["segments"] >= 1

    # scroll pages in id order with the payloads; count and scroll take the same filter
    status, page = call(port, "POST", "/api/collections/docs/scroll", {"limit": 5, "filter": {"lang": "en"}})
    assert status == 200 and [p["id"] for p in page["points"]] == [1, 3, 5, 7, 9]
    assert page["points"][0]["payload"] == {"n": 1, "lang": "en"} and page["next_offset"] == 11
    assert call(port, "POST", "/api/collections/docs/count", {"filter": {"lang": "en"}}) == (
        200,
        {"count": 150},
    )

    status, got = call(port, "POST", "/api/collections/docs/points", {"ids": [42]})
    assert status == 200 and got["points"][0]["vector"][0] == 42.0 and len(got["points"][0]["vector"]) == DIM

    # more like point 100: itself, then its neighbours on the line, nearest first
    status, found = call(port, "POST", "/api/collections/docs/search", {"id": 100, "k": 5})
    assert status == 200
    ids = [h["id"] for h in found["hits"]]
    assert ids[0] == 100 and sorted(ids[1:3]) == [99, 101] and sorted(ids[3:5]) == [98, 102]
    assert found["hits"][0]["payload"] == {"n": 100, "lang": "de"}
    with lamina.connect(open_server.address) as db:
        sdk = db.get_collection("docs").search(np.eye(1, DIM)[0] * 100, k=5)
    assert ids == [h.id for h in sdk]  # the SDK over gRPC answers the same
    assert found["plan"]["hits"] == 5 and found["plan"]["seconds"] > 0

    vector = [7.2] + [0.0] * (DIM - 1)
    status, by_vector = call(
        port, "POST", "/api/collections/docs/search", {"vector": vector, "k": 3, "filter": {"lang": "de"}}
    )
    assert status == 200 and [h["id"] for h in by_vector["hits"]] == [8, 6, 10]
    plan = by_vector["plan"]
    assert plan["indexed_fields"] == [] and plan["unindexed_fields"] == ["lang"] and plan["hits"] == 3
    assert sum(s["rows"] for s in plan["segments"]) == 300
    assert sum(s["matches"] for s in plan["segments"]) == 150
    assert all(s["method"] and s["reason"] for s in plan["segments"])


def test_create_snapshot_tenants_and_delete(open_server: ServerThread) -> None:
    assert open_server.console is not None
    port = open_server.console.port
    status, created = call(
        port,
        "POST",
        "/api/collections",
        {"name": "mt", "dim": 4, "multi_tenant": True, "index": {"type": "flat"}},
    )
    assert status == 201 and created["config"]["multi_tenant"] is True
    assert call(port, "POST", "/api/collections", {"name": "mt", "dim": 4})[0] == 409
    with lamina.connect(open_server.address) as db:
        mt = db.get_collection("mt")
        mt.upsert([1, 2, 3], np.eye(3, 4), tenant="acme")
        mt.upsert([1], np.eye(1, 4), tenant="beta")
    status, tenants = call(port, "GET", "/api/collections/mt/tenants")
    assert status == 200 and tenants["tenants"] == [
        {"name": "acme", "points": 3, "indexed": False},
        {"name": "beta", "points": 1, "indexed": False},
    ]
    status, err = call(port, "POST", "/api/collections/mt/scroll", {})
    assert status == 400 and "tenant" in err["error"]["message"]
    status, page = call(port, "POST", "/api/collections/mt/scroll", {"tenant": "beta"})
    assert status == 200 and [p["id"] for p in page["points"]] == [1]

    status, snap = call(port, "POST", "/api/collections/docs/snapshots")
    assert status == 201 and snap["points"] == 300 and snap["collection"] == "docs"
    status, listed = call(port, "GET", "/api/collections/docs/snapshots")
    assert [s["name"] for s in listed["snapshots"]] == [snap["name"]]
    assert call(port, "DELETE", f"/api/collections/docs/snapshots/{snap['name']}")[0] == 200
    assert call(port, "GET", "/api/collections/docs/snapshots")[1] == {"snapshots": []}
    assert call(port, "DELETE", f"/api/collections/docs/snapshots/{snap['name']}")[0] == 404

    assert call(port, "DELETE", "/api/collections/mt") == (200, {"deleted": "mt"})
    with lamina.connect(open_server.address) as db:
        assert db.list_collections() == ["docs"]


def test_bad_requests_get_short_json_errors_and_change_nothing(open_server: ServerThread) -> None:
    assert open_server.console is not None
    port = open_server.console.port
    status, err = call(port, "GET", "/api/nope")
    assert status == 404 and err == {
        "error": {"code": "NOT_FOUND", "message": "no such route: GET /api/nope"}
    }
    assert call(port, "GET", "/favicon.ico")[0] == 404
    assert call(port, "GET", "/static/../app.py")[0] == 404
    assert call(port, "PUT", "/api/collections")[0] == 405
    assert call(port, "GET", "/api/collections/ghost")[1]["error"]["code"] == "NOT_FOUND"

    status, err = call(port, "POST", "/api/collections/docs/search", raw=b'{"id": 1,')
    assert status == 400 and err["error"]["message"].startswith("request body is not valid JSON")
    assert call(port, "POST", "/api/collections/docs/search", raw=b"[1, 2]")[1]["error"]["message"] == (
        "request body must be a JSON object, got list"
    )
    status, err = call(port, "POST", "/api/collections/docs/search", {"id": 1, "kk": 3})
    assert status == 400 and "unknown field(s) ['kk']" in err["error"]["message"]
    status, err = call(port, "POST", "/api/collections/docs/search", {"vector": [1.0, 2.0], "k": 3})
    assert status == 400 and "dim" in err["error"]["message"]

    # a bad filter: the API's own message, word for word what the SDK raises over gRPC
    bad = {"year": {"$between": [1, 2]}}
    status, err = call(port, "POST", "/api/collections/docs/scroll", {"filter": bad})
    with lamina.connect(open_server.address) as db, pytest.raises(InvalidArgument) as grpc_err:
        db.get_collection("docs").scroll(filter=bad)
    assert status == 400 and err["error"] == {"code": "INVALID_ARGUMENT", "message": str(grpc_err.value)}

    # each call has a deadline (30 s by default); past it the work stops as for a gRPC client
    console = open_server.console
    console.request_timeout = 0.0
    status, err = call(port, "POST", "/api/collections/docs/count", {"filter": {"n": {"$gte": 0}}})
    assert status == 504 and err["error"]["code"] == "DEADLINE_EXCEEDED", err
    console.request_timeout = 30.0
    assert call(port, "POST", "/api/collections/docs/count", {"filter": {"n": {"$gte": 0}}}) == (
        200,
        {"count": 300},
    )

    # over max_message_bytes (64 KiB here): refused as gRPC refuses it, nothing written
    big = {"name": "big", "dim": 4, "payload_index": {f"f{i}": "keyword" for i in range(8000)}}
    status, err = call(port, "POST", "/api/collections", big)
    assert status == 413 and err["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert "max_message_bytes=65536" in err["error"]["message"]
    with lamina.connect(open_server.address) as db:
        with pytest.raises(lamina.ResourceExhausted):
            db.get_collection("docs").upsert([1], np.ones((1, DIM)), [{"blob": "x" * (1 << 16)}])
        assert db.list_collections() == ["docs"]
        assert db.get_collection("docs").get([1])[0].payload == {"n": 1, "lang": "en"}


def _secured(tmp: Path, tls: tuple[bytes, bytes] | None = None) -> tuple[ServerThread, dict[str, str]]:
    keys = {name: new_key() for name in ("admin", "read", "kb-only", "acme")}
    configured = [
        ApiKey("admin", hash_key(keys["admin"]), "admin"),
        ApiKey("read", hash_key(keys["read"]), "read"),
        ApiKey("kb-only", hash_key(keys["kb-only"]), "admin", collections=frozenset({"kb"})),
        ApiKey("acme", hash_key(keys["acme"]), "write", tenants=frozenset({"acme"})),
    ]
    return ServerThread(tmp / "data", keys=configured, tls=tls, console=True, sample_every=0.2), keys


def test_keys_roles_collections_and_tenants_as_in_grpc(tmp_path: Path) -> None:
    srv, keys = _secured(tmp_path)
    try:
        assert srv.console is not None
        port = srv.console.port
        with lamina.connect(srv.address, api_key=keys["admin"]) as admin:
            for name in ("kb", "other"):
                admin.create_collection(name, dim=4).upsert([1, 2], np.eye(2, 4))
            mt = admin.create_collection("mt", dim=4, multi_tenant=True)
            mt.upsert([1], np.eye(1, 4), tenant="acme")
            mt.upsert([1, 2], np.eye(2, 4), tenant="beta")

        status, err = call(port, "GET", "/api/collections")
        assert status == 401 and err["error"]["code"] == "UNAUTHENTICATED"
        with lamina.connect(srv.address) as anonymous, pytest.raises(lamina.Unauthenticated) as grpc_err:
            anonymous.list_collections()
        assert err["error"]["message"] == str(grpc_err.value)
        status, err = call(port, "GET", "/api/session", key="lam_wrong")
        assert status == 401 and "lam_wrong" not in err["error"]["message"]

        # read: sees everything, may delete nothing; the refusal is gRPC's
        status, session = call(port, "GET", "/api/session", key=keys["read"])
        assert session["key"]["role"] == "read" and not any(session["allowed"].values())
        listing = call(port, "GET", "/api/collections", key=keys["read"])[1]["collections"]
        assert {c["name"] for c in listing} == {"kb", "other", "mt"}
        assert not any(c["allowed"]["delete_collection"] for c in listing)
        status, err = call(port, "DELETE", "/api/collections/kb", key=keys["read"])
        with lamina.connect(srv.address, api_key=keys["read"]) as reader:
            with pytest.raises(lamina.PermissionDenied) as grpc_err:
                reader.delete_collection("kb")
            assert status == 403 and err["error"]["message"] == str(grpc_err.value)
            assert call(port, "POST", "/api/collections/kb/snapshots", key=keys["read"])[0] == 403
            assert sorted(reader.list_collections()) == ["kb", "mt", "other"]

        # a key limited to collection kb: lists only kb, is refused the others
        listing = call(port, "GET", "/api/collections", key=keys["kb-only"])[1]["collections"]
        assert [c["name"] for c in listing] == ["kb"] and listing[0]["allowed"]["delete_collection"]
        assert call(port, "POST", "/api/collections/other/scroll", {}, key=keys["kb-only"])[0] == 403
        assert call(port, "POST", "/api/collections/kb/scroll", {}, key=keys["kb-only"])[0] == 200

        # a tenant key: must name its tenant, sees its tenant only, no totals
        acme = keys["acme"]
        assert call(port, "POST", "/api/collections/mt/scroll", {}, key=acme)[0] == 403
        assert call(port, "POST", "/api/collections/mt/scroll", {"tenant": "beta"}, key=acme)[0] == 403
        page = call(port, "POST", "/api/collections/mt/scroll", {"tenant": "acme"}, key=acme)[1]
        assert [p["id"] for p in page["points"]] == [1]
        tenants = call(port, "GET", "/api/collections/mt/tenants", key=acme)[1]["tenants"]
        assert [t["name"] for t in tenants] == ["acme"]
        assert {c["count"] for c in call(port, "GET", "/api/collections", key=acme)[1]["collections"]} == {0}
        deadline = time.monotonic() + 10  # an admin watching: points are sampled...
        while not any(call(port, "GET", "/api/metrics", key=keys["admin"])[1]["points"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        metrics = call(port, "GET", "/api/metrics", key=acme)[1]  # ...but not shown to a tenant key
        assert metrics["points"] and all(v is None for v in metrics["points"] + metrics["index_bytes"])
        assert len(metrics["qps"]) == len(metrics["points"])

        assert call(port, "DELETE", "/api/collections/other", key=keys["admin"])[0] == 200
    finally:
        srv.stop()


def test_the_console_speaks_tls_when_the_server_does(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    srv, keys = _secured(tmp_path, tls=(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()))
    try:
        assert srv.console is not None and srv.console.url.startswith("https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        status, session = call(srv.console.port, "GET", "/api/session", key=keys["admin"], context=context)
        assert status == 200 and session["key"]["name"] == "admin"
        with pytest.raises((http.client.HTTPException, ConnectionError, AssertionError)):
            call(srv.console.port, "GET", "/api/session", key=keys["admin"])  # plaintext is refused
    finally:
        srv.stop()


def test_metrics_history_charts_the_servers_own_counters(open_server: ServerThread) -> None:
    console = open_server.console
    assert console is not None
    with lamina.connect(open_server.address) as db:
        col = db.get_collection("docs")
        call(console.port, "GET", "/api/metrics")  # someone watches: engine gauges are read too
        for _ in range(30):
            col.search(np.ones(DIM), k=3)
        with pytest.raises(lamina.NotFound):
            db.get_collection("ghost")

    def served(m: dict[str, Any]) -> float:
        """Requests the history shows: each rate times its interval's true width (a busy
        machine stretches some; the first one's is the nominal interval)."""
        if not m["time"]:
            return 0.0  # no interval closed yet
        starts = [m["time"][0] - m["interval_seconds"], *m["time"]]
        return sum(r * (b - a) for r, a, b in zip(m["qps"], starts, m["time"], strict=False))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = call(console.port, "GET", "/api/metrics")[1]
        # the NotFound came last: wait until an interval closed after it too
        if served(m) >= 30.5 and m["points"] and m["points"][-1] == 300 and any(e > 0 for e in m["errors"]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the history never showed the requests: {m}")
    assert 31 <= round(served(m)) <= 40  # the 32 calls above (+ the console's none: /api/metrics is no RPC)
    assert any(e > 0 for e in m["errors"])
    assert any(p is not None and 0 < p < 1 for p in m["p50"]) and m["rss_bytes"][-1] > 10 << 20
    assert len(m["time"]) == len(m["p99"]) == len(m["index_bytes"])


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    bounds = (*BUCKETS, float("inf"))
    counts = [0.0] * len(bounds)
    for i, b in enumerate(bounds):  # 100 observations in (0.005, 0.01], 100 in (0.01, 0.025]
        counts[i] = 0 if b <= 0.005 else 100 if b <= 0.01 else 200
    assert bucket_quantile(0.5, bounds, counts) == pytest.approx(0.01)
    assert bucket_quantile(0.25, bounds, counts) == pytest.approx(0.0075)
    assert bucket_quantile(0.99, bounds, counts) == pytest.approx(0.01 + 0.015 * 0.98)
    assert bucket_quantile(0.5, bounds, [0.0] * len(bounds)) is None
    assert bucket_quantile(0.5, bounds, [0.0] * (len(bounds) - 1) + [5.0]) == 30.0


def test_serve_prints_the_console_address_and_no_console_turns_it_off(tmp_path: Path) -> None:
    http_port = free_port()
    proc = ServerProcess(tmp_path / "a", "--http-port", str(http_port))
    try:
        deadline = time.monotonic() + 20
        while f"console: http://127.0.0.1:{http_port}/" not in proc.log.read_text():
            assert time.monotonic() < deadline, proc.log.read_text()
            time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        conn.request("GET", "/")
        page = conn.getresponse()
        assert page.status == 200 and b'<script type="module" src="/static/app.js">' in page.read()
        # the port is taken now: a second server says so and exits
        taken = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamina",
                "serve",
                "--data",
                str(tmp_path / "b"),
                "--port",
                "0",
                "--http-port",
                str(http_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{http_port}" in taken.stderr
    finally:
        proc.terminate()
    off = ServerProcess(tmp_path / "c", "--no-console")
    try:
        assert "console:" not in off.log.read_text() and "lamina.console" not in off.log.read_text()
    finally:
        off.terminate()
    with pytest.raises(InvalidArgument, match=r"http_port must be in 0\.\.65535"):
        ServerConfig.from_dict({"http_port": 70000})
    assert ServerConfig.from_dict({"console": False, "http_port": 7000}).console is False


def test_the_built_wheel_ships_the_pages(tmp_path: Path) -> None:
    """A non-editable install serves the pages from the package (importlib.resources), so
    they must be in the wheel: build it (from a copy, leaving no build/ in the checkout) and look."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", "docs"
    )
    shutil.copytree(ROOT, source, ignore=skip)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("laminadb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "index.html",
        "app.js",
        "style.css",
        "vendor/uplot/uPlot.esm.js",
        "vendor/uplot/uPlot.min.css",
        "vendor/uplot/LICENSE",
    ):
        assert f"lamina/console/static/{name}" in names
    assert "lamina/console/app.py" in names and "lamina/console/transport.py" in names


def test_search_by_text_embeds_with_the_collections_model(open_server: ServerThread) -> None:
    """The playground's text mode: the server embeds the query with the collection's model,
    so the console's hits are the SDK's ``search(str)`` hits; a collection without a model
    refuses text with the API's message."""
    assert open_server.console is not None
    port = open_server.console.port
    texts = ["Prune roses in late winter.", "Tides follow the moon.", "Kernel modules load at boot."]
    with lamina.connect(open_server.address) as db:
        kb = db.create_collection("kb", embedding="minilm")
        kb.add(ids=[1, 2, 3], documents=texts)
        expected = [h.id for h in kb.search("when do I cut back my roses?", k=3)]
        with pytest.raises(InvalidArgument) as no_model:
            db.get_collection("docs").search("roses", k=3)
    status, found = call(
        port, "POST", "/api/collections/kb/search", {"text": "when do I cut back my roses?", "k": 3}
    )
    assert status == 200, found
    assert [h["id"] for h in found["hits"]] == expected and expected[0] == 1
    assert found["hits"][0]["payload"]["document"] == texts[0]
    status, err = call(port, "POST", "/api/collections/docs/search", {"text": "roses", "k": 3})
    assert status == 400 and err["error"]["message"] == str(no_model.value)
    status, err = call(port, "POST", "/api/collections/kb/search", {"text": "roses", "id": 1})
    assert status == 400 and "give one of vector" in err["error"]["message"]
