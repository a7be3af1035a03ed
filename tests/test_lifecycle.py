"""The segment lifecycle: a small mutable tail sealed quickly, sealed segments merged in the
background by growing the largest HNSW graph (engine/optimizer/build.py), and every
guarantee kept through merges: recall, filters, deletes and upserts racing a merge,
leftovers of an interrupted merge, the settings' validation."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lamina
from lamina.engine.check import check_data_directory
from lamina.errors import InvalidArgument
from lamina.storage.rocks import CollectionStore
from lamina.types import CollectionConfig

DIM = 24


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    data = rng.standard_normal((n, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


class Events(logging.Handler):
    """The optimizer's log lines as they are written, with an event per awaited prefix."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.seen: dict[str, threading.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        for prefix, event in self.seen.items():
            if line.startswith(prefix):
                event.set()

    def wait_for(self, prefix: str) -> threading.Event:
        return self.seen.setdefault(prefix, threading.Event())


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("lamina.engine")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_merges_grow_one_graph_with_recall_filters_and_explain(tmp_path: Path, events: Events) -> None:
    rng = np.random.default_rng(3)
    data = unit(rng, 6_000)
    with lamina.connect(str(tmp_path / "db")) as db:
        col = db.create_collection("c", DIM, segment_rows=256, payload_index={"g": "int"})
        for lo in range(0, 6_000, 500):  # a stream of writes: many seals of a few hundred rows
            col.upsert(
                list(range(lo, lo + 500)), data[lo : lo + 500], [{"g": i % 7} for i in range(lo, lo + 500)]
            )
            col.optimize()
        info = col.info()
        # 23 seals of 256 rows and more; merges grew them into one or two graphs, not 23
        assert info.status.indexed_points == 6_000 and info.status.mutable_points == 0
        assert 1 <= info.status.segments <= 2, info.status
        assert any(line.startswith("grew segment") for line in events.lines)  # grown, not rebuilt
        truth = np.argsort(-(data[:100] @ data.T), axis=1)[:, :10]
        found = [[h.id for h in col.search(q, 10, ef=64)] for q in data[:100]]
        assert (
            np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.95
        )
        assert col.count({"g": 3}) == len([i for i in range(6_000) if i % 7 == 3])
        allowed = np.flatnonzero(np.arange(6_000) % 7 == 3)
        best = allowed[np.argsort(-(data[allowed] @ data[11]))[:5]]
        assert [h.id for h in col.search(data[11], 5, {"g": 3}, exact=True)] == best.tolist()
        plan = col.explain(data[11], k=5, filter={"g": 3})
        assert len(plan.segments) == info.status.segments + 1  # every sealed segment, then the mutable one
        assert all(s.matches for s in plan.segments[:-1])
    report = check_data_directory(tmp_path / "db", deep=True)  # `lamina check --deep`
    assert report.problems == [] and "6,000 ids" in report.checked[0], report


