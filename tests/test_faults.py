"""Faults beyond kill -9, on real file systems the tests make (a size-limited tmpfs, an
ext4 image on a loop device): a full disk at every stage that writes, a data directory
that is or turns read-only, I/O errors reading a segment (the test-only seam in
storage/faults.py), damaged and torn files, and ``lamina check``.

Mounting needs root (CI runs as root); elsewhere the mounting tests skip saying so.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import lamina
from lamina import cli
from lamina.engine.database import Database
from lamina.errors import DataLoss, FailedPrecondition, ResourceExhausted
from lamina.index.graphfile import HEADER_BYTES, GraphLayout
from lamina.storage import faults
from lamina.types import CollectionConfig, IndexConfig, SearchParams
from tests.conftest import ServerThread

DIM = 32
ROOT = Path(__file__).resolve().parent.parent


def _mount(args: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root (CI runs as root)")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a test file system here: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: its own, real, full-able file system."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)])
    yield mnt
    _umount(mnt)


class Ballast:
    """A file that takes up every free byte of a file system until ``free()``."""

    def __init__(self, mnt: Path) -> None:
        self.path = mnt / "ballast"

    def fill(self) -> None:
        block = b"\0" * (1 << 20)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 65536, 4096, 512):  # down to the last pages
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block[:size])
        finally:
            os.close(fd)

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _refused_full(call: Callable[[], object]) -> str:
    with pytest.raises(ResourceExhausted) as info:
        call()
    message = str(info.value)
    assert "disk full" in message and "bytes free" in message, message
    return message


def test_disk_full_at_every_stage_refuses_whole_and_resumes_without_restart(tmpfs: Path) -> None:
    """Upserts, deletes, seals, compactions (with their index builds), payload-index builds
    and snapshots on a full disk: each is refused RESOURCE_EXHAUSTED naming the data
    directory and its free bytes, nothing is half-applied, reads and health go on, the
    write stall shows in info() and the metrics, and everything resumes once space is freed;
    no acknowledged write is lost across a restart."""
    data = tmpfs / "data"
    ballast = Ballast(tmpfs)
    srv = ServerThread(data, metrics_port=0, metrics_names=True)
    acked: dict[int, np.ndarray] = {}
    try:
        client = lamina.connect(srv.address)
        col = client.create_collection("docs", dim=DIM, metric="l2", segment_rows=256)
        other = client.create_collection("other", dim=DIM, metric="l2")
        other.upsert([1, 2], _vectors(2, 99))

        def upsert(ids: list[int], seed: int) -> None:
            vecs = _vectors(len(ids), seed)
            col.upsert(ids, vecs, [{"tag": f"t{i % 3}"} for i in ids])
            acked.update(zip(ids, vecs, strict=True))

        for b in range(6):  # 1536 points: 6 segments' worth, sealed by the optimizer
            upsert(list(range(b * 256, (b + 1) * 256)), b)
        col.optimize()
        sealed = col.info().status.segments
        assert sealed >= 1

        # --- upsert: write until the disk is full
        ballast.fill()
        next_id, seed = 10_000, 100
        with pytest.raises(ResourceExhausted) as refused:
            for _ in range(200):
                upsert(list(range(next_id, next_id + 500)), seed)
                next_id, seed = next_id + 500, seed + 1
        message = str(refused.value)
        assert "disk full" in message and str(data) in message and "bytes free" in message, message
        assert col.get([next_id]) == [], "the refused batch was half-applied"
        assert col.count() == len(acked)
        # reads go on, health says SERVING, the stall shows in info() and the metrics
        assert len(col.search(_vectors(1, 7)[0], k=5)) == 5
        assert _serving(srv.address)
        assert "disk full" in col.info().status.write_stall
        import urllib.request

        scrape = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics").read().decode()
        assert 'lamina_collection_write_stalled{collection="docs"} 1.0' in scrape

        # --- delete, payload-index build, snapshot, optimize on the full disk
        _refused_full(lambda: col.delete(ids=[0, 1, 2]))
        assert len(col.get([0, 1, 2])) == 3
        _refused_full(lambda: col.snapshot())
        assert not any(p.name.startswith(".tmp") for p in (data / "snapshots").glob("*/*")), (
            "snapshot leftovers"
        )
        _refused_full(lambda: col.create_payload_index("tag", "keyword"))
        assert "tag" not in col.info().config.payload_index
        assert [h.id for h in other.search(_vectors(1, 99)[0], k=1)] == [1]  # other collections read on

        # --- free the space: writes resume without a restart
        ballast.free()
        upsert([next_id], seed)
        assert col.info().status.write_stall == ""
        assert col.count() == len(acked)

        # --- seal and index build: the optimizer meets a full disk, backs off, then finishes
        upsert(list(range(20_000, 20_200)), 200)
        ballast.fill()
        _refused_full(lambda: col.optimize())
        segments = col.info().status.segments
        ballast.free()
        _wait(lambda: col.info().status.mutable_points == 0 and col.info().status.segments > segments)
        # the stall clears when the optimizer's round ends (after the seal it compacts the dropped vectors)
        _wait(lambda: col.info().status.write_stall == "")

        # --- compaction: many dead rows, rewrite on a full disk
        col.delete(ids=list(range(0, 200)))
        for i in range(200):
            acked.pop(i)
        ballast.fill()
        with contextlib.suppress(ResourceExhausted):  # refused, or nothing left to do
            col.optimize()
        ballast.free()
        col.optimize()

        # --- payload-index build over sealed segments on a full disk
        ballast.fill()
        try:
            col.create_payload_index("tag", "keyword")  # the config write may fit in the log...
        except ResourceExhausted:
            assert "tag" not in col.info().config.payload_index  # ...or be refused whole
        with contextlib.suppress(ResourceExhausted):
            col.optimize()  # the segment index files meet the full disk: refused, retried later
        ballast.free()
        col.create_payload_index("tag", "keyword")
        col.optimize()
        leftovers = [p for p in (data / "collections").rglob("*.tmp")]
        assert leftovers == [], leftovers
        assert col.count(filter={"tag": "t1"}) == sum(1 for i in acked if i % 3 == 1)
        assert col.snapshot().points == len(acked)
    finally:
        ballast.free()
        srv.stop()

    # no acknowledged write lost: reopen and compare every vector
    with Database(data) as db:
        c = db.get_collection("docs")
        assert c.count() == len(acked)
        ids = sorted(acked)
        got = {p.id: p.vector for p in c.get(ids)}
        assert set(got) == set(ids)
        assert all(np.array_equal(got[i], acked[i]) for i in ids)
    done = subprocess.run(
        [sys.executable, "-m", "lamina", "check", "--data", str(data), "--deep"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _seed(data: Path, n: int = 600, index: str = "hnsw", metric: str = "l2") -> np.ndarray:
    """A data directory with collection "docs": n points, partly sealed (cosine: every other
    vector of unit length, whose segment then holds its only copy; the others stay in RocksDB)."""
    vecs = _vectors(n, 1)
    if metric == "cosine":
        vecs[::2] /= np.linalg.norm(vecs[::2], axis=1, keepdims=True)
    with Database(data) as db:
        config = CollectionConfig(dim=DIM, metric=metric, segment_rows=256, index=IndexConfig(type=index))
        col = db.create_collection("docs", config)
        col.upsert(list(range(n)), vecs, [{"i": i} for i in range(n)])
        col.optimize()
    return vecs


def _refused_read_only(call: Callable[[], object], path: Path) -> None:
    with pytest.raises(FailedPrecondition) as info:
        call()
    assert "read-only" in str(info.value) and str(path) in str(info.value), str(info.value)


def test_read_only_file_system_at_start_serves_reads_and_refuses_writes(tmpfs: Path) -> None:
    data = tmpfs / "data"
    vecs = _seed(data)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        srv = ServerThread(data)
        try:
            client = lamina.connect(srv.address)
            assert "read-only file system" in client.server_info()["read_only"]
            col = client.get_collection("docs")
            hits = col.search(vecs[5], k=1)
            assert [h.id for h in hits] == [5]
            assert col.count() == 600
            _refused_read_only(lambda: col.upsert([1], vecs[:1]), tmpfs)
            _refused_read_only(lambda: col.delete(ids=[1]), tmpfs)
            _refused_read_only(lambda: client.create_collection("new", dim=DIM), tmpfs)
            _refused_read_only(lambda: col.snapshot(), tmpfs)
            assert "read-only" in col.info().status.write_stall
            assert _serving(srv.address)
        finally:
            srv.stop()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 32 MiB ext4 image on a loop device, mounted errors=remount-ro: (mount point, the
    sysfs file that makes the kernel remount it read-only as after a disk error)."""
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(32 << 20)
    if subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True).returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    _mount(["-o", "loop,errors=remount-ro", str(image), str(mnt)])
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True)
    trigger = Path("/sys/fs/ext4") / Path(source.stdout.strip()).name / "trigger_fs_error"
    if not trigger.exists():
        _umount(mnt)
        pytest.skip("this kernel has no ext4 trigger_fs_error")
    yield mnt, trigger
    _umount(mnt)


