"""The mutable tail during an ingest (engine/state.py, engine/topk.py, engine/optimizer/seal.py):
a large tail is searched by its binary codes with an exact rerank, close to the exact scan;
points written are found at once and deleted points never, on the plain and the general path;
the tail grows and seals with its rows copied outside the lock, and no write is lost to it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

import lamina
from lamina.engine.collection import Collection
from lamina.engine.state import coded_tail_rows

DIM = 48
K = 10


def _engine(db: lamina.Client, name: str) -> Collection:
    return db._transport.db.get_collection(name)  # type: ignore[attr-defined, no-any-return]


def _data(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Points near a few hundred centres (neighbourhoods like embeddings', not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim))
    return (centres[rng.integers(0, 300, n)] + 0.35 * rng.standard_normal((n, dim))).astype(np.float32)


def _found(col: lamina.Collection, vector: np.ndarray, point: int) -> bool:
    """Whether a search for ``vector`` finds ``point`` first: by the index (whose graphs are
    approximate, so a miss is asked again exactly, which reads each row's stored vector)."""
    return any(col.search(vector, 1, with_payload=False, exact=e)[0].id == point for e in (False, True))


def test_a_large_tail_is_searched_by_codes_close_to_exact(tmp_path: Path) -> None:
    data = _data(12_000, 1)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=DIM, metric="cosine", segment_rows=50_000)
        col.upsert(list(range(10_000)), data[:10_000], [{"even": i % 2 == 0} for i in range(10_000)])
        engine = _engine(db, "c")
        assert engine._segments == [] and engine._thresholds is not None  # one coded tail
        queries = data[10_000:10_040]
        plain, filtered, exact, exact_even = [], [], [], []
        for q in queries:
            plain.append({h.id for h in col.search(q, K, with_payload=False)})
            exact.append({h.id for h in col.search(q, K, with_payload=False, exact=True)})
            filtered.append({h.id for h in col.search(q, K, filter={"even": True}, with_payload=False)})
            exact_even.append(
                {h.id for h in col.search(q, K, filter={"even": True}, with_payload=False, exact=True)}
            )
        recall = np.mean([len(a & b) / K for a, b in zip(plain, exact, strict=True)])
        recall_even = np.mean([len(a & b) / K for a, b in zip(filtered, exact_even, strict=True)])
        assert recall >= 0.9, recall
        assert recall_even >= 0.9, recall_even
        assert all(i % 2 == 0 for ids in filtered for i in ids)  # type: ignore[operator]
        plan = col.explain(queries[0], K, filter={"even": True})
        assert [p.method for p in plan.segments if p.segment == "mutable"] == ["binary+rerank"]

        # written: found at once by its own vector; deleted: never returned
        fresh = data[10_100:10_150]
        col.upsert(list(range(20_000, 20_050)), fresh)
        for i, q in enumerate(fresh):
            assert col.search(q, 1, with_payload=False)[0].id == 20_000 + i
        gone = [h.id for q in queries[:20] for h in col.search(q, K, with_payload=False)]
        col.delete(ids=gone)
        for q in queries[:20]:
            assert not {h.id for h in col.search(q, K, with_payload=False)} & set(gone)
            assert not {h.id for h in col.search(q, K, filter={"even": True}, with_payload=False)} & set(gone)


def test_a_small_tail_stays_exact(tmp_path: Path) -> None:
    data = _data(coded_tail_rows(DIM) - 100, 2)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=DIM, segment_rows=50_000)
        col.upsert(list(range(data.shape[0])), data)
        assert _engine(db, "c")._thresholds is None
        for q in data[:30]:
            got = [h.id for h in col.search(q, K, with_payload=False)]
            assert got == [h.id for h in col.search(q, K, with_payload=False, exact=True)]


