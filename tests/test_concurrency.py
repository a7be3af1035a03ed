"""Readers run while writers write: no search misses a point acknowledged before it
began, and none returns a point whose delete was acknowledged before it began."""

from __future__ import annotations

import threading
import time

import numpy as np

import lamina

DIM = 32


def test_reads_see_acknowledged_writes_and_deletes(db: lamina.Client) -> None:
    col = db.create_collection("live", dim=DIM, metric="cosine")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, DIM)).astype(np.float32)
    acked: list[int] = []  # ids whose upsert returned
    deleted: set[int] = set()  # ids whose delete returned
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

    def deleter() -> None:
        while time.monotonic() < stop:
            with lock:
                victims = [i for i in acked[::13] if i not in deleted][:5]
            if victims:
                col.delete(ids=victims)
                with lock:
                    deleted.update(victims)
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
            if target not in gone:
                assert hits[0].id == target, f"acknowledged point {target} missing"
            assert not gone & {h.id for h in hits}, "a deleted point came back"
            assert len(col.search_batch(vectors[:10], k=3)) == 10

    def guard(fn, *args):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)

        return threading.Thread(target=run)

    threads = [guard(writer, 0), guard(writer, 100), guard(deleter), guard(reader, 1), guard(reader, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert col.count() == len(set(acked) - deleted)
    assert {p.id for p in col.get(sorted(deleted))} == set()