def test_disk_turning_read_only_while_serving(ext4: tuple[Path, Path]) -> None:
    """The kernel remounts the file system read-only under a running server (an ext4
    error with errors=remount-ro): reads go on, writes are FAILED_PRECONDITION naming the
    data directory, the optimizer backs off, health stays SERVING, nothing acknowledged is lost."""
    mnt, trigger = ext4
    data = mnt / "data"
    vecs = _seed(data)
    srv = ServerThread(data)
    try:
        client = lamina.connect(srv.address)
        col = client.get_collection("docs")
        col.upsert([1000], vecs[:1])  # acknowledged before the fault
        trigger.write_text("lamina test\n")
        _refused_read_only(lambda: col.upsert([1001], vecs[1:2]), data)
        _refused_read_only(lambda: col.upsert([1002], vecs[2:3]), data)  # and again, without a crash
        with pytest.raises(FailedPrecondition):
            col.optimize()
        assert [h.id for h in col.search(vecs[7], k=1)] == [7]
        assert col.get([1000])[0].id == 1000
        assert col.get([1001]) == []
        assert "read-only" in col.info().status.write_stall
        assert _serving(srv.address)
    finally:
        srv.stop()
    with Database(data) as db:  # read-only now: opens read-only by itself, every acknowledged point there
        assert "read-only" in db.read_only
        assert db.get_collection("docs").count() == 601


