"""Hybrid filtered queries: payload indexes against a brute-force reference evaluator,
the selectivity planner's recall and plans, explain, BM25 and fusion, index lifecycle
(created late, carried through sealing and compaction, loaded at restart without a
rebuild) and the errors filters and text queries give."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamina
from lamina.engine.database import Database
from lamina.engine.payload import FieldIndex
from lamina.errors import InvalidArgument
from lamina.types import CollectionConfig, SearchParams
from tests.reference import ref_match

DIM = 16
N = 900
SCHEMA = {
    "kw": "keyword",
    "tags": "keyword",
    "n": "int",
    "f": "float",
    "b": "bool",
    "d": "datetime",
    "body": "text",
    "meta.src": "keyword",
}
DATES = {f for f, kind in SCHEMA.items() if kind == "datetime"}  # compared as instants
LANGS = ["en", "de", "fr", "it"]
WORDS = ["vector", "search", "binary", "quantization", "graph", "filter", "rocks", "kernel"]


# ---------------------------------------------------------------- data
def make_payload(rng: np.random.Generator, i: int) -> dict[str, Any]:
    p: dict[str, Any] = {}
    r = rng.random(12)
    if r[0] < 0.9:
        p["kw"] = str(rng.choice(LANGS)) if r[1] > 0.03 else 7  # an odd value now and then
    if r[2] < 0.7:
        p["tags"] = [str(t) for t in rng.choice(LANGS, int(rng.integers(0, 3)), replace=False)]
    if r[3] < 0.85:
        p["n"] = int(rng.integers(-5, 20)) if r[4] > 0.03 else "many"
    if r[5] < 0.85:
        p["f"] = round(float(rng.uniform(0, 100)), 2) if r[6] > 0.05 else [1.5, float(rng.uniform(0, 100))]
    if r[7] < 0.8:
        p["b"] = bool(rng.random() < 0.5) if r[8] > 0.03 else 1
    if r[9] < 0.85:
        month = int(rng.integers(1, 13))
        p["d"] = (
            f"2024-{month:02d}-{int(rng.integers(1, 28)):02d}T10:00:00Z"
            if r[10] > 0.2
            else (datetime(2024, month, 3, tzinfo=UTC).timestamp() if r[10] > 0.05 else "soon")
        )
    p["body"] = " ".join(str(w) for w in rng.choice(WORDS, int(rng.integers(1, 6))))
    p["meta"] = {"src": str(rng.choice(["web", "pdf"]))} if r[11] < 0.7 else {"other": 1}
    p["u"] = int(rng.integers(0, 4)) if rng.random() < 0.8 else str(rng.choice(["x", "y"]))
    return p


def vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class World:
    """A collection with sealed segments, tombstones and a mutable tail, and its model."""

    def __init__(self, path: Path) -> None:
        self.db = Database(str(path))
        config = CollectionConfig(
            dim=DIM,
            metric="cosine",
            index={"type": "hnsw", "m": 8, "ef_construction": 64},  # type: ignore[arg-type]
            segment_rows=300,
            payload_index=dict(SCHEMA),
        )
        self.col = self.db.create_collection("w", config)
        rng = np.random.default_rng(5)
        self.vecs = vectors(N + 100, 6)
        self.payloads = {i: make_payload(rng, i) for i in range(N + 100)}
        for lo in range(0, N, 150):
            ids = list(range(lo, lo + 150))
            self.col.upsert(ids, self.vecs[lo : lo + 150], [self.payloads[i] for i in ids])
        self.col.optimize()
        gone = [int(i) for i in rng.choice(N, 120, replace=False)]
        self.col.delete(ids=gone)  # tombstones in sealed segments (some compacted)
        for i in gone[:40]:  # re-upsert some with new payloads: new rows, old ones dead
            self.payloads[i] = make_payload(rng, i)
        for i in gone[40:]:
            del self.payloads[i]
        self.col.upsert(gone[:40], self.vecs[gone[:40]], [self.payloads[i] for i in gone[:40]])
        tail = list(range(N, N + 100))  # the mutable segment
        self.col.upsert(tail, self.vecs[N:], [self.payloads[i] for i in tail])

    def expected(self, flt: dict[str, Any]) -> set[int]:
        return {i for i, p in self.payloads.items() if ref_match(flt, p, DATES)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("hybrid"))
    yield w
    w.db.close()


# ---------------------------------------------------------------- random filters
_scalars = {
    "kw": st.sampled_from([*LANGS, "xx"]),
    "tags": st.sampled_from(LANGS),
    "n": st.integers(-6, 21),
    "f": st.floats(-1, 101, allow_nan=False).map(lambda x: round(x, 1)),
    "b": st.booleans(),
    "d": st.sampled_from(
        ["2024-03-01", "2024-06-15T00:00:00Z", "2024-09-30T23:00:00+02:00", 1717200000, 1704067200.5]
    ),
    "meta.src": st.sampled_from(["web", "pdf", "doc"]),
    "u": st.one_of(st.integers(0, 4), st.sampled_from(["x", "y"])),
    "body": st.sampled_from(["vector search", "graph"]),
}
_ranged = {"n", "f", "d", "u"}


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(_scalars)))
    value = _scalars[name]
    ops = ["$eq", "$ne", "$in", "$nin", "$exists", "plain", "$not"] + (
        ["$gt", "$gte", "$lt", "$lte", "range"] if name in _ranged else []
    )
    op = draw(st.sampled_from(ops))
    if op == "plain":
        return {name: draw(value)}
    if op in ("$in", "$nin"):
        return {name: {op: draw(st.lists(value, min_size=1, max_size=3))}}
    if op == "$exists":
        return {name: {op: draw(st.booleans())}}
    if op == "$not":
        return {name: {"$not": {"$eq": draw(value)}}}
    if op == "range":
        lo, hi = draw(value), draw(value)
        return {name: {"$gte": lo, "$lt": hi}}
    return {name: {op: draw(value)}}


filters = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$nor": fs}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda f: {"$not": f}, inner),
        st.builds(lambda a, b: {**a, **b}, inner, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flt=filters)
def test_indexed_filters_equal_reference_evaluator(world: World, flt: dict[str, Any]) -> None:
    """Exact search, count and delete-free matching all agree with the brute-force
    reference, through payload indexes, odd values, tombstones and the mutable segment."""
    expected = world.expected(flt)
    hits = world.col.search(
        world.vecs[0], k=N + 100, filter=flt, with_payload=False, params=SearchParams(exact=True)
    )
    assert {h.id for h in hits} == expected
    assert world.col.count(flt) == len(expected)
    planned = world.col.search(world.vecs[1], k=10, filter=flt, with_payload=False)
    assert {h.id for h in planned} <= expected
    assert len(planned) == min(10, len(expected))


def test_index_answers_without_reading_payloads(world: World) -> None:
    """A filter on indexed fields needs no payload read: the index decides every row
    (both filters use operands the property test cannot draw, so no cached result helps)."""
    reads = 0
    store = world.col._store
    original = store.payloads_of

    def counting(rows: Any) -> Any:
        nonlocal reads
        reads += len(rows)
        return original(rows)

    store.payloads_of = counting  # type: ignore[method-assign]
    try:
        world.col.count({"$and": [{"meta.src": "web"}, {"n": {"$gte": 3.5, "$lt": 9}}, {"b": True}]})
        indexed_reads = reads
        world.col.count({"u": {"$in": [2, 99]}})  # values the property test never draws: not cached
        unindexed_reads = reads - indexed_reads
    finally:
        store.payloads_of = original  # type: ignore[method-assign]
    odd_n = sum(1 for p in world.payloads.values() if "n" in p and not isinstance(p["n"], int))
    assert indexed_reads <= odd_n + 5  # only rows with odd values are checked on payloads
    assert unindexed_reads >= len(world.payloads) - 5


# ---------------------------------------------------------------- planner
def labelled(path: Path, n: int = 6000, segment_rows: int = 3000) -> tuple[Database, Any, np.ndarray]:
    db = Database(str(path))
    config = CollectionConfig(
        dim=DIM,
        index={"type": "hnsw", "m": 12, "ef_construction": 100},  # type: ignore[arg-type]
        segment_rows=segment_rows,
        max_segment_rows=segment_rows,  # no merges: plans are made per segment, over two
        payload_index={"sel": "int", "label": "float"},
    )
    col = db.create_collection("p", config)
    data = vectors(n, 11)
    rng = np.random.default_rng(3)
    pays = [{"sel": int(rng.integers(0, 1000)), "label": float(rng.uniform(0, 1))} for _ in range(n)]
    col.upsert(list(range(n)), data, pays)
    col.optimize()
    return db, col, data


@pytest.mark.parametrize("plan", ["auto", "allow_list", "exact"])
@pytest.mark.parametrize("selectivity", [0.5, 0.05, 0.005])
def test_planner_recall_at_every_selectivity(tmp_path: Path, plan: str, selectivity: float) -> None:
    db, col, _ = labelled(tmp_path)
    try:
        flt = {"sel": {"$lt": int(1000 * selectivity)}}
        queries = vectors(20, 12)
        recalls = []
        for q in queries:
            truth = {h.id for h in col.search(q, k=10, filter=flt, params=SearchParams(exact=True))}
            got = {h.id for h in col.search(q, k=10, filter=flt, params=SearchParams(plan=plan))}
            recalls.append(len(got & truth) / len(truth))
        assert np.mean(recalls) >= 0.95
    finally:
        db.close()


def test_explain_names_plan_and_reason(tmp_path: Path) -> None:
    db, col, data = labelled(tmp_path)
    try:
        narrow = col.explain(data[0], k=10, filter={"sel": {"$lt": 5}})
        assert [s.method for s in narrow.segments[:-1]] == ["exact", "exact"]
        assert all(s.matches < 30 for s in narrow.segments)
        assert "matching rows cost less" in narrow.segments[0].reason
        broad = col.explain(data[0], k=10, filter={"label": {"$gte": 0.2}})
        assert {s.method for s in broad.segments[:-1]} == {"hnsw+widened"}
        assert broad.indexed_fields == ["label"] and broad.unindexed_fields == []
        post = col.explain(
            data[0], k=10, filter={"label": {"$gte": 0.2}}, params=SearchParams(plan="post_filter")
        )
        assert {s.method for s in post.segments[:-1]} == {"hnsw+post-filter"}
        assert narrow.segments[-1].segment == "mutable"
    finally:
        db.close()


def test_post_filter_loses_recall_the_planner_keeps(tmp_path: Path) -> None:
    """Why the planner exists: plain post-filtering collapses on a narrow filter."""
    db, col, _ = labelled(tmp_path)
    try:
        flt = {"sel": {"$lt": 10}}  # 1%
        found_post, found_auto = 0, 0
        for q in vectors(20, 13):
            found_post += len(col.search(q, k=10, filter=flt, params=SearchParams(plan="post_filter")))
            found_auto += len(col.search(q, k=10, filter=flt))
        assert found_auto == 200
        assert found_post < 100
    finally:
        db.close()


# ---------------------------------------------------------------- lifecycle
def test_index_created_late_is_built_in_background_and_survives_restart(tmp_path: Path) -> None:
    db = Database(str(tmp_path))
    col = db.create_collection("late", CollectionConfig(dim=DIM, segment_rows=256, index={"type": "flat"}))  # type: ignore[arg-type]
    data = vectors(800, 1)
    col.upsert(list(range(800)), data, [{"year": 2000 + i % 30, "lang": LANGS[i % 4]} for i in range(800)])
    col.optimize()
    assert col.create_payload_index("year", "int") is True
    assert col.create_payload_index("year", "int") is False
    with pytest.raises(InvalidArgument, match="already has a int index"):
        col.create_payload_index("year", "keyword")
    col.optimize()
    segments = list(next(tmp_path.rglob("late")).joinpath("segments").iterdir())
    assert segments and all(any(f.name.startswith("pidx-") for f in s.iterdir()) for s in segments)
    expected = sum(1 for i in range(800) if 2000 + i % 30 >= 2020)
    assert col.count({"year": {"$gte": 2020}}) == expected
    stamps = {f: f.stat().st_mtime_ns for s in segments for f in s.iterdir() if f.name.startswith("pidx-")}
    db.close()
    db = Database(str(tmp_path))
    col = db.get_collection("late")
    assert col.config.payload_index == {"year": "int"}
    assert col.count({"year": {"$gte": 2020}}) == expected
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # loaded, not rebuilt
    assert col.drop_payload_index("year") is True
    assert not any(f.exists() for f in stamps)
    assert col.count({"year": {"$gte": 2020}}) == expected  # exact without the index
    db.close()


def test_field_index_merge_and_select_keep_entries() -> None:
    rows = list(range(10))
    pays = [{"t": ["a", "b"][i % 2], "x": i} for i in rows]
    a = FieldIndex.build("keyword", ("t",), rows[:5], pays[:5])
    b = FieldIndex.build("keyword", ("t",), rows[5:], pays[5:])
    merged = FieldIndex.merge([a, b])
    assert sorted(merged.equal(["a"]).tolist()) == [0, 2, 4, 6, 8]
    picked = FieldIndex.select([merged], np.array([2, 3, 8]))
    assert sorted(picked.equal(["a"]).tolist()) == [0, 2] and picked.equal(["b"]).tolist() == [1]
    nums = FieldIndex.build("float", ("x",), rows, pays)
    assert sorted(nums.between(2, True, 5, False).tolist()) == [2, 3, 4]


# ---------------------------------------------------------------- text and fusion
def bm25_reference(docs: dict[int, str], query: str) -> dict[int, float]:
    tokens = {i: re.findall(r"\w+", text.lower()) for i, text in docs.items()}
    n = len(tokens)
    avgdl = sum(len(t) for t in tokens.values()) / n
    scores: dict[int, float] = {}
    for term in dict.fromkeys(re.findall(r"\w+", query.lower())):
        df = sum(1 for t in tokens.values() if term in t)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, t in tokens.items():
            tf = t.count(term)
            if tf:
                scores[i] = scores.get(i, 0.0) + idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(t) / avgdl))
    return scores


@pytest.fixture
def texts(db: lamina.Client) -> tuple[lamina.Collection, dict[int, str], np.ndarray]:
    col = db.create_collection(
        "docs", DIM, segment_rows=256, payload_index={"body": "text", "lang": "keyword"}
    )
    rng = np.random.default_rng(8)
    docs = {i: " ".join(str(w) for w in rng.choice(WORDS, int(rng.integers(2, 9)))) for i in range(600)}
    data = vectors(600, 9)
    col.upsert(list(docs), data, [{"body": docs[i], "lang": LANGS[i % 4]} for i in docs])
    col.optimize()
    return col, docs, data


def test_bm25_matches_reference_scores(texts: tuple[lamina.Collection, dict[int, str], np.ndarray]) -> None:
    col, docs, _ = texts
    ref = bm25_reference(docs, "Binary quantization")
    hits = col.query(text="Binary quantization", k=20)
    best = sorted(ref.values(), reverse=True)[:20]
    assert [round(h.score, 3) for h in hits] == [round(s, 3) for s in best]
    assert all(abs(ref[int(h.id)] - h.score) < 1e-3 for h in hits)


def test_filters_apply_to_both_sides_of_a_hybrid_query(
    texts: tuple[lamina.Collection, dict[int, str], np.ndarray],
) -> None:
    col, docs, data = texts
    hits = col.query(vector=data[3], text="graph kernel", k=15, filter={"lang": "de"})
    assert len(hits) == 15 and all(h.payload is not None and h.payload["lang"] == "de" for h in hits)
    only_text = col.query(text="graph kernel", k=5, filter={"lang": "de"})
    matching = {i for i, doc in docs.items() if i % 4 == 1 and {"graph", "kernel"} & set(doc.split())}
    assert len(matching) > 5 and len(only_text) == 5  # not vacuous: five hits out of many candidates
    assert {int(h.id) for h in only_text} <= matching


def test_rrf_fuses_dense_and_text_rankings(
    texts: tuple[lamina.Collection, dict[int, str], np.ndarray],
) -> None:
    col, _, data = texts
    depth = 50
    dense = [h.id for h in col.search(data[7], k=depth)]
    text = [h.id for h in col.query(text="vector search", k=depth)]
    fused: dict[Any, float] = {}
    for ranking in (dense, text):
        for rank, pid in enumerate(ranking, start=1):
            fused[pid] = fused.get(pid, 0.0) + 1 / (60 + rank)
    expected = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    hits = col.query(vector=data[7], text="vector search", k=10)
    assert [round(h.score, 6) for h in hits] == [round(s, 6) for _, s in expected]
    weighted = col.query(vector=data[7], text="vector search", k=10, fusion="weighted", weights=[1.0, 0.0])
    assert [h.id for h in weighted] == dense[:10]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"lang": 5}, r"filter at lang: field 'lang' has a keyword index, so compare it with a string"),
        (
            {"$or": [{"year": {"$gte": "soon"}}]},
            r"filter at \$or\[0\]\.year\.\$gte: field 'year' has a int index",
        ),
        (
            {"when": {"$lt": "yesterday"}},
            r"field 'when' has a datetime index, so compare it with an ISO 8601",
        ),
        ({"ok": {"$gt": 1}}, r"field 'ok' has a bool index; \$gt compares numbers or dates"),
        ({"$and": [{"lnag": "en"}]}, r"filter at \$and\[0\]\.lnag: unknown field 'lnag'"),
        ({"lang": {"$in": "en"}}, r"\$in takes a list of values"),
    ],
)
def test_bad_filters_name_the_offending_path(db: lamina.Client, flt: dict[str, Any], message: str) -> None:
    col = db.create_collection(
        "typed", DIM, payload_index={"lang": "keyword", "year": "int", "when": "datetime", "ok": "bool"}
    )
    col.upsert([1], vectors(1, 0), [{"lang": "en", "year": 2020, "other": 1}])
    for call in (lambda: col.search(vectors(1, 1)[0], filter=flt), lambda: col.count(flt)):
        with pytest.raises(InvalidArgument, match=message):
            call()
    assert col.count({"missing": {"$exists": False}}) == 1  # $exists may ask about any field


def test_bad_index_and_query_arguments(db: lamina.Client) -> None:
    col = db.create_collection("q", DIM, payload_index={"lang": "keyword"})
    col.upsert([1], vectors(1, 0), [{"lang": "en", "body": "x"}])
    with pytest.raises(InvalidArgument, match="unknown payload index type 'string'"):
        col.create_payload_index("body", "string")
    with pytest.raises(InvalidArgument, match="unknown payload index type"):
        db.create_collection("q2", DIM, payload_index={"a": "geo"})
    with pytest.raises(InvalidArgument, match=r"create_payload_index\(field, 'text'\)"):
        col.query(text="x")
    with pytest.raises(InvalidArgument, match="query needs a vector, a text or both"):
        col.query()
    with pytest.raises(InvalidArgument, match="unknown fusion 'max'"):
        col.query(vector=vectors(1, 0)[0], fusion="max")
    with pytest.raises(InvalidArgument, match="weights must be two non-negative numbers"):
        col.query(vector=vectors(1, 0)[0], weights=[1.0, -1.0])
    with pytest.raises(InvalidArgument, match="unknown plan 'fast'"):
        col.search(vectors(1, 0)[0], filter={"lang": "en"}, plan="fast")
    assert col.count() == 1 and col.info().config.payload_index == {"lang": "keyword"}


def test_payload_index_visible_and_explain_over_both_transports(db: lamina.Client) -> None:
    col = db.create_collection(
        "vis", DIM, segment_rows=256, max_segment_rows=256, payload_index={"lang": "keyword"}
    )  # no merges: two sealed segments, each planned
    data = vectors(600, 4)
    col.upsert(list(range(600)), data, [{"lang": LANGS[i % 4], "n": i} for i in range(600)])
    col.optimize()
    assert col.create_payload_index("n", "int") is True
    assert db.get_collection("vis").config.payload_index == {"lang": "keyword", "n": "int"}
    col.optimize()
    plan = col.explain(data[0], k=5, filter={"n": {"$lt": 20}})
    assert plan.hits == 5 and plan.indexed_fields == ["n"]
    assert [s.method for s in plan.segments[:-1]] == ["exact", "skip", "skip"]
    assert sum(s.matches for s in plan.segments) == 20
    assert all(s.seconds > 0 for s in plan.segments)  # each segment's time, carried over gRPC too
    assert sum(s.seconds for s in plan.segments) <= plan.seconds
    assert col.drop_payload_index("n") is True and col.drop_payload_index("n") is False


def test_allow_list_walk_on_a_later_segment_returns_its_own_points(tmp_path: Path) -> None:
    """hnswlib's filtered walk over a few allowed nodes of the second segment (rows that
    do not start at 0): every hit is a matching point, whichever way the walk ends."""
    db, col, data = labelled(tmp_path)
    try:
        flt = {"sel": {"$lt": 2}}  # about 12 of 6,000 points: the top 20 is all of them
        expected = {h.id for h in col.search(data[0], k=20, filter=flt, params=SearchParams(exact=True))}
        assert any(i >= 3000 for i in expected) and len(expected) < 20  # matches in the second segment
        for q in vectors(10, 14):
            got = {h.id for h in col.search(q, k=20, filter=flt, params=SearchParams(plan="allow_list"))}
            assert got == expected
    finally:
        db.close()