def test_a_tail_of_two_thousand_wide_rows_is_already_coded(tmp_path: Path) -> None:
    """Codes pay from a few times the rerank's 400 candidates (a live collection's tail between
    seals: 2,000 x 384 rows exactly 103 us a query, by codes 54 us): a 2,000-row tail of 384-d
    points is scanned by its codes, and finds what the exact scan finds; one of 48-d points
    (cheap to scan, its 48 bits tell neighbours apart badly) stays exact."""
    wide = _data(2_040, 5, dim=384)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=384, segment_rows=50_000)
        col.upsert(list(range(2_000)), wide[:2_000], [{"even": i % 2 == 0} for i in range(2_000)])
        assert _engine(db, "c")._thresholds is not None
        plan = col.explain(wide[2_000], K, filter={"even": True})  # a plan lists segments when filtered
        assert [p.method for p in plan.segments if p.segment == "mutable"] == ["binary+rerank"]
        recall = np.mean(
            [
                len(
                    {h.id for h in col.search(q, K, with_payload=False)}
                    & {h.id for h in col.search(q, K, with_payload=False, exact=True)}
                )
                / K
                for q in wide[2_000:]
            ]
        )
        assert recall >= 0.95, recall
        narrow = db.create_collection("n", dim=DIM, segment_rows=50_000)
        narrow.upsert(list(range(2_000)), _data(2_000, 6), [{"even": i % 2 == 0} for i in range(2_000)])
        assert _engine(db, "n")._thresholds is None
        plan = narrow.explain(_data(1, 7)[0], K, filter={"even": True})
        assert [p.method for p in plan.segments if p.segment == "mutable"] == ["exact"]


def test_a_coded_tail_of_look_alike_rows_still_finds_a_fresh_point(tmp_path: Path) -> None:
    """Codes that cannot tell the rows apart (thousands of identical vectors: every code alike)
    would pick the rerank's candidates at random among them; the tail is then scanned exactly,
    and a point written last is found by its own vector."""
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=384, metric="l2", segment_rows=50_000)
        col.upsert(list(range(3_000)), np.full((3_000, 384), 2.0, np.float32))
        assert _engine(db, "c")._thresholds is not None  # coded
        col.upsert([5_000], np.ones((1, 384), np.float32))
        assert [h.id for h in col.search(np.ones(384, np.float32), k=1, with_payload=False)] == [5_000]


def test_writes_racing_tail_growth_and_seals_are_found_at_once(tmp_path: Path) -> None:
    """Three writers (batches of different sizes) grow the tail (copied into larger arrays without the lock, the rows the
    other wrote meanwhile under it) while the optimizer seals it (the rest copied without the
    lock too); every acknowledged point is found by the next search, by a concurrent reader
    too, and after a reopen."""
    data = _data(24_000, 3)
    half = data.shape[0] // 3  # a third per writer
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection(
            "c", dim=DIM, index={"type": "hnsw", "m": 8, "ef_construction": 32}, segment_rows=6_000
        )  # type: ignore[arg-type]
        engine = _engine(db, "c")
        acked = [0, half, 2 * half]
        stop = threading.Event()
        misses: list[int] = []
        changes = {"grows": 0, "seals": 0}

        def read() -> None:
            rng = np.random.default_rng(4)
            while not stop.is_set():
                for lo, done in ((0, acked[0]), (half, acked[1]), (2 * half, acked[2])):
                    if done > lo:
                        i = int(rng.integers(lo, done))
                        if not _found(col, data[i], i):
                            misses.append(i)

        def write(lo: int) -> None:
            step = (200, 25, 40)[lo // half]  # a small batch fits while a large one grows the tail
            for at in range(lo, lo + half, step):
                capacity, start = engine._matrix.shape[0], engine._mut_start
                col.upsert(list(range(at, at + step)), data[at : at + step])
                changes["grows"] += engine._matrix.shape[0] > capacity and engine._mut_start == start
                acked[lo // half] = at + step
                for i in (at, at + step // 2, at + step - 1):
                    if not _found(col, data[i], i):
                        misses.append(i)

        threads = [threading.Thread(target=read)] + [
            threading.Thread(target=write, args=(lo,)) for lo in (0, half, 2 * half)
        ]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
        stop.set()
        threads[0].join()
        changes["seals"] = engine._mut_start  # rows sealed while they wrote
        assert changes["grows"] and changes["seals"], changes
        assert misses == []
        assert col.count() == data.shape[0]
        col.optimize()
        for i in range(0, data.shape[0], 97):
            assert col.search(data[i], 1, with_payload=False, exact=True)[0].id == i
    with lamina.connect(str(tmp_path)) as db:
        col = db.get_collection("c")
        assert col.count() == data.shape[0]
        for i in range(0, data.shape[0], 97):  # each row's vector is its point's (the graph is approximate)
            assert col.search(data[i], 1, with_payload=False, exact=True)[0].id == i
