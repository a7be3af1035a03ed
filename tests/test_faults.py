"""Faults beyond kill -9, on real file systems the tests make (a size-limited tmpfs, an
ext4 image on a loop device): a full disk at every stage that writes, a data directory
that is or turns read-only, I/O errors reading a segment (the test-only seam in
storage/faults.py), damaged and torn files, and ``lamina check``.

Mounting needs root (CI runs as root); elsewhere the mounting tests skip saying so.
"""

from __future__ import annotations

import contextlib
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
from lamina.engine.database import Database
from lamina.errors import ResourceExhausted
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
    srv = ServerThread(data, metrics_port=0)
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
        assert col.info().status.write_stall == ""

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