def test_deletes_upserts_and_snapshots_racing_merges_never_bring_a_point_back(
    tmp_path: Path, events: Events
) -> None:
    rng = np.random.default_rng(5)
    data = unit(rng, 12_000)
    fresh = unit(rng, 12_000)  # the vectors upserts replace points with
    with lamina.connect(str(tmp_path / "db")) as db:
        col = db.create_collection("c", DIM, segment_rows=1_000)
        col.upsert(list(range(8_000)), data[:8_000])
        col.optimize()  # one segment of 8,000 rows, grown seal by seal
        assert col.info().status.segments == 1
        deleted: set[int] = set()
        replaced: set[int] = set()
        raced = 0  # rounds whose delete was acknowledged while the seal or merge still built
        # (snapshot, deleted, replaced, points) taken in each round, while its seal or merge built
        snapshots: list[tuple[lamina.SnapshotInfo, set[int], set[int], int]] = []
        for round_, lo in enumerate(range(8_000, 12_000, 1_000)):
            started = events.wait_for("merging " if round_ % 2 else "sealing ")
            started.clear()
            col.upsert(list(range(lo, lo + 1_000)), data[lo : lo + 1_000])  # wakes the optimizer
            done = threading.Thread(target=col.optimize)
            done.start()
            assert started.wait(60)
            # while the merge or seal builds: delete and replace points of the segment it
            # grows, of the rows it inserts, and rows sealed before
            victims = [int(x) for x in rng.choice(lo + 1_000, 60, replace=False)]
            gone, again = victims[:30], victims[30:]
            col.delete(gone)
            # a snapshot taken while the build runs holds the state of this moment
            snapshots.append((col.snapshot(), deleted | set(gone), replaced - set(gone), lo + 1_000))
            began = max(i for i, line in enumerate(events.lines) if line.startswith(("sealing ", "merging ")))
            raced += not any(line.startswith(("grew segment", "built ")) for line in events.lines[began:])
            col.upsert(again, fresh[again])
            deleted |= set(gone)
            replaced = (replaced | set(again)) - set(gone)
            deleted -= set(again)
            done.join(120)
            assert not done.is_alive()
        assert any(line.startswith("merging ") for line in events.lines)
        assert raced >= 2, events.lines
        check_model(col, data, fresh, deleted, replaced, 12_000)
    with lamina.connect(str(tmp_path / "db")) as db:  # the dead rows are durable too
        check_model(db.get_collection("c"), data, fresh, deleted, replaced, 12_000)
    for i, (snap, gone_then, replaced_then, n_then) in enumerate(snapshots):
        lamina.restore_snapshot(snap.path, tmp_path / f"restored-{i}")
        with lamina.connect(str(tmp_path / f"restored-{i}")) as db:
            check_model(db.get_collection("c"), data, fresh, gone_then, replaced_then, n_then)


def check_model(
    col: lamina.Collection, data: np.ndarray, fresh: np.ndarray, deleted: set[int], replaced: set[int], n: int
) -> None:
    assert col.count() == n - len(deleted)
    assert col.get(sorted(deleted)) == []
    for pid in sorted(deleted)[:40]:  # its old vector finds it nowhere, exactly or through the graphs
        for params in ({"exact": True}, {"ef": 128}):
            assert pid not in {h.id for h in col.search(data[pid], 10, **params)}
    for pid in sorted(replaced)[:40]:  # found by its new vector, with the new vector
        hits = col.search(fresh[pid], 1, with_vector=True)
        assert hits[0].id == pid and np.allclose(hits[0].vector, fresh[pid], atol=1e-6)


def test_an_uncommitted_merge_leaves_the_old_segments_in_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    data = unit(rng, 3_000)
    with lamina.connect(str(tmp_path / "db")) as db:
        col = db.create_collection("c", DIM, segment_rows=1_000)
        col.upsert(list(range(3_000)), data)
        col.optimize()
        before = col.info().status
    folders = tmp_path / "db"
    segments = [p for p in folders.rglob("segments/*") if p.is_dir()]
    assert len(segments) == before.segments
    # what a crash in the middle of a merge leaves: a finished folder the manifest does not
    # name, and a half-written one
    shutil.copytree(segments[0], segments[0].with_name("000000000000-deadbeef"))
    shutil.copytree(segments[0], segments[0].with_name("000000000000-cafef00d.tmp"))
    with lamina.connect(str(tmp_path / "db")) as db:
        col = db.get_collection("c")
        col.optimize()  # the scrub that follows an open may still be running: wait for it
        assert col.info().status == before
        assert sorted(p.name for p in segments[0].parent.iterdir()) == sorted(s.name for s in segments)
        assert [h.id for h in col.search(data[7], 1)] == [7]


