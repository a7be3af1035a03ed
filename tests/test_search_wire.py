"""Search answers on the wire: ``SearchResponse.packed`` (parallel arrays of ids, scores and
payloads) for a client that sets ``packed_hits``, a message per hit otherwise, and the SDK
reading either form into the same hits as the engine's."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

import lamina
from lamina.client.transport import GrpcRequests
from lamina.config import DEFAULT_LIMITS
from lamina.proto import convert
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.proto.lamina.v1 import search_pb2_grpc as sgrpc
from lamina.types import Hit
from tests.conftest import ServerThread

DIM = 16
ROWS = 300


@pytest.fixture(params=[False, True], ids=["aio", "sync"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> ServerThread:
    """A server (both server models) with ``num`` (numeric ids, payloads on even rows) and
    ``str`` (string ids) collections of the same random vectors."""
    srv = ServerThread(tmp_path / "data", sync_server=request.param)
    vectors = np.random.default_rng(5).standard_normal((ROWS, DIM)).astype(np.float32)
    with lamina.connect(srv.address) as client:
        num = client.create_collection("num", dim=DIM)
        num.upsert(list(range(ROWS)), vectors, [{"i": i} if i % 2 == 0 else None for i in range(ROWS)])
        named = client.create_collection("str", dim=DIM)
        named.upsert([f"p{i}" for i in range(ROWS)], vectors)
    yield srv
    srv.stop()


def queries() -> np.ndarray:
    return np.random.default_rng(6).standard_normal((5, DIM)).astype(np.float32)


def test_packed_answers_for_clients_that_ask_and_messages_for_the_others(served: ServerThread) -> None:
    """A request without packed_hits (an older client) gets a message per hit; with it, the
    same hits as parallel arrays; string ids and vectors still come as messages."""
    with grpc.insecure_channel(served.address) as channel:
        search = sgrpc.SearchStub(channel).Search
        for query in queries():
            for with_payload in (False, True):
                request = spb.SearchRequest(
                    collection="num", vector=query.tobytes(), k=7, with_payload=with_payload
                )
                old = search(request, timeout=30)
                assert len(old.hits) == 7 and not old.packed.ids
                request.packed_hits = True
                new = search(request, timeout=30)
                assert not new.hits
                assert list(new.packed.ids) == [h.id.num for h in old.hits]
                assert list(new.packed.scores) == [h.score for h in old.hits]
                if with_payload:  # one per hit
                    assert list(new.packed.payloads_json) == [h.payload_json.encode() for h in old.hits]
                    assert any(b'"i"' in blob for blob in new.packed.payloads_json)
                else:
                    assert not new.packed.payloads_json
            named = search(
                spb.SearchRequest(collection="str", vector=query.tobytes(), k=7, packed_hits=True), timeout=30
            )
            assert [h.id.str for h in named.hits][:1] == [f"p{old.hits[0].id.num}"] and not named.packed.ids
            with_vector = search(
                spb.SearchRequest(
                    collection="num", vector=query.tobytes(), k=3, with_vector=True, packed_hits=True
                ),
                timeout=30,
            )
            assert len(with_vector.hits) == 3 and len(with_vector.hits[0].vector) == 4 * DIM


def test_the_sdk_asks_for_packed_hits_and_reads_what_the_engine_answers(served: ServerThread) -> None:
    """The SDK's search sets packed_hits, and its hits over gRPC are the engine's own: ids,
    scores and payloads (``{}`` for a point without one), numeric and string ids alike."""
    call = GrpcRequests(served.address, DEFAULT_LIMITS).search(
        "num", queries()[0], 5, None, False, False, None, None
    )
    assert call.request.packed_hits
    with lamina.connect(served.address) as client:
        for name in ("num", "str"):
            remote = client.get_collection(name)
            engine = served.db.get_collection(name)
            for query in queries():
                for with_payload in (False, True):
                    got = remote.search(query, k=8, with_payload=with_payload)
                    want = engine.search(query, 8, with_payload=with_payload)
                    assert [h.id for h in got] == [h.id for h in want]
                    assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-6)
                    if with_payload:
                        assert [h.payload for h in got] == [h.payload or {} for h in want]
                    else:
                        assert all(h.payload is None for h in got)


def test_either_form_of_an_answer_reads_as_the_same_hits() -> None:
    """What an older server sends (a message per hit) and a packed answer decode alike."""
    hits = [
        Hit(id=7, score=0.75, payload={"a": 1}),
        Hit(id=2**63 + 5, score=-1.5, payload=None),
        Hit(id=0, score=0.25, payload={"b": [1, 2]}),
    ]
    for with_payload in (False, True):
        old, new = spb.SearchResponse(), spb.SearchResponse()
        convert.hits_to_response(hits, old, with_payload=with_payload)
        convert.hits_to_response(hits, new, packed=True, with_payload=with_payload)
        assert len(old.hits) == 3 and list(new.packed.ids) == [7, 2**63 + 5, 0]
        want = [Hit(h.id, h.score, (h.payload or {}) if with_payload else None) for h in hits]
        for response in (old, new):
            wire = spb.SearchResponse.FromString(response.SerializeToString())
            assert convert.hits_from_response(wire, False, with_payload) == want
    empty = spb.SearchResponse()
    convert.hits_to_response([], empty, packed=True)
    assert convert.hits_from_response(empty, False, True) == []


def test_query_answers_packed_hits_too(served: ServerThread) -> None:
    """Query (hybrid; a vector alone here) answers packed to a client that asks, a message per
    hit otherwise, and the SDK's ``query`` reads the engine's hits with their payloads."""
    query = queries()[1]
    with grpc.insecure_channel(served.address) as channel:
        search = sgrpc.SearchStub(channel).Query
        request = spb.QueryRequest(collection="num", vector=query.tobytes(), k=6, with_payload=True)
        old = search(request, timeout=30)
        request.packed_hits = True
        new = search(request, timeout=30)
    assert len(old.hits) == 6 and not old.packed.ids and not new.hits
    assert list(new.packed.ids) == [h.id.num for h in old.hits]
    assert list(new.packed.scores) == [h.score for h in old.hits]
    with lamina.connect(served.address) as client:
        got = client.get_collection("num").query(vector=query, k=6)
    want = served.db.get_collection("num").query(vector=query, k=6)
    assert [(h.id, h.payload) for h in got] == [(h.id, h.payload or {}) for h in want]
