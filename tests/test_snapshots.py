"""Online snapshots (gRPC, SDK, CLI) and restore into a new data directory."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import lamina
from tests.conftest import ServerProcess
from tests.test_api import snapshot as points_of
from tests.test_cli import lamina_cmd

DIM = 12


def test_snapshot_taken_during_writes_restores_every_point(db: lamina.Client, tmp_path: Path) -> None:
    col = db.create_collection(
        "docs", dim=DIM, metric="cosine", segment_rows=400, payload_index={"group": "int"}
    )
    rng = np.random.default_rng(3)
    col.upsert(list(range(1500)), rng.standard_normal((1500, DIM)), [{"group": i % 5} for i in range(1500)])
    col.optimize()
    col.delete(ids=list(range(0, 1500, 9)))  # tombstones in sealed segments
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:  # keeps writing (sealing new segments) while the snapshot is taken
        next_id = 10_000
        while not stop.is_set():
            col.upsert(
                list(range(next_id, next_id + 50)), rng.standard_normal((50, DIM)), [{"group": 7}] * 50
            )
            acked.extend(range(next_id, next_id + 50))
            next_id += 50

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(acked) < 500:
            threading.Event().wait(0.01)
        before = set(acked)  # acknowledged before the snapshot call
        info = col.snapshot()
    finally:
        stop.set()
        thread.join(30)
    assert info.collection == "docs" and info.points >= 1500 - 167 + len(before)
    assert [s.name for s in db.list_snapshots("docs")] == [info.name]
    expected = points_of(col)  # the collection now; the snapshot is a prefix of its writes

    restored_dir = tmp_path / "restored"
    restored = lamina.restore_snapshot(info.path, restored_dir, name="copy")
    assert restored.count == info.points
    with lamina.connect(str(restored_dir)) as copy:
        got = points_of(copy.get_collection("copy"))
        got_ids = {pid for pid, _, _ in got}
        assert before <= got_ids  # every write acknowledged before the snapshot
        assert len(got) == info.points
        by_id = {pid: (vec, pay) for pid, vec, pay in expected}
        for pid, vec, pay in got:  # each restored point equals the live one, bytes and payload
            assert by_id[pid] == (vec, pay)
        restored_col = copy.get_collection("copy")
        assert restored_col.count(filter={"group": 7}) == len(got_ids & set(acked))
        for pid, vec, _ in got[:: max(1, len(got) // 25)]:
            query = np.frombuffer(vec, dtype=np.float32)
            assert restored_col.search(query, k=1)[0].id == pid  # the index agrees with storage

    db.delete_snapshot("docs", info.name)
    assert db.list_snapshots() == []
    with pytest.raises(lamina.NotFound, match="no snapshot"):
        db.delete_snapshot("docs", info.name)
    with pytest.raises(lamina.NotFound, match="'ghost' does not exist"):
        db.get_collection("ghost").snapshot()


def test_restore_refuses_a_taken_name_and_a_folder_that_is_no_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lamina.connect(str(data)) as db:
        col = db.create_collection("a", dim=3)
        col.upsert([1, 2], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [{"x": 1}, None])
        info = col.snapshot()
    with pytest.raises(lamina.AlreadyExists, match="restore under another name"):
        lamina.restore_snapshot(info.path, data)
    with pytest.raises(lamina.NotFound, match="not a Lamina snapshot"):
        lamina.restore_snapshot(tmp_path, tmp_path / "other")
    assert lamina.restore_snapshot(info.path, data, name="b").count == 2
    with lamina.connect(str(data)) as db:
        assert db.list_collections() == ["a", "b"]
        assert db.get_collection("b").get([1])[0].payload == {"x": 1}


def test_interrupted_snapshot_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lamina.connect(str(data)) as db:
        db.create_collection("a", dim=3).upsert([1], [[1.0, 2.0, 3.0]])
        db.get_collection("a").snapshot()
    leftover = data / "snapshots" / "a" / ".tmp-a-20260101T000000Z-abcdef"
    (leftover / "collection").mkdir(parents=True)  # as a crash mid-snapshot leaves it
    with lamina.connect(str(data)) as db:
        assert not leftover.exists()
        assert len(db.list_snapshots("a")) == 1


def test_snapshot_cli_against_a_server(tmp_path: Path, server_process: type[ServerProcess]) -> None:
    data = tmp_path / "data"
    proc = server_process(data)
    with lamina.connect(proc.address) as db:
        db.create_collection("kb", dim=4).upsert(["a", "b"], np.eye(2, 4), [{"t": "x"}, {"t": "y"}])
    made = lamina_cmd("snapshot", "create", "-c", "kb", "-t", proc.address)
    assert made.returncode == 0, made.stderr
    name, path = made.stdout.split()[0], made.stdout.split()[-1]
    assert "2 points" in made.stdout
    listed = lamina_cmd("snapshot", "list", "-t", proc.address)
    assert name in listed.stdout
    # the server holds its data directory: restoring into it is refused with a clear message
    busy = lamina_cmd("restore", path, "--data", str(data), "--name", "kb2")
    assert busy.returncode == 2 and "in use by another Lamina process" in busy.stderr
    target = tmp_path / "restored"
    done = lamina_cmd("restore", path, "--data", str(target))
    assert done.returncode == 0, done.stderr
    assert "restored 'kb' (2 points)" in done.stdout
    with lamina.connect(str(target)) as db:
        assert [p.payload for p in db.get_collection("kb").get(["a", "b"])] == [{"t": "x"}, {"t": "y"}]
    gone = lamina_cmd("snapshot", "delete", "-c", "kb", "-s", name, "-t", proc.address)
    assert gone.returncode == 0 and not Path(path).exists()
    missing = lamina_cmd("snapshot", "delete", "-c", "kb", "-s", name, "-t", proc.address)
    assert missing.returncode == 2 and "no snapshot" in missing.stderr