def test_sealed_vectors_are_stored_once_and_read_back_bit_for_bit(tmp_path: Path) -> None:
    """A seal drops its rows' vectors from RocksDB in the batch that commits the segment:
    the segment's graph file holds the one copy (no vectors.f32 beside an HNSW graph). A
    cosine segment gives a stored vector back as unit vector x scale, bit for bit; the rows
    for which no scale does (vectors far from unit length) keep theirs in RocksDB."""
    rng = np.random.default_rng(5)
    n = 6_000
    data = unit(rng, n)
    scaled = np.arange(n) % 3 == 0  # a third far from unit length
    data[scaled] *= rng.uniform(0.1, 40, int(scaled.sum()))[:, None].astype(np.float32)
    with lamina.connect(str(tmp_path / "db")) as db:
        for name, metric in (("cos", "cosine"), ("l2", "l2")):
            col = db.create_collection(name, DIM, metric=metric, segment_rows=1_000)
            col.upsert(list(range(n)), data)
            col.optimize()
            col.upsert(list(range(n, n + 50)), data[:50])  # an unsealed tail keeps its vectors in RocksDB
            col.delete([1, 2, 3])
    for name in ("cos", "l2"):
        folder = tmp_path / "db" / "collections" / name
        segments = [p for p in (folder / "segments").iterdir()]
        assert segments and all(not (p / "vectors.f32").exists() for p in segments)
        store = CollectionStore(folder, read_only=True)
        try:
            in_rocks = {row for row, _ in store.scan_vectors(0)}
            mut_start = max(int(np.load(p / "rows.npy")[-1]) for p in segments) + 1
        finally:
            store.close()
        sealed_in_rocks = {r for r in in_rocks if r < mut_start}
        assert {r for r in in_rocks if r >= mut_start} == set(range(n, n + 50))
        if name == "l2":
            assert sealed_in_rocks == set()
        else:  # rows are numbered in id order here: row r is point r
            assert sealed_in_rocks <= set(np.flatnonzero(scaled).tolist())
            assert len(sealed_in_rocks) > scaled.sum() // 2  # most far from unit length stay
    with lamina.connect(str(tmp_path / "db")) as db:
        for name in ("cos", "l2"):
            col = db.get_collection(name)
            got = {p.id: p.vector.tobytes() for p in col.get(list(range(n + 50)))}  # type: ignore[union-attr]
            assert len(got) == n + 47
            assert all(got[i] == data[i if i < n else i - n].tobytes() for i in got)
            hits = col.search(data[7], 3, with_vector=True)
            assert hits[0].id == 7 and hits[0].vector.tobytes() == data[7].tobytes()  # type: ignore[union-attr]
            page, _ = col.scroll(limit=500, offset=4_000, with_vector=True)
            assert [p.vector.tobytes() for p in page] == [data[p.id].tobytes() for p in page]  # type: ignore[union-attr, index]
    assert not check_data_directory(tmp_path / "db", deep=True).problems


def test_segment_size_settings_are_validated_by_name() -> None:
    with pytest.raises(
        InvalidArgument, match=r"max_segment_rows \(500\) must be at least segment_rows \(1000\)"
    ):
        CollectionConfig(dim=8, segment_rows=1_000, max_segment_rows=500)
    with pytest.raises(InvalidArgument, match="collection max_segment_rows must be an integer"):
        CollectionConfig(dim=8, max_segment_rows=0)
    with pytest.raises(InvalidArgument, match="collection segment_rows must be an integer"):
        CollectionConfig(dim=8, segment_rows=10)
    # the mutable tail is bounded in bytes as well as rows: 4096-d vectors seal at 4,096 rows
    assert CollectionConfig(dim=4096).seal_rows == 4_096
    assert CollectionConfig(dim=384).seal_rows == CollectionConfig(dim=384).segment_rows == 20_000
    restored = CollectionConfig.from_dict(
        CollectionConfig(dim=8, segment_rows=1_000, max_segment_rows=5_000).to_dict()
    )
    assert restored.max_segment_rows == 5_000
    # a collection created before the setting, with larger segments than its default, opens
    old = {"dim": 8, "segment_rows": 3_000_000}
    assert CollectionConfig.from_dict(old).max_segment_rows == 3_000_000