def test_serve_read_only_flag(tmp_path: Path, server_process: type) -> None:
    data = tmp_path / "data"
    vecs = _seed(data)
    proc = server_process(data, "--read-only")
    client = lamina.connect(proc.address)
    col = client.get_collection("docs")
    assert [h.id for h in col.search(vecs[3], k=1)] == [3]
    assert client.server_info()["read_only"] == "served with --read-only"
    with pytest.raises(FailedPrecondition, match="--read-only"):
        col.upsert([1], vecs[:1])
    with pytest.raises(FailedPrecondition, match="read-only"):
        col.create_payload_index("i", "int")
    client.close()
    # a second read-only server may share the directory; a writer may not start meanwhile
    with pytest.raises(FailedPrecondition, match="in use"):
        Database(data)
    assert proc.terminate() == 0
    done = subprocess.run(
        [sys.executable, "-m", "lamina", "serve", "--data", str(data), "--read-only", "--ray"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--read-only cannot be combined with --ray" in done.stderr, done.stderr


def _segment_folders(data: Path) -> list[Path]:
    return sorted(p for p in (data / "collections" / "docs" / "segments").iterdir() if p.is_dir())


def test_io_error_reading_a_segment_fails_the_queries_that_touch_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """EIO from a segment file (the storage/faults.py seam raises the OSError a failing
    disk raises): searches that read it, and gets of the vectors it alone holds, are
    DATA_LOSS naming the segment; reads that do not (get by id without vectors, other
    collections) go on, the log says what to do, and it passes when the disk does."""
    data = tmp_path / "data"
    vecs = _seed(data)
    with Database(data) as db:
        db.create_collection("other", CollectionConfig(dim=DIM)).upsert([1], vecs[:1])
    srv = ServerThread(data)
    try:
        client = lamina.connect(srv.address)
        col = client.get_collection("docs")
        bad = _segment_folders(data)[0].name
        faults.inject(bad)
        try:
            with pytest.raises(DataLoss, match=f"segment {bad}"):
                col.search(vecs[0], k=3)
            assert col.get([0], with_vector=False)[0].id == 0
            with pytest.raises(DataLoss, match=f"segment {bad}"):  # its vector is stored only there
                col.get([0])
            assert [h.id for h in client.get_collection("other").search(vecs[0], k=1)] == [1]
            assert _serving(srv.address)
            assert any("lamina check" in r.getMessage() and bad in r.getMessage() for r in caplog.records)
        finally:
            faults.clear()
        assert [h.id for h in col.search(vecs[0], k=1)] == [0]
    finally:
        srv.stop()


def _check(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lamina check`` (in this process: its lock is a file lock of its own all the same)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "--data", str(data), *args])
    return subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at % len(raw)] ^= 0xFF
    path.write_bytes(bytes(raw))


