"""The plain search (engine/reads.py ``Reads._plain``: no filter, tenant or vectors back) answers
exactly what the general path answers, over sealed HNSW segments (integer and string ids), a
mutable tail, deletes and upserts, for every metric, with and without payloads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import lamina
from lamina.engine.collection import Collection

DIM = 24
K = 10


def _engine(db: lamina.Client, name: str) -> Collection:
    return db._transport.db.get_collection(name)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_plain_search_answers_what_the_general_path_answers(tmp_path: Path, metric: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((1_600, DIM)).astype(np.float32)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection(
            "c",
            dim=DIM,
            metric=metric,
            index={"type": "hnsw", "m": 8, "ef_construction": 64},
            segment_rows=256,
            max_segment_rows=256,  # no merges: several segments
        )  # type: ignore[arg-type]
        ints = list(range(800))
        col.upsert(ints, data[:800], [{"n": i} for i in ints])
        col.optimize()
        names = [f"s{i}" for i in range(800, 1_400)]  # string ids: a segment with keys.bin
        col.upsert(names, data[800:1_400], [{"n": i} for i in range(800, 1_400)])
        col.optimize()
        engine = _engine(db, "c")
        assert len(engine._segments) >= 2
        tail = list(range(1_400, 1_600))  # left in the mutable segment
        col.upsert(tail, data[1_400:], [{"n": i} for i in tail])
        assert engine._next_row - engine._mut_start == 200
        deleted = [3, 5, "s801", 1_401, 1_402]
        col.delete(ids=deleted)
        moved = {7: data[1_500] + 0.01, "s900": data[20] - 0.01}  # upserts that leave sealed rows behind
        col.upsert(list(moved), np.stack(list(moved.values())), [{"moved": True}] * 2)

        queries = np.concatenate([rng.standard_normal((20, DIM)), data[[7, 20, 1_500, 1_401, 3]]])
        queries = queries.astype(np.float32)
        alive = {i: data[i] for i in range(1_600)}
        for i in (3, 5, 801, 1_401, 1_402, 7, 900):
            del alive[i]
        for q in queries:
            for with_payload in (False, True):
                plain = engine._plain(q, K, with_payload, None)
                assert plain is not None  # the plain path answered, not the general one
                general, _ = engine.search_explained(q, K, None, with_payload, False, None)
                assert [(h.id, h.score, h.payload) for h in plain] == [
                    (h.id, h.score, h.payload) for h in general
                ]
                assert col.search(q, k=K, with_payload=with_payload) == plain  # through the SDK
                assert not set(deleted) & {h.id for h in plain}
            exact = [h.id for h in col.search(q, k=K, exact=True, with_payload=False)]
            assert len(set(exact) & {h.id for h in plain}) >= K - 2  # recall against the exact scan
        # the moved points are found at their new vectors (next to the points they copy), with
        # their new payloads
        for pid, vector in moved.items():
            near = {h.id: h.payload for h in col.search(vector, k=2)}
            assert near.get(pid) == {"moved": True}, (pid, near)


def test_plain_search_refuses_what_the_general_path_refuses(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=4)
        col.upsert([1], [[1, 0, 0, 0]])
        engine = _engine(db, "c")
        for bad in (np.zeros(4, np.float32), np.array([1, np.nan, 0, 0], np.float32), np.ones(5, np.float32)):
            assert engine._plain(bad, 3, False, None) is None  # left to the general path's checks
            with pytest.raises(lamina.InvalidArgument):
                engine.search(bad, 3)
        assert engine._plain(np.ones(4, np.float32), 0, False, None) is None
        assert engine._plain(np.ones(4, np.float32), True, False, None) is None  # a bool is not a k


def test_plain_search_under_concurrent_upserts_never_misses_or_repeats(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.standard_normal((600, DIM)).astype(np.float32)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection(
            "c", dim=DIM, index={"type": "hnsw", "m": 8}, segment_rows=256, max_segment_rows=256
        )
        col.upsert(list(range(600)), data)
        col.optimize()
        stop = threading.Event()

        def rewrite() -> None:  # the same points written again and again: rows move under the search
            while not stop.is_set():
                col.upsert(list(range(0, 600, 7)), data[0:600:7])

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            for i in range(0, 600, 7):
                hits = col.search(data[i], k=K, with_payload=False)
                assert hits[0].id == i  # the point itself, wherever its row is now
                assert len({h.id for h in hits}) == len(hits) == K
        finally:
            stop.set()
            writer.join()


def test_searches_leave_a_core_to_searches_while_an_index_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build asks for its threads before each chunk: every core while nobody searches, one
    fewer once searches (plain or filtered) are being served."""
    monkeypatch.delenv("LAMINA_BUILD_THREADS", raising=False)
    monkeypatch.setattr("lamina.engine.optimizer.build.usable_cores", lambda: 4)
    rng = np.random.default_rng(5)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=DIM, segment_rows=256)
        col.upsert(list(range(300)), rng.standard_normal((300, DIM)).astype(np.float32))
        col.optimize()
        engine = _engine(db, "c")
        assert engine._build_threads() == 4  # nobody searched yet
        col.search(rng.standard_normal(DIM).astype(np.float32), k=K, with_payload=False)
        assert engine._build_threads() == 3
