"""Acknowledged writes survive close, reopen and ``kill -9`` of the server."""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lamina
from lamina.cli import build_parser
from lamina.engine.database import Database
from lamina.serving import server_config
from tests.conftest import ServerProcess, ServerThread
from tests.test_api import snapshot

DIM = 24


def write_workload(col: lamina.Collection, seed: int) -> dict[Any, tuple[bytes, Any]]:
    """Upserts, replacements and deletes; returns the expected final state."""
    rng = np.random.default_rng(seed)
    expected: dict[Any, tuple[bytes, Any]] = {}
    for batch in range(6):
        ids: list[Any] = [batch * 50 + i for i in range(50)]
        ids[::7] = [f"doc-{batch}-{i}" for i in range(len(ids[::7]))]
        vectors = rng.standard_normal((50, DIM)).astype(np.float32)
        payloads = [{"batch": batch, "i": i, "nested": {"tags": ["a", "b"], "x": 1.5}} for i in range(50)]
        col.upsert(ids, vectors, payloads)
        for pid, vec, pay in zip(ids, vectors, payloads, strict=True):
            expected[pid] = (vec.tobytes(), pay)
    replaced = rng.standard_normal((10, DIM)).astype(np.float32)
    col.upsert(list(range(1, 11)), replaced, [{"replaced": True}] * 10)
    for i in range(10):
        expected[i + 1] = (replaced[i].tobytes(), {"replaced": True})
    col.delete(ids=[20, 22, "doc-0-0"])
    for pid in (20, 22, "doc-0-0"):
        expected.pop(pid)
    deleted = col.delete(filter={"batch": 5})
    gone = [pid for pid, (_, pay) in expected.items() if pay.get("batch") == 5]
    assert deleted == len(gone)
    for pid in gone:
        expected.pop(pid)
    return expected


