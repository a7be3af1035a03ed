"""The plain search (engine/plain.py ``PlainSearch._plain``: no filter, tenant or vectors back) answers
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


def test_searches_do_not_wait_for_a_writer_inside_its_durable_write(tmp_path: Path) -> None:
    """An upsert (or a delete) holds the collection lock across its RocksDB write and fsync.
    A writer held inside that write (the store's real ``after_write`` hook, called once the
    batch is durable) does not hold up searches, plain or general (filtered, exact): they answer
    from the state before the write, and see it the moment it returns."""
    rng = np.random.default_rng(9)
    data = rng.standard_normal((400, DIM)).astype(np.float32)
    pays = [{"n": i} for i in range(400)]
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=DIM, index={"type": "hnsw", "m": 8}, segment_rows=10_000)
        col.upsert(list(range(200)), data[:200], pays[:200])
        col.optimize()
        col.upsert(list(range(200, 300)), data[200:300], pays[200:300])  # an unsealed tail too
        store = _engine(db, "c")._store
        inside, go = threading.Event(), threading.Event()

        def stall(rows: object) -> None:
            inside.set()
            go.wait(300)

        def top(i: int, **how: object) -> object:
            return col.search(data[i], k=1, with_payload=False, **how)[0].id  # type: ignore[arg-type]

        counts: list[int] = []  # hits of searches for the points a delete drops, while it runs

        def searched_meanwhile(write: threading.Thread, points: range) -> list[list[object]]:
            """Searches (plain, filtered, exact) of ``points`` while ``write`` is stalled."""
            answers: list[list[object]] = []
            inside.clear()
            go.clear()
            store.after_write = stall
            write.start()
            assert inside.wait(60)
            dropped = [  # they may wait for the delete; never a hit short
                threading.Thread(
                    target=lambda w=w: counts.extend(
                        len(col.search(data[i], k=1, with_payload=w)) for i in range(200, 300, 2)
                    )
                )
                for w in (False, True)
            ]
            for t in dropped:
                t.start()
            search = threading.Thread(
                target=lambda: answers.extend(
                    [top(i), top(i, filter={"n": {"$lt": 1_000}}), top(i, exact=True)] for i in points
                )
            )
            search.start()
            search.join(120)  # they finish while the writer is held (a bound for the failure only)
            waited = search.is_alive()
            store.after_write = None
            go.set()
            write.join()
            search.join()
            for t in dropped:
                t.join()
            assert not waited, "searches waited for a writer inside its RocksDB write"
            return answers

        upsert = threading.Thread(target=col.upsert, args=(list(range(300, 400)), data[300:], pays[300:]))
        during = searched_meanwhile(upsert, range(400))
        assert all(a == [i] * 3 for i, a in enumerate(during[:300]))  # graphs of 200: exact enough
        assert all(i not in a for i, a in enumerate(during[300:], 300))  # not acknowledged yet
        assert all(top(i) == top(i, exact=True) == i for i in range(300, 400))  # acknowledged: seen
        delete = threading.Thread(target=col.delete, args=(list(range(0, 400, 2)),))
        # (a search whose hits include a row the delete drops waits for it: see engine.state.Vanished)
        during = searched_meanwhile(delete, range(1, 400, 2))
        assert all(a == [i] * 3 for i, a in zip(range(1, 400, 2), during, strict=True))
        assert counts == [1] * 200  # a search reading a row being dropped runs again (Vanished)
        for i in range(400):  # deleted: gone at once; the rest still there
            assert (top(i) == i) == (top(i, exact=True) == i) == (i % 2 == 1)


def test_each_write_and_delete_is_seen_by_the_next_search_while_seals_run(tmp_path: Path) -> None:
    """Writers upsert and delete while the optimizer seals and grows segments under them;
    each thread checks, the moment its call returns, that its points are found and its
    deleted points are not, on the plain path and the general (exact) one."""
    rng = np.random.default_rng(11)
    data = rng.standard_normal((3_000, DIM)).astype(np.float32)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection(
            "c", dim=DIM, index={"type": "hnsw", "m": 8, "ef_construction": 32}, segment_rows=300
        )
        engine = _engine(db, "c")
        wrong: list[str] = []

        def work(lo: int) -> None:
            try:
                write_and_delete(lo)
            except Exception as exc:  # a search a hit short raises IndexError here
                wrong.append(repr(exc))

        def write_and_delete(lo: int) -> None:
            for at in range(lo, lo + 1_500, 50):
                col.upsert(list(range(at, at + 50)), data[at : at + 50])
                for i in (at, at + 25, at + 49):
                    if i not in (col.search(data[i], k=1, with_payload=False)[0].id, top_exact(i)):
                        wrong.append(f"{i} written, not found")
                col.delete(list(range(at, at + 50, 5)))
                for i in (at, at + 25):
                    if i in (col.search(data[i], k=1, with_payload=False)[0].id, top_exact(i)):
                        wrong.append(f"{i} deleted, found")

        def top_exact(i: int) -> object:
            return col.search(data[i], k=1, with_payload=False, exact=True)[0].id

        threads = [threading.Thread(target=work, args=(lo,)) for lo in (0, 1_500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wrong == []
        assert engine._mut_start > 0  # seals ran while they wrote
        assert col.count() == 3_000 - 600