def _exact_top(vecs: np.ndarray, query: np.ndarray, k: int, metric: str = "l2") -> list[int]:
    if metric == "cosine":
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        return [int(i) for i in np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:k]]
    return [int(i) for i in np.argsort(((vecs - query) ** 2).sum(axis=1), kind="stable")[:k]]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_damaged_segment_opens_degraded_and_check_repairs_it(tmp_path: Path, metric: str) -> None:
    data = tmp_path / "data"
    vecs = _seed(data, metric=metric)
    assert _check(data, "--deep").returncode == 0
    victim = _segment_folders(data)[0]
    _flip(victim / "rows.npy", 200)
    with Database(data) as db:
        col = db.get_collection("docs")
        assert "degraded" in col.info().status.note and victim.name in col.info().status.note
        with pytest.raises(DataLoss, match="degraded"):
            col.search(vecs[0], k=3)
        with pytest.raises(DataLoss):
            col.count()
        assert col.get([0], with_vector=False)[0].id == 0  # ids and payloads come from RocksDB
        with pytest.raises(DataLoss, match="degraded"):  # its vector is stored only in the segment
            col.get([0])
    done = _check(data)
    assert done.returncode == 1
    assert f"segment {victim.name}: rows.npy fails its checksum" in done.stdout
    assert "lamina check --data DIR --repair" in done.stdout
    done = _check(data, "--repair")
    assert "REPAIRED" in done.stdout, done.stdout + done.stderr
    assert _check(data, "--deep").returncode == 0
    with Database(data) as db:
        col = db.get_collection("docs")
        assert col.count() == len(vecs)
        # rebuilt from the segment's own vectors, found by id since its row list was damaged
        got = col.get(list(range(len(vecs))))
        assert len(got) == len(vecs) and all(p.vector.tobytes() == vecs[p.id].tobytes() for p in got)  # type: ignore[union-attr]
        for q in (0, 17, 333):
            hits = col.search(vecs[q], k=5, params=SearchParams(exact=True))
            assert [h.id for h in hits] == _exact_top(vecs, vecs[q], 5, metric)


