"""Text in, text out: collections with an embedding model, on every transport.

The built-in model runs for real (onnxruntime, the int8 weights of the ``embed`` extra);
an OpenAI-compatible endpoint is a small HTTP server this test starts on loopback.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import lamina
from lamina.config import Limits
from lamina.engine import embedding
from lamina.engine.embedding import Batcher, CallableModel, MiniLM
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import points_pb2_grpc as pgrpc
from lamina.types import EmbeddingConfig
from tests.conftest import ServerThread

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DOCS = ROOT.parent / "shared" / "data" / "kernel-docs-minilm"
DOCS = [
    "Prune roses in late winter, before the buds break.",
    "Tides follow the moon: two highs and two lows a day.",
    "Sourdough needs a starter fed with flour and water.",
]


def _minilm() -> MiniLM:
    model = embedding.model_for(EmbeddingConfig("minilm"))
    assert isinstance(model, MiniLM)
    return model


@pytest.mark.skipif(not KERNEL_DOCS.is_dir(), reason="needs ../shared/data (the CI copy has it)")
def test_builtin_model_agrees_with_the_float_model_on_kernel_docs() -> None:
    """The int8 ONNX model against the float all-MiniLM-L6-v2 vectors shipped with the data."""
    rows = [json.loads(line) for _, line in zip(range(48), (KERNEL_DOCS / "base.jsonl").open(), strict=False)]
    reference = np.load(KERNEL_DOCS / "base.f16.npy", mmap_mode="r")[: len(rows)].astype(np.float32)
    got = _minilm().embed([r["text"] for r in rows])
    cosine = (got * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_text_past_the_window_is_embedded_from_its_first_window() -> None:
    model = _minilm()
    head = "Roses are pruned in late winter. " + "The gardener keeps notes on every bed. " * 60
    one, two = model.embed([head, head + " Completely different words about tides and the moon."])
    assert float(one @ two) > 0.9999  # the tail past 256 tokens is not read
    short, longer = model.embed(["Roses are pruned.", "Roses are pruned. Tides follow the moon."])
    assert float(short @ longer) < 0.99  # within the window every word counts


def test_text_collection_round_trip(db: lamina.Client) -> None:
    col = db.create_collection("kb", embedding="minilm")
    assert col.dim == 384 and col.config.embedding == EmbeddingConfig("minilm")
    assert col.config.payload_index == {"document": "text"}
    assert col.add(documents=DOCS, ids=[1, 2, 3], payloads=[{"topic": "garden"}, {"topic": "sea"}, None]) == 3
    hits = col.search("when do I cut back my roses?", k=3)
    assert hits[0].id == 1
    assert hits[0].payload == {"topic": "garden", "document": DOCS[0]}
    assert [h.id for h in col.query(text="moon tides", k=1)] == [2]  # hybrid: dense + BM25
    # no word in common with any document: only the embedded text (the dense side) finds it
    assert [h.id for h in col.query(text="lunar pull upon oceans", k=1)] == [2]
    assert [[h.id for h in hl] for hl in col.search_batch(["bread baking", "ocean"], k=1)] == [[3], [2]]
    # the stored vectors are the model's, embedded wherever the engine runs
    stored = col.get([1, 2, 3], with_vector=True)
    expected = _minilm().embed(DOCS)
    assert np.allclose(np.stack([p.vector for p in stored]), expected, atol=1e-5)
    assert np.allclose(col.embed(DOCS[:1]), expected[:1], atol=1e-5)
    # vectors still work on such a collection, at the model's dimension
    col.upsert([4], expected[2:3] * 1.0, [{"topic": "bread"}])
    assert {h.id for h in col.search(expected[2], k=2)} == {3, 4}
    infos = {i.name: i for i in db.collections_info()}
    assert infos["kb"].config.embedding == EmbeddingConfig("minilm") and infos["kb"].dim == 384


def test_bad_text_input_is_refused_and_writes_nothing(db: lamina.Client) -> None:
    with pytest.raises(
        lamina.InvalidArgument, match=r"unknown embedding model 'no-such-model'.*available: minilm"
    ):
        db.create_collection("x", embedding="no-such-model")
    assert db.list_collections() == []
    with pytest.raises(lamina.InvalidArgument, match=r"does not match embedding model 'minilm'.*384"):
        db.create_collection("x", dim=100, embedding="minilm")
    plain = db.create_collection("plain", dim=4)
    with pytest.raises(lamina.InvalidArgument, match=r"no embedding model.*embedding='minilm'"):
        plain.search("roses")
    with pytest.raises(lamina.InvalidArgument, match=r"no embedding model.*embedding='minilm'"):
        plain.add(ids=[1], documents=["roses"])
    col = db.create_collection("kb", embedding="minilm")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ids": [1], "documents": ["a"], "vectors": np.ones((1, 384))}, "documents or vectors, not both"),
        ({"ids": [1, 2], "documents": ["only one"]}, "got 1 documents for 2 ids"),
        ({"ids": [1], "documents": ["   "]}, "document 0 is empty"),
        ({"ids": [1, 2], "documents": ["fine", 7]}, "document 1 must be a string"),
        ({"ids": [1], "documents": "not a list"}, "documents must be a list of strings"),
        ({"ids": [1], "documents": ["a"], "payloads": [{"document": "mine"}]}, "has a 'document' field"),
        ({"ids": [1], "documents": ["a"], "payloads": [{}, {}]}, "one JSON object"),
        ({"ids": [1]}, "add needs documents"),
    ]
    for kwargs, message in cases:
        with pytest.raises(lamina.InvalidArgument, match=message):
            col.add(**kwargs)
    with pytest.raises(lamina.InvalidArgument, match="query text 0 is empty"):
        col.search("")
    assert col.count() == 0


def test_the_server_checks_what_a_raw_client_sends(server: ServerThread) -> None:
    db = lamina.connect(server.address)
    col = db.create_collection("kb", embedding="minilm")
    with grpc.insecure_channel(server.address) as channel:
        stub = pgrpc.PointsStub(channel)
        ids = [ppb.UpsertRequest().ids.add(num=1)]
        for request, message in [
            (
                ppb.UpsertRequest(
                    collection="kb", ids=ids, documents=["a"], vectors={"dim": 384, "data": b"\0" * 1536}
                ),
                "documents or vectors, not both",
            ),
            (ppb.UpsertRequest(collection="kb", ids=ids, documents=["a", "b"]), "got 2 documents for 1 ids"),
            (ppb.UpsertRequest(collection="kb", ids=ids, documents=[""]), "document 0 is empty"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Upsert(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (err.value.details() or "")
    assert col.count() == 0
    db.close()


async def test_async_clients_send_text(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "server")
    try:
        for target in (str(tmp_path / "embedded"), srv.address):
            async with await lamina.connect_async(target) as db:
                col = await db.create_collection("kb", embedding="minilm")
                await col.add([1, 2], DOCS[:2])
                assert (await col.search("pruning roses", k=1))[0].id == 1
                assert [h.id for h in await col.query(text="moon", k=1)] == [2]
    finally:
        srv.stop()


# ---------------------------------------------------------------- other models
class _Endpoint(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/embeddings: a text's vector counts its letters a..h."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if self.headers.get("Authorization") != "Bearer sk-test":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "bad key"}')
            return
        data = [
            {"index": i, "embedding": [t.lower().count(c) + 0.1 for c in "abcdefgh"]}
            for i, t in enumerate(body["input"])
        ]
        answer = json.dumps({"object": "list", "data": data[::-1]}).encode()  # any order, by index
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.HTTPServer]:
    monkeypatch.setenv("LAMINA_TEST_EMBED_KEY", "sk-test")
    _Endpoint.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_openai_compatible_endpoint(db: lamina.Client, endpoint: http.server.HTTPServer) -> None:
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/v1"
    spec = EmbeddingConfig("letters-8", url=url, api_key_env="LAMINA_TEST_EMBED_KEY")
    col = db.create_collection("ep", embedding=spec)
    assert col.dim == 8 and col.config.embedding == spec  # the key itself is stored nowhere
    col.add([1, 2], ["aaaa", "hhhh"])
    assert col.search("ah aaa", k=1)[0].id == 1
    request = _Endpoint.seen[-1]
    assert request["path"] == "/v1/embeddings" and request["auth"] == "Bearer sk-test"
    assert request["model"] == "letters-8" and request["input"] == ["ah aaa"]
    endpoint.shutdown()
    endpoint.server_close()
    with pytest.raises(lamina.Unavailable, match=f"embeddings endpoint {url}/embeddings is unreachable"):
        col.add([3], ["bbbb"])
    assert col.count() == 2  # nothing written


def test_wrong_endpoint_key_is_permission_denied(
    db: lamina.Client, endpoint: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/v1"
    col = db.create_collection(
        "ep", embedding={"model": "letters-8", "url": url, "api_key_env": "LAMINA_TEST_EMBED_KEY"}
    )
    monkeypatch.setenv("LAMINA_TEST_EMBED_KEY", "sk-wrong")
    with pytest.raises(lamina.PermissionDenied, match="refused the key"):
        col.add([1], ["abc"])
    assert col.count() == 0


def test_python_callable_embedded(tmp_path: Path) -> None:
    def letters(texts: list[str]) -> np.ndarray:
        return np.array([[t.count(c) + 0.1 for c in "xyz"] for t in texts], dtype=np.float32)

    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("fn", embedding=letters)
        assert col.dim == 3 and col.config.embedding is not None
        assert col.config.embedding.model.endswith("letters")
        col.add(["x", "z"], ["xxxx", "zzzz"])
        assert col.search("zz", k=1)[0].id == "z"
    with lamina.connect(str(tmp_path)) as db:  # reopened in the same process: still registered
        assert db.get_collection("fn").search("xx", k=1)[0].id == "x"


# ---------------------------------------------------------------- batching
class _Gate:
    """A model that blocks until released and counts its calls (to see batching)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.release.wait(10)
        self.calls.append(len(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_concurrent_texts_share_model_calls_and_the_queue_is_bounded() -> None:
    gate = _Gate()
    batcher = Batcher(CallableModel("gate", gate, 2), max_queued=8)
    first = batcher.submit(["a"])  # the worker takes it and waits in the model
    time.sleep(0.2)
    waiting = [batcher.submit(["b" * (i + 1), "c"]) for i in range(4)]  # 8 texts wait
    with pytest.raises(lamina.ResourceExhausted, match=r"embedding queue is full.*max_embed_queue=8"):
        batcher.submit(["one too many"])
    gate.release.set()
    assert first.result(10)[0, 0] == 1
    results = [w.result(10) for w in waiting]
    assert [r[0, 0] for r in results] == [1, 2, 3, 4]  # each caller gets its own rows
    assert gate.calls == [1, 8]  # four requests, one model call
    assert batcher.submit(["again"]).result(10).shape == (1, 2)  # room again


def test_server_embeds_off_the_event_loop_and_refuses_past_its_queue(tmp_path: Path) -> None:
    gate = _Gate()
    embedding.register_embedding("slow-gate", gate, dim=2)
    srv = ServerThread(tmp_path / "data", limits=Limits(max_embed_queue=2))
    try:
        db = lamina.connect(srv.address, retries=0)
        col = db.create_collection("g", embedding="slow-gate")
        blocked = [
            threading.Thread(target=lambda: col.add([1, 2], ["a", "b"])),  # in the model, which waits
            threading.Thread(target=lambda: col.add([3, 4], ["c", "d"])),  # fills the queue
        ]
        for thread in blocked:
            thread.start()
            time.sleep(0.3)
        assert db.is_serving() and db.list_collections() == ["g"]  # the event loop still answers
        with pytest.raises(lamina.ResourceExhausted, match="embedding queue is full"):
            col.add([5], ["e"])
        gate.release.set()
        for thread in blocked:
            thread.join(10)
        assert col.count() == 4
        db.close()
    finally:
        gate.release.set()
        srv.stop()


# ---------------------------------------------------------------- one engine per directory
def test_connect_twice_in_one_process_shares_the_engine(tmp_path: Path) -> None:
    first = lamina.connect(str(tmp_path))
    second = lamina.connect(str(tmp_path))
    col = first.create_collection("c", dim=2)
    col.upsert([1], np.ones((1, 2)))
    assert second.get_collection("c").count() == 1
    first.close()
    with pytest.raises(lamina.FailedPrecondition, match="closed"):
        first.list_collections()
    assert second.get_collection("c").count() == 1  # the other client keeps working
    second.close()
    from lamina.engine.database import Database

    Database(tmp_path).close()  # the last close released the directory


def test_another_process_holding_the_directory_is_named(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, lamina; db = lamina.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(
            lamina.FailedPrecondition, match=f"in use by another Lamina process \\(pid {holder.pid}\\)"
        ):
            lamina.connect(str(tmp_path))
    finally:
        holder.communicate("", timeout=30)
    assert os.path.exists(tmp_path / "LOCK")