def assert_state(col: lamina.Collection, expected: dict[Any, tuple[bytes, Any]]) -> None:
    got = {pid: (vec, pay) for pid, vec, pay in snapshot(col)}
    assert got == expected
    assert col.count() == len(expected)
    # the search matrix was rebuilt too: every point finds itself first
    sample = list(expected)[:: max(1, len(expected) // 20)]
    for pid in sample:
        query = np.frombuffer(expected[pid][0], dtype=np.float32)
        assert col.search(query, k=1)[0].id == pid


def test_reopen_gives_back_every_collection_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lamina.connect(str(data)) as db:
        col = db.create_collection("a", dim=DIM, metric="cosine")
        expected = write_workload(col, seed=1)
        db.create_collection("b", dim=3, metric="l2").upsert(["x"], [[1.0, 2.0, 3.0]], [{"k": "v"}])
        db.create_collection("gone", dim=2).upsert([1], [[1.0, 1.0]])
        db.delete_collection("gone")
    with lamina.connect(str(data)) as db:
        assert db.list_collections() == ["a", "b"]
        col = db.get_collection("a")
        assert (col.dim, col.metric) == (DIM, "cosine")
        assert_state(col, expected)
        b = db.get_collection("b")
        assert b.metric == "l2" and b.get(["x"])[0].payload == {"k": "v"}
        # writes continue after reopen without reusing rows
        col.upsert([10_000], np.ones((1, DIM)), [{"after": "reopen"}])
        assert col.count() == len(expected) + 1


def test_data_directory_is_locked_while_open(tmp_path: Path) -> None:
    # lamina.connect shares one engine per directory (tests/test_embedding.py); a second
    # engine over the same directory is refused
    with Database(tmp_path), pytest.raises(lamina.FailedPrecondition, match="already open in this process"):
        Database(tmp_path)


def test_unusable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(lamina.FailedPrecondition, match="cannot use"):
        lamina.connect(str(blocker))
    with lamina.connect(str(tmp_path / "data")) as db:
        db.create_collection("good", dim=2)
    stray = tmp_path / "data" / "collections" / "stray"
    stray.mkdir()
    with pytest.raises(lamina.FailedPrecondition, match="no Lamina collection"):
        lamina.connect(str(tmp_path / "data"))
    assert list(stray.iterdir()) == []  # nothing was created in the stray folder
    stray.rmdir()
    with lamina.connect(str(tmp_path / "data")) as db:  # the failed open released the lock
        assert db.list_collections() == ["good"]


def test_acknowledged_writes_survive_kill_9(tmp_path: Path, server_process: type[ServerProcess]) -> None:
    """With --no-sync-writes: kill -9 keeps the OS page cache, so the WAL alone carries every
    acknowledged write across it (what the default fsync adds is checked by the test below)."""
    data = tmp_path / "data"
    proc = server_process(data, "--no-sync-writes")
    with lamina.connect(proc.address) as db:
        col = db.create_collection("docs", dim=DIM, metric="dot")
        expected = write_workload(col, seed=2)
    proc.kill()  # SIGKILL: no shutdown, no flush
    assert proc.proc.returncode == -signal.SIGKILL
    with lamina.connect(str(data)) as db:
        assert_state(db.get_collection("docs"), expected)
    restarted = server_process(data)
    with lamina.connect(restarted.address) as db:
        assert_state(db.get_collection("docs"), expected)


def _wal_counts(db: Database, name: str) -> tuple[int, int]:
    """(WAL writes, WAL syncs) RocksDB counted for the collection since it was opened."""
    stats = db.get_collection(name)._store._db.property_value("rocksdb.dbstats") or ""
    found = re.search(r"Cumulative WAL: (\d+) writes, (\d+) syncs", stats)
    assert found, stats
    return int(found[1]), int(found[2])


@pytest.mark.parametrize(
    ("flags", "sync_writes"), [([], True), (["--sync-writes"], True), (["--no-sync-writes"], False)]
)
def test_sync_writes_fsyncs_the_log_before_each_reply(
    tmp_path: Path, flags: list[str], sync_writes: bool
) -> None:
    """`lamina serve` (by default, or with --sync-writes) reaches RocksDB: by the time the
    client holds the reply to a write, its write-ahead log record has been synced (RocksDB
    counts WAL syncs in its DB stats; a kill -9 cannot tell, as the OS page cache survives
    it). With --no-sync-writes the log is written but never synced per write."""
    args = build_parser().parse_args(["serve", "--data", str(tmp_path / "data"), *flags])
    config = server_config(args)
    assert config.sync_writes is sync_writes
    srv = ServerThread(Path(config.data), sync_writes=config.sync_writes)
    try:
        with lamina.connect(srv.address) as client:
            col = client.create_collection("docs", dim=DIM)
            rng = np.random.default_rng(3)
            for i in range(5):
                writes, syncs = _wal_counts(srv.db, "docs")
                if i % 2:
                    assert col.delete(ids=[i - 1]) == 1
                else:
                    col.upsert([i, i + 1], rng.standard_normal((2, DIM)).astype(np.float32), [{"i": i}] * 2)
                after_writes, after_syncs = _wal_counts(srv.db, "docs")
                assert after_writes > writes  # the acknowledged write is in the log
                assert after_syncs - syncs == (after_writes - writes if sync_writes else 0)
    finally:
        srv.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(tmp_path: Path, server_process: type[ServerProcess], sig: int) -> None:
    data = tmp_path / "data"
    proc = server_process(data)
    with lamina.connect(proc.address) as db:
        db.create_collection("docs", dim=4).upsert([1], [[1.0, 2.0, 3.0, 4.0]], [{"a": json.dumps([1])}])
    proc.proc.send_signal(sig)
    assert proc.proc.wait(30) == 0
    log = proc.log.read_text()
    assert "shutting down" in log and "stopped" in log
    with lamina.connect(str(data)) as db:  # the lock was released
        assert db.get_collection("docs").get([1])[0].payload == {"a": "[1]"}


def test_close_stops_an_index_build_and_the_next_open_builds_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lamina")
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((20_000, 64)).astype(np.float32)
    index = {"type": "hnsw", "m": 32, "ef_construction": 400}  # a build of several seconds
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=64, metric="l2", index=index, segment_rows=20_000)
        for lo in range(0, 20_000, 10_000):  # a full segment: the optimizer seals it
            col.upsert(list(range(lo, lo + 10_000)), vectors[lo : lo + 10_000])
        deadline = time.monotonic() + 60
        while not any("sealing" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records]
    assert any("index build in progress was stopped" in m for m in messages), messages
    assert not any(m.startswith("built hnsw segment") for m in messages)
    with lamina.connect(str(tmp_path)) as db:
        col = db.get_collection("c")
        assert col.count() == 20_000
        info = col.optimize()
        assert info.status.segments == 1 and info.status.indexed_points == 20_000
        hits = col.search(vectors[123], k=1)
        assert hits[0].id == 123 and hits[0].score == 0.0


@pytest.mark.parametrize("sync_writes", [None, False])
def test_embedded_writes_are_fsynced_by_default(tmp_path: Path, sync_writes: bool | None) -> None:
    """`lamina.connect(path)` fsyncs the write-ahead log before an upsert returns, as the
    server does; `sync_writes=False` writes the log without syncing it."""
    options = {} if sync_writes is None else {"sync_writes": sync_writes}
    with lamina.connect(str(tmp_path / "data"), **options) as client:
        col = client.create_collection("docs", dim=DIM)
        db = client._transport.db
        assert isinstance(db, Database)
        writes, syncs = _wal_counts(db, "docs")
        col.upsert([1, 2], np.ones((2, DIM), np.float32))
        after_writes, after_syncs = _wal_counts(db, "docs")
        assert after_writes > writes
        assert after_syncs - syncs == (after_writes - writes if sync_writes is None else 0)
        # an upsert written in chunks (storage/rocks.py CHUNK_BYTES): unsynced chunks, then a
        # synced last batch (flush_wal syncs the chunks before it without the GIL)
        big = client.create_collection("big", dim=CUT_DIM)
        writes, syncs = _wal_counts(db, "big")
        big.upsert(list(range(3000)), np.ones((3000, CUT_DIM), np.float32))
        after_writes, after_syncs = _wal_counts(db, "big")
        assert after_writes - writes >= 4  # the chunks, then the last batch
        assert after_syncs - syncs == (1 if sync_writes is None else 0)  # the last batch
        assert big.count() == 3000


CUT_DIM = 128  # 3,000 rows of it: 1.5 MB, six chunks
_CUT_WRITER = """
import os, signal, sys
import numpy as np
import lamina

path, dim = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(5)
with lamina.connect(path) as db:
    col = db.get_collection("docs")
    store = db._transport.db.get_collection("docs")._store
    col.upsert(list(range(1000, 4000)), rng.standard_normal((3000, dim)).astype(np.float32),
               [{"n": i} for i in range(3000)])  # chunked, acknowledged
    print("acknowledged", flush=True)
    calls = []

    def cut() -> None:
        calls.append(1)
        if len(calls) == 2:  # between two chunks of the next write
            os.kill(os.getpid(), signal.SIGKILL)

    store.between_chunks = cut
    col.upsert(list(range(50, 3050)), np.ones((3000, dim), np.float32), [{"cut": True}] * 3000)
    print("not killed", flush=True)
"""


def _cut_state(col: lamina.Collection, old: np.ndarray) -> None:
    """What a reader of ``docs`` must see after a write cut between its chunks: only the 100
    first points (ids 0-99, ``old`` vectors) and the 3,000 acknowledged ones (1000-3999)."""
    assert col.count() == 3_100
    got = col.get(list(range(50, 100)), with_vector=True)
    assert [p.id for p in got] == list(range(50, 100))  # replaced points keep their old row
    assert all(p.payload == {"i": p.id} for p in got)
    assert np.array_equal(np.array([p.vector for p in got], np.float32), old[50:100])
    assert col.get(list(range(100, 1000))) == []  # new ids of the cut write: no point
    assert col.count(filter={"cut": True}) == 0
    hits = col.search(np.ones(CUT_DIM, np.float32), k=3_100, exact=True)
    assert len(hits) == 3_100 and {h.id for h in hits} == set(range(100)) | set(range(1000, 4000))


def test_a_large_upsert_killed_between_its_chunks_is_all_or_nothing(tmp_path: Path) -> None:
    """An upsert larger than CHUNK_BYTES is written in chunks (rocksdict holds the GIL per
    batch). A process killed between two chunks (the store's real ``between_chunks`` hook
    sends it SIGKILL) leaves no part of that write visible after a reopen: no new id, every
    replaced point as it was, the acknowledged chunked write before it whole; and the rows
    the cut write left past the row counter are swept at the open."""
    import subprocess
    import sys

    from lamina.storage.rocks import CHUNK_BYTES

    assert 3_000 * CUT_DIM * 4 > 2 * CHUNK_BYTES  # the writes below take three chunks or more
    path = tmp_path / "data"
    old = np.random.default_rng(4).standard_normal((100, CUT_DIM)).astype(np.float32)
    with lamina.connect(str(path)) as db:
        db.create_collection("docs", dim=CUT_DIM, metric="l2").upsert(
            list(range(100)), old, [{"i": i} for i in range(100)]
        )
    done = subprocess.run(
        [sys.executable, "-c", _CUT_WRITER, str(path), str(CUT_DIM)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["acknowledged"]
    reader = Database(path, read_only=True)  # opens without sweeping: it must stop at the counter
    try:
        assert reader.get_collection("docs").count() == 3_100
        assert reader.get_collection("docs").get(list(range(100, 1000))) == []
    finally:
        reader.close()
    with lamina.connect(str(path)) as db:
        engine = db._transport.db.get_collection("docs")  # type: ignore[attr-defined]
        store, next_row = engine._store, engine._next_row
        assert next_row == 3_100
        assert list(store.scan_vectors(next_row)) == [] and list(store.scan_payloads(next_row)) == []
        _cut_state(db.get_collection("docs"), old)
    with lamina.connect(str(path)) as db:  # and once more after the sweep
        _cut_state(db.get_collection("docs"), old)


def test_a_large_upsert_failing_between_its_chunks_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunked upsert that raises between its chunks (the ``between_chunks`` hook raises)
    is refused whole: readers see nothing of it, the next writes take its rows, and the
    leftover rows past the counter are swept at the next open."""
    caplog.set_level(logging.INFO, logger="lamina")
    path = tmp_path / "data"
    old = np.random.default_rng(4).standard_normal((100, CUT_DIM)).astype(np.float32)
    with lamina.connect(str(path)) as db:
        col = db.create_collection("docs", dim=CUT_DIM, metric="l2")
        col.upsert(list(range(100)), old, [{"i": i} for i in range(100)])
        col.upsert(list(range(1000, 4000)), np.full((3000, CUT_DIM), 2.0, np.float32))
        store = db._transport.db.get_collection("docs")._store  # type: ignore[attr-defined]

        def fail() -> None:
            raise OSError("cut between chunks")

        store.between_chunks = fail
        with pytest.raises(OSError, match="cut between chunks"):
            col.upsert(list(range(50, 3050)), np.ones((3000, CUT_DIM), np.float32), [{"cut": True}] * 3000)
        store.between_chunks = None
        assert col.count() == 3_100 and col.get([100, 999]) == []
        assert [h.id for h in col.search(np.ones(CUT_DIM, np.float32), k=1, exact=True)] != [50]
        assert len(list(store.scan_vectors(3_100))) > 0  # the first chunk, past the counter
        col.upsert([5000], np.ones((1, CUT_DIM), np.float32))  # a small write takes the first row again
        assert [h.id for h in col.search(np.ones(CUT_DIM, np.float32), k=1)] == [5000]
    caplog.clear()
    with lamina.connect(str(path)) as db:
        col = db.get_collection("docs")
        assert any("swept" in r.getMessage() for r in caplog.records)
        assert col.count() == 3_101 and col.get([100, 999]) == []
        assert [h.id for h in col.search(np.ones(CUT_DIM, np.float32), k=1, exact=True)] == [5000]
        assert col.get([50])[0].payload == {"i": 50}


def test_readers_see_nothing_of_a_chunked_upsert_until_it_returns(tmp_path: Path) -> None:
    """A writer held between the chunks of a large upsert (the store's ``between_chunks``
    hook waits) while other threads read: count, get, plain and exact searches and a
    filtered count see the collection as before the write; once the upsert returns, all of
    it. (New ids only: an upsert replacing points makes searches run again under the lock,
    so they wait for it by design; the kill test above covers replaced points.)"""
    import queue
    import threading

    old = np.zeros((100, CUT_DIM), np.float32)
    old[:, 0] = np.arange(100)
    new = np.full((3000, CUT_DIM), 0.5, np.float32)
    with lamina.connect(str(tmp_path / "data")) as db:
        col = db.create_collection("docs", dim=CUT_DIM, metric="l2")
        col.upsert(list(range(100)), old, [{"v": 0}] * 100)
        store = db._transport.db.get_collection("docs")._store  # type: ignore[attr-defined]
        inside: queue.Queue[int] = queue.Queue()
        go = threading.Semaphore(0)
        chunks: list[int] = []

        def hold() -> None:
            chunks.append(1)
            inside.put(len(chunks))
            assert go.acquire(timeout=60)

        store.between_chunks = hold
        writer = threading.Thread(
            target=col.upsert, args=(list(range(100, 3100)), new, [{"v": 1}] * 3000), daemon=True
        )
        writer.start()
        try:
            for _ in range(3):  # held after each of its first three chunks
                inside.get(timeout=60)
                # (an unfiltered count takes the collection lock, which the writer holds)
                assert col.count(filter={"v": 0}) == 100 and col.count(filter={"v": 1}) == 0
                assert len(col.search(new[0], k=3_100, exact=True)) == 100
                assert col.get([100, 3099]) == []
                for exact in (False, True):
                    hits = col.search(new[0], k=5, exact=exact)
                    assert len(hits) == 5 and all(h.id < 100 for h in hits)
                go.release()
        finally:
            store.between_chunks = None
            go.release()
            writer.join(60)
        assert len(chunks) == 3  # held at three chunk boundaries, then let go
        assert col.count() == 3_100 and col.count(filter={"v": 1}) == 3_000
        assert not writer.is_alive()
        assert {h.id for h in col.search(new[0], k=3_000, exact=True)} == set(range(100, 3100))


def test_a_large_write_hands_the_gil_to_searches_between_chunks(tmp_path: Path) -> None:
    """While searches are being served, a chunked upsert sleeps after each chunk (a search
    waiting for the GIL takes it there instead of at the 5 ms switch interval); a load that
    nobody searches does not."""
    big = np.random.default_rng(3).standard_normal((3000, CUT_DIM)).astype(np.float32)
    with lamina.connect(str(tmp_path / "data")) as db:
        col = db.create_collection("docs", dim=CUT_DIM, metric="l2")
        store = db._transport.db.get_collection("docs")._store  # type: ignore[attr-defined]
        real = store.yield_gil
        slept: list[object] = []
        store.yield_gil = lambda: slept.append(real())
        col.upsert(list(range(3000)), big)  # nobody has searched
        assert len(slept) >= 3 and not any(slept)
        slept.clear()
        col.search(big[0], k=1)
        col.upsert(list(range(3000, 6000)), big)
        assert len(slept) >= 3 and all(slept)
        assert col.count() == 6000