def test_flipped_vector_byte_found_by_the_scrub_and_check_deep(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _seed(data, index="flat")  # a flat segment's vectors are in vectors.f32, mapped, not read at open
    victim = _segment_folders(data)[-1]
    _flip(victim / "vectors.f32", 1000)
    assert _check(data).returncode == 0  # the size is right: only --deep reads the vectors
    done = _check(data, "--deep")
    assert done.returncode == 1 and f"segment {victim.name}: vectors.f32 fails its checksum" in done.stdout
    with Database(data) as db:
        col = db.get_collection("docs")
        _wait(lambda: "degraded" in col.info().status.note)  # the background scrub finds it
        with pytest.raises(DataLoss):
            col.search(np.zeros(DIM, np.float32), k=1)


def test_check_deep_repair_rebuilds_a_segment_only_the_scrub_finds_damaged(tmp_path: Path) -> None:
    """A flipped byte in a payload column passes the checks at open (size only); ``check
    --deep --repair`` runs the scrub, finds it and rebuilds the segment from RocksDB, which
    holds every payload too."""
    data = tmp_path / "data"
    vecs = _seed(data)
    victim = _segment_folders(data)[0]
    _flip(victim / "payloads.bin", 100)
    assert _check(data).returncode == 0
    done = _check(data, "--deep", "--repair")
    assert done.returncode == 0 and f"rebuilt segment {victim.name}" in done.stdout, done.stdout + done.stderr
    assert _check(data, "--deep").returncode == 0
    with Database(data) as db:
        col = db.get_collection("docs")
        hits = col.search(vecs[7], k=3, params=SearchParams(exact=True))
        assert hits[0].id == 7 and hits[0].payload == {"i": 7}
        assert [p.payload for p in col.get(list(range(len(vecs))))] == [{"i": i} for i in range(len(vecs))]


def test_flipped_vector_byte_in_an_hnsw_graph_is_found_by_the_scrub_and_check_deep(tmp_path: Path) -> None:
    """An HNSW segment keeps its vectors only inside its graph file, searched in place
    through a memory map: opening checks its size (reading every byte would make a large
    collection slow to reopen), the background scrub and ``check --deep`` its checksum."""
    data = tmp_path / "data"
    _seed(data)
    victim = _segment_folders(data)[-1]
    assert not (victim / "vectors.f32").exists()
    layout = GraphLayout(victim / "graph.hnsw")
    _flip(victim / "graph.hnsw", HEADER_BYTES + 3 * layout.record + layout.vector_at + 4)  # row 3's vector
    assert _check(data).returncode == 0  # the size is right: only --deep reads the graph
    done = _check(data, "--deep")
    assert done.returncode == 1 and f"segment {victim.name}: graph.hnsw fails its checksum" in done.stdout
    with Database(data) as db:
        col = db.get_collection("docs")
        _wait(lambda: "degraded" in col.info().status.note)  # the background scrub finds it
        with pytest.raises(DataLoss):
            col.search(np.zeros(DIM, np.float32), k=1)
    done = _check(data, "--deep", "--repair")  # nothing else holds those vectors: no rebuild to make
    assert done.returncode != 0 and "REPAIRED" not in done.stdout
    assert f"segment {victim.name}: the vectors of" in done.stdout + done.stderr
    assert "restore the collection from a snapshot" in done.stdout + done.stderr


def test_torn_segment_manifest_is_detected_at_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _seed(data)
    meta = _segment_folders(data)[0] / "segment.json"
    other = _segment_folders(data)[1] / "segment.json"
    other.write_bytes(other.read_bytes().replace(b'"checksum"', b'"checksUm"'))  # a flip in the key itself
    assert "fails its checksum" in _check(data).stdout
    meta.write_bytes(meta.read_bytes()[:25])
    with Database(data) as db:
        assert "torn or truncated" in db.get_collection("docs").info().status.note
    assert "torn or truncated" in _check(data).stdout


def test_check_refuses_a_stranger_and_a_held_directory(tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    done = _check(stranger)
    assert done.returncode == 2 and "not a Lamina data directory" in done.stderr
    data = tmp_path / "data"
    _seed(data)
    with Database(data):
        done = _check(data)
        assert done.returncode == 2 and "--online" in done.stderr, done.stderr
        done = _check(data, "--online", "--deep")
        assert done.returncode == 0, done.stdout + done.stderr
