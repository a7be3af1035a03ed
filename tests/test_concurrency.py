"""Readers run while writers write, segments are sealed and compacted: no search misses a
point acknowledged before it began, and none returns a point whose delete was
acknowledged before it began."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import lamina

DIM = 32


@pytest.mark.parametrize("segment_rows", [100_000, 300], ids=["mutable", "sealing"])
def test_reads_see_acknowledged_writes_and_deletes(db: lamina.Client, segment_rows: int) -> None:
    # with 300-row segments the optimizer seals, indexes (HNSW) and compacts throughout the run
    col = db.create_collection("live", dim=DIM, metric="cosine", segment_rows=segment_rows)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, DIM)).astype(np.float32)
    acked: list[int] = []  # ids whose upsert returned
    deleted: set[int] = set()  # ids whose delete returned
    doomed: set[int] = set()  # ids whose delete was sent (a search running meanwhile may miss them)
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0

    def writer(start: int) -> None:
        for lo in range(start, 4000, 200):
            if time.monotonic() > stop:
                return
            ids = list(range(lo, lo + 100))
            col.upsert(ids, vectors[lo : lo + 100], [{"w": start}] * 100)
            with lock:
                acked.extend(ids)

    def mutator() -> None:
        """Deletes some points and re-upserts others (same vector, new payload: a tombstone
        in a sealed segment, which compaction later rewrites); optimizes now and then."""
        r = np.random.default_rng(3)
        rounds = 0
        while time.monotonic() < stop:
            with lock:
                victims = [i for i in acked[::13] if i not in deleted][:5]
                alive = [i for i in acked if i not in deleted]
                doomed.update(victims)
            if victims:
                col.delete(ids=victims)
                with lock:
                    deleted.update(victims)
            if len(alive) > 50:
                again = sorted({alive[int(j)] for j in r.integers(0, len(alive), 40)} - set(victims))
                col.upsert(again, vectors[again], [{"again": rounds}] * len(again))
            rounds += 1
            if rounds % 20 == 0:
                col.optimize(timeout=1.0)
            time.sleep(0.01)

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while time.monotonic() < stop:
            with lock:
                if not acked:
                    continue
                target = acked[int(r.integers(len(acked)))]
                gone = set(deleted)
            hits = col.search(vectors[target], k=5, with_payload=False)
            with lock:
                racing_delete = target in doomed  # doomed only grows: checked after the search
            if not racing_delete:
                assert hits[0].id == target, f"acknowledged point {target} missing"
            assert not gone & {h.id for h in hits}, "a deleted point came back"
            assert len(col.search_batch(vectors[:10], k=3)) == 10
            # describing the collection must not fail while compaction removes segment folders,
            # and its count holds every point acknowledged before it and not deleted by its end,
            # and no more than were written (plus the two writers' batches in flight)
            with lock:
                before = set(acked)
            info = col.info()
            with lock:
                floor = len(before - doomed)
                ceiling = len(set(acked)) + 200
            assert floor <= info.count <= ceiling, (floor, info.count, ceiling)

    def guard(fn, *args):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)

        return threading.Thread(target=run)

    threads = [guard(writer, 0), guard(writer, 100), guard(mutator), guard(reader, 1), guard(reader, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert col.count() == len(set(acked) - deleted)
    assert {p.id for p in col.get(sorted(deleted))} == set()
