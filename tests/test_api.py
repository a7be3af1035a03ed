"""The public API, run against both transports (the ``db`` fixture)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lamina
from lamina import Hit

DIM = 16


def snapshot(col: lamina.Collection) -> list[tuple[Any, bytes, Any]]:
    """Every point (id, vector bytes, payload), in id order."""
    out: list[tuple[Any, bytes, Any]] = []
    offset = None
    while True:
        points, offset = col.scroll(limit=1000, offset=offset, with_vector=True)
        out.extend((p.id, p.vector.tobytes(), p.payload) for p in points)  # type: ignore[union-attr]
        if offset is None:
            return out


def exact_order(data: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """numpy reference: row indices best first."""
    if metric == "cosine":
        scores = (data / np.linalg.norm(data, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
        return np.argsort(-scores, kind="stable")
    if metric == "dot":
        return np.argsort(-(data @ query), kind="stable")
    return np.argsort(((data - query) ** 2).sum(1), kind="stable")


@pytest.fixture
def col(db: lamina.Client) -> lamina.Collection:
    c = db.create_collection("docs", dim=DIM, metric="cosine")
    rng = np.random.default_rng(7)
    c.upsert(
        ids=list(range(100)),
        vectors=rng.standard_normal((100, DIM)).astype(np.float32),
        payloads=[
            {"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 25, "tags": [f"t{i % 5}"]}
            for i in range(100)
        ],
    )
    return c


def test_issue_example_runs(db: lamina.Client) -> None:
    col = db.create_collection("docs", dim=384, metric="cosine")
    col.upsert(
        ids=[1, 2],
        vectors=np.random.rand(2, 384).astype("float32"),
        payloads=[{"lang": "en", "year": 2021}, {"lang": "de", "year": 2019}],
    )
    hits = col.search(np.random.rand(384), k=10, filter={"lang": "en", "year": {"$gte": 2020}})
    assert [h.id for h in hits] == [1]
    assert hits[0].payload == {"lang": "en", "year": 2021}
    assert isinstance(hits[0].score, float)
    batch = col.search_batch(np.random.rand(5, 384), k=10)
    assert len(batch) == 5 and all(len(hits) == 2 for hits in batch)
    assert [p.id for p in col.get([1, 2])] == [1, 2]
    assert col.count() == 2 and col.count(filter={"lang": "de"}) == 1
    assert col.delete(ids=[2]) == 1
    assert col.delete(filter={"year": {"$lt": 2000}}) == 0
    assert db.list_collections() == ["docs"]
    assert db.get_collection("docs").dim == 384
    db.delete_collection("docs")
    assert db.list_collections() == []


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_search_returns_exact_nearest_best_first(db: lamina.Client, metric: str) -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((500, DIM)).astype(np.float32)
    col = db.create_collection(f"m-{metric}", dim=DIM, metric=metric)  # type: ignore[arg-type]
    col.upsert(ids=list(range(500)), vectors=data)
    queries = rng.standard_normal((8, DIM)).astype(np.float32)
    for query, hits in zip(queries, col.search_batch(queries, k=10), strict=True):
        assert [h.id for h in hits] == exact_order(data, query, metric)[:10].tolist()
        assert [h.id for h in col.search(query, k=10)] == [h.id for h in hits]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=metric != "l2")
    best = col.search(queries[0], k=1)[0]
    row = data[best.id]
    expected = {
        "cosine": row @ queries[0] / np.linalg.norm(row) / np.linalg.norm(queries[0]),
        "dot": row @ queries[0],
        "l2": np.linalg.norm(row - queries[0]),
    }[metric]
    assert best.score == pytest.approx(float(expected), rel=1e-4, abs=1e-4)


def test_search_k_larger_than_collection_returns_all(col: lamina.Collection) -> None:
    assert len(col.search(np.ones(DIM), k=1000)) == 100


def test_search_params_are_checked_on_every_call_though_built_once(col: lamina.Collection) -> None:
    """The SDK reuses the SearchParams of arguments it has seen (client/ops.py ``_params``):
    the same answers, and a bad argument equal to a good one seen before (ef=True after ef=1,
    ef=1.0) is still refused as it was the first time."""
    query = np.ones(DIM, np.float32)
    first = col.search(query, k=5, ef=1)
    assert col.search(query, k=5, ef=1) == first
    assert col.search(query, k=5, ef=64) == col.search(query, k=5, ef=64, plan="auto")
    for bad in (
        {"ef": True},
        {"ef": 1.0},
        {"ef": 0},
        {"ef": "64"},
        {"ef": [64]},
        {"oversample": float("nan")},
        {"plan": "fast"},
    ):
        for _ in range(2):  # refused again, not remembered
            with pytest.raises(lamina.InvalidArgument):
                col.search(query, k=5, **bad)
    assert col.search(query, k=5, ef=1) == first


def test_search_with_vector_and_without_payload(col: lamina.Collection) -> None:
    hit = col.search(np.ones(DIM), k=1, with_vector=True, with_payload=False)[0]
    assert hit.payload is None
    stored = col.get([hit.id])[0]
    assert hit.vector is not None and np.array_equal(hit.vector, stored.vector)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"lang": "en"}, lambda i, p: p["lang"] == "en"),
        ({"lang": {"$ne": "en"}}, lambda i, p: p["lang"] != "en"),
        ({"lang": {"$in": ["de", "fr"]}}, lambda i, p: p["lang"] in ("de", "fr")),
        ({"lang": {"$nin": ["de", "fr"]}}, lambda i, p: p["lang"] not in ("de", "fr")),
        ({"year": {"$gt": 2010, "$lte": 2020}}, lambda i, p: 2010 < p["year"] <= 2020),
        ({"year": {"$gte": 2010, "$lt": 2012}}, lambda i, p: 2010 <= p["year"] < 2012),
        ({"tags": "t1"}, lambda i, p: "t1" in p["tags"]),
        ({"missing": {"$exists": False}}, lambda i, p: True),
        ({"lang": {"$exists": True}, "year": 2003}, lambda i, p: p["year"] == 2003),
        (
            {"$or": [{"lang": "en"}, {"year": {"$lt": 2003}}]},
            lambda i, p: p["lang"] == "en" or p["year"] < 2003,
        ),
        (
            {"$and": [{"lang": "en"}, {"year": {"$lt": 2010}}]},
            lambda i, p: p["lang"] == "en" and p["year"] < 2010,
        ),
        ({"$not": {"lang": "en"}}, lambda i, p: p["lang"] != "en"),
        ({"year": {"$not": {"$gte": 2005}}}, lambda i, p: p["year"] < 2005),
        ({"year": {"$eq": 2024}}, lambda i, p: p["year"] == 2024),
    ],
)
def test_filters_match_reference(col: lamina.Collection, flt: dict[str, Any], expected: Any) -> None:
    payloads = {p.id: p.payload for p in col.get(list(range(100)), with_vector=False)}
    want = {i for i, p in payloads.items() if expected(i, p)}
    assert col.count(filter=flt) == len(want)
    hits = col.search(np.ones(DIM), k=100, filter=flt)
    assert {h.id for h in hits} == want
    points, _ = col.scroll(limit=100, filter=flt)
    assert {p.id for p in points} == want


def test_string_and_integer_ids(db: lamina.Client) -> None:
    col = db.create_collection("ids", dim=4)
    big = 2**64 - 1
    col.upsert(ids=["a", big, 0, "ünïcode-✓"], vectors=np.eye(4, dtype=np.float32))
    assert {p.id for p in col.get(["a", big, 0, "ünïcode-✓", "nope", 5])} == {"a", big, 0, "ünïcode-✓"}
    assert col.search([0, 1, 0, 0], k=1)[0].id == big
    assert [p.id for p in col.scroll(limit=10)[0]] == [0, big, "a", "ünïcode-✓"]


def test_upsert_replaces_whole_point(db: lamina.Client) -> None:
    col = db.create_collection("r", dim=4)
    col.upsert([1], [[1, 0, 0, 0]], [{"v": 1}])
    col.upsert([1], [[0, 1, 0, 0]], [{"v": 2}])
    assert col.count() == 1
    point = col.get([1])[0]
    assert point.payload == {"v": 2} and point.vector.tolist() == [0, 1, 0, 0]  # type: ignore[union-attr]
    assert [h.id for h in col.search([1, 0, 0, 0], k=5)] == [1]
    assert col.search([0, 1, 0, 0], k=1)[0].score == pytest.approx(1.0)


def test_get_keeps_requested_order_and_skips_missing(col: lamina.Collection) -> None:
    assert [p.id for p in col.get([42, 999, 3, 7])] == [42, 3, 7]
    assert col.get([3], with_vector=False)[0].vector is None


def test_scroll_pages_through_everything_once(col: lamina.Collection) -> None:
    seen: list[Any] = []
    offset = None
    while True:
        page, offset = col.scroll(limit=7, offset=offset)
        seen.extend(p.id for p in page)
        if offset is None:
            break
    assert seen == list(range(100))


def test_delete_by_ids_and_filter(col: lamina.Collection) -> None:
    assert col.delete(ids=[1, 2, 2, 1000]) == 2
    assert col.count() == 98
    assert col.delete(filter={"lang": "en"}) == sum(1 for i in range(100) if i % 3 == 0 and i not in (1, 2))
    assert col.count(filter={"lang": "en"}) == 0
    assert all(h.payload["lang"] != "en" for h in col.search(np.ones(DIM), k=100))  # type: ignore[index]
    assert col.get([1, 2, 0]) == []


def test_collections_lifecycle(db: lamina.Client) -> None:
    db.create_collection("b", dim=3, metric="l2")
    db.create_collection("a", dim=5, metric="dot")
    assert db.list_collections() == ["a", "b"]
    infos = {i.name: i for i in db.collections_info()}
    assert (infos["a"].dim, infos["a"].metric, infos["b"].metric) == (5, "dot", "l2")
    db.delete_collection("a")
    assert db.list_collections() == ["b"]
    with pytest.raises(lamina.NotFound):
        db.get_collection("a")
    assert db.create_collection("a", dim=7).dim == 7  # the name is free again, with new settings
    assert db.get_or_create_collection("a", dim=7).count() == 0


def test_hits_are_plain_python(col: lamina.Collection) -> None:
    hit = col.search(np.ones(DIM), k=1)[0]
    assert isinstance(hit, Hit) and isinstance(hit.id, int) and isinstance(hit.payload, dict)
