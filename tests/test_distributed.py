"""Sharded, replicated collections on a local Ray cluster: the same answers as one node,
no acknowledged write lost when replicas die, replicas catching up, Ray-task ingest."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import ray

import lamina
import lamina.distributed as ld
from lamina.engine.sharded import ShardedCollection, ShardedDatabase, shard_of

DIM = 16


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _hits(hits: list[Any]) -> list[tuple[Any, Any]]:
    return [(h.id, h.payload) for h in hits]


def _same(got: list[list[Any]], want: list[list[Any]]) -> bool:
    """Same points in the same order, scores equal up to float32 summation order."""
    return [_hits(h) for h in got] == [_hits(h) for h in want] and all(
        np.allclose([h.score for h in g], [h.score for h in w], rtol=1e-5, atol=1e-5)
        for g, w in zip(got, want, strict=True)
    )


def _sharded(client: lamina.Client, name: str) -> ShardedCollection:
    db = client._transport.db  # type: ignore[attr-defined]
    assert isinstance(db, ShardedDatabase)
    return db.get_collection(name)


def _wait(predicate: Any, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _data(n: int, seed: int) -> tuple[list[Any], np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    ids: list[Any] = [i if i % 3 else f"doc-{i}" for i in range(n)]
    return ids, rng.standard_normal((n, DIM)).astype(np.float32), [{"g": i % 10} for i in range(n)]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sharded_collection_answers_as_one_node(cluster: None, tmp_path: Path, metric: str) -> None:
    ids, vectors, payloads = _data(3000, 5)
    queries = np.random.default_rng(6).standard_normal((15, DIM)).astype(np.float32)
    sharded = ld.connect(tmp_path / "shards")
    single = lamina.connect(str(tmp_path / "single"))
    try:
        sc = sharded.create_collection("c", DIM, metric, shards=3, payload_index={"g": "int"})
        one = single.create_collection("c", DIM, metric, payload_index={"g": "int"})
        assert sharded.get_collection("c").info().config.shards == 3
        for col in (sc, one):
            for lo in range(0, 3000, 1000):
                assert (
                    col.upsert(ids[lo : lo + 1000], vectors[lo : lo + 1000], payloads[lo : lo + 1000]) == 1000
                )
        assert {shard_of(i, 3) for i in ids} == {0, 1, 2}  # every shard holds part of the data
        assert all(points > 500 for _, points in [r[0] for r in _sharded(sharded, "c").replicas()])
        for flt in (None, {"g": {"$in": [1, 4]}}):
            want = one.search_batch(queries, k=12, filter=flt, exact=True)
            assert _same(sc.search_batch(queries, k=12, filter=flt, exact=True), want)
            assert _same([sc.search(queries[0], k=5, filter=flt, exact=True)], [want[0][:5]])
        assert sc.count() == one.count() == 3000 and sc.count({"g": 3}) == one.count({"g": 3})
        asked = [ids[7], "missing", ids[2999], ids[3]]
        assert [(p.id, p.payload) for p in sc.get(asked)] == [(p.id, p.payload) for p in one.get(asked)]
        # scrolling pages through every shard visits the points in one node's order
        pages: list[list[Any]] = [[], []]
        for out, col in zip(pages, (sc, one), strict=True):
            offset = None
            while True:
                points, offset = col.scroll(limit=700, offset=offset, filter={"g": {"$lt": 5}})
                out.extend(p.id for p in points)
                if offset is None:
                    break
        assert pages[0] == pages[1] and len(pages[0]) == 1500
        assert sc.delete(ids=ids[:100]) == one.delete(ids=ids[:100]) == 100
        assert sc.delete(filter={"g": 9}) == one.delete(filter={"g": 9})
        sc.optimize()
        one.optimize()
        assert sc.info().status.indexed_points == one.count()
        assert _same(sc.search_batch(queries, k=12, exact=True), one.search_batch(queries, k=12, exact=True))
        # approximate search over the shards' HNSW graphs finds the true neighbours too
        truth = one.search_batch(queries, k=10, exact=True)
        approx = sc.search_batch(queries, k=10)
        recall = np.mean(
            [len({h.id for h in a} & {h.id for h in t}) / 10 for a, t in zip(approx, truth, strict=True)]
        )
        assert recall >= 0.9
    finally:
        sharded.close()
        single.close()


def test_rejected_writes_change_no_shard(cluster: None, tmp_path: Path) -> None:
    ids, vectors, _ = _data(400, 9)
    with ld.connect(tmp_path / "shards") as db:
        col = db.create_collection("c", DIM, "cosine", shards=4)
        col.upsert(ids[:200], vectors[:200])
        bad = vectors[200:].copy()
        bad[150] = 0  # a zero vector late in a batch that spans every shard
        with pytest.raises(lamina.InvalidArgument, match="vector 150 is all zeros"):
            col.upsert(ids[200:], bad)
        with pytest.raises(lamina.InvalidArgument, match="payload"):
            col.upsert(ids[200:202], vectors[200:202], [{"ok": 1}, {"bad": float("nan")}])
        with pytest.raises(lamina.InvalidArgument, match="one vector per id"):
            col.upsert(ids[200:203], vectors[200:202])
        with pytest.raises(lamina.InvalidArgument):
            col.delete(filter={"g": {"$nope": 1}})
        with pytest.raises(lamina.InvalidArgument, match="not multi-tenant"):
            col.upsert(ids[200:202], vectors[200:202], tenant="t")
        assert col.count() == 200 and col.get(ids[200:]) == []
        with pytest.raises(lamina.AlreadyExists):
            db.create_collection("c", DIM)
        with pytest.raises(lamina.InvalidArgument, match="shards"):
            db.create_collection("d", DIM, shards=0)
    # one node refuses sharded settings with the way to get them
    with (
        lamina.connect(str(tmp_path / "single")) as single,
        pytest.raises(lamina.FailedPrecondition, match="--ray"),
    ):
        single.create_collection("c", DIM, shards=2)


def test_tenants_pass_through_the_shards(cluster: None, tmp_path: Path) -> None:
    ids, vectors, payloads = _data(1200, 11)
    queries = vectors[:5] + 0.01
    sharded = ld.connect(tmp_path / "shards")
    single = lamina.connect(str(tmp_path / "single"))
    try:
        cols = [
            sharded.create_collection("t", DIM, "cosine", multi_tenant=True, shards=3, replicas=2),
            single.create_collection("t", DIM, "cosine", multi_tenant=True),
        ]
        for col in cols:
            col.upsert(ids[:800], vectors[:800], payloads[:800], tenant="acme")
            col.upsert(ids[600:], vectors[600:], payloads[600:], tenant="zeta")  # ids shared across tenants
        sc, one = cols
        for tenant in ("acme", "zeta"):
            want = one.search_batch(queries, k=8, tenant=tenant, exact=True)
            assert _same(sc.search_batch(queries, k=8, tenant=tenant, exact=True), want)
            assert sc.count(tenant=tenant) == one.count(tenant=tenant)
        assert [(t.name, t.points) for t in sc.list_tenants()] == [("acme", 800), ("zeta", 600)]
        with pytest.raises(lamina.InvalidArgument, match="names its tenant"):
            sc.search(queries[0])
        assert sc.delete_tenant("acme") == 800
        assert sc.count(tenant="acme") == 0 and sc.count(tenant="zeta") == 600
        with pytest.raises(lamina.NotFound):
            sc.delete_tenant("acme")
    finally:
        sharded.close()
        single.close()


def test_shard_of_is_stable_across_processes() -> None:
    # CRC-32 of the id's canonical bytes: fixed values, not Python's per-process salted hash
    assert shard_of(1, 4) == zlib.crc32((1).to_bytes(8, "big")) % 4
    assert shard_of("a", 4) == zlib.crc32(b"sa") % 4


def test_a_replica_killed_mid_query_loses_no_write_and_reads_go_on(cluster: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    client = ld.connect(tmp_path / "shards")
    try:
        col = client.create_collection("c", DIM, "l2", shards=2, replicas=2)
        sc = _sharded(client, "c")
        col.upsert(list(range(2000)), vectors[:2000])

        # a replica killed (and restarted by Ray over its data directory) while a writer upserts: a
        # write is acknowledged only once both replicas of its shard applied it, none is lost
        acked: list[int] = []

        def writer() -> None:
            for lo in range(2000, 3000, 50):
                assert col.upsert(list(range(lo, lo + 50)), vectors[lo : lo + 50]) == 50
                acked.extend(range(lo, lo + 50))
                time.sleep(0.05)  # still writing when the replica is killed

        thread = threading.Thread(target=writer)
        thread.start()
        assert _wait(lambda: len(acked) >= 200, 30)
        ray.kill(sc._slots[0][0].handle, no_restart=False)
        assert len(acked) < 1000  # the kill landed while writes were going on
        thread.join(120)
        assert len(acked) == 1000
        # acknowledged means applied by both: while one replica's process is frozen, an upsert to its
        # shard is not acknowledged; once it runs again, the upsert returns with the write on both
        frozen = sc._slots[0][1].handle
        pid = ray.get(frozen.pid.remote())
        mine = [i for i in range(1000) if shard_of(i, 2) == 0][:5]
        done: list[int] = []
        os.kill(pid, signal.SIGSTOP)
        try:
            upsert = threading.Thread(target=lambda: done.append(col.upsert(mine, vectors[mine])))
            upsert.start()
            time.sleep(1.5)
            assert not done  # not acknowledged while a replica has not applied it
        finally:
            os.kill(pid, signal.SIGCONT)
        upsert.join(60)
        assert done == [5] and ray.get(frozen.status.remote())[0] == sc._acked[0]
        for shard, replicas in enumerate(sc.replicas()):
            assert replicas[0] == replicas[1]  # (last write applied, points) equal
            assert replicas[0][1] == sum(1 for i in range(3000) if shard_of(i, 2) == shard)

        # a replica lost for good in the middle of queries: every read is answered by its peer
        answers: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    answers.append(len(col.search_batch(queries, k=5, exact=True)))
                    answers.append(len(col.get([1, 2, 3, 4])))
                except BaseException as exc:
                    errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.5)
        lost = sc._slots[1][1].handle
        ray.kill(lost, no_restart=True)
        at_kill = len(answers)
        went_on = _wait(lambda: len(answers) > at_kill + 20 or bool(errors))
        stop.set()
        thread.join(60)
        assert not errors, errors[:1]
        assert went_on and set(answers) <= {10, 4}  # reads went on, complete
        # the front end started a new replica over the lost one's data directory
        assert _wait(lambda: sc._slots[1][1].handle is not lost)
        assert col.upsert([5000], vectors[:1]) == 1  # and writes are acknowledged by both again
        with lamina.connect(str(tmp_path / "single")) as single:
            one = single.create_collection("c", DIM, "l2")
            for lo in range(0, 3000, 1000):
                one.upsert(list(range(lo, lo + 1000)), vectors[lo : lo + 1000])
            one.upsert([5000], vectors[:1])
            for _ in range(4):  # both replicas' turns
                assert _same(
                    col.search_batch(queries, k=10, exact=True), one.search_batch(queries, k=10, exact=True)
                )
            assert col.count() == 3001
        assert all(r[0] == r[1] for r in sc.replicas())
    finally:
        client.close()


def test_a_replica_that_lost_its_data_catches_up_from_its_peer(cluster: None, tmp_path: Path) -> None:
    ids, vectors, payloads = _data(2000, 12)
    queries = vectors[:6] + 0.05
    root = tmp_path / "shards"
    client = ld.connect(root, sync_writes=True)
    try:
        col = client.create_collection("c", DIM, "cosine", shards=2, replicas=2)
        sc = _sharded(client, "c")
        col.upsert(ids[:1500], vectors[:1500], payloads[:1500])
        col.create_payload_index("g", "int")
        col.delete(ids=ids[:50])
        want = col.search_batch(queries, k=10, exact=True)
        # replica 0 of shard 0 loses its disk and is restarted by Ray empty
        slot = sc._slots[0][0]
        shutil.rmtree(slot.path)
        ray.kill(slot.handle, no_restart=False)
        assert _wait(lambda: ray.get(slot.handle.status.remote())[0] == 0)
        health = {(i, j): (up, lag) for i, j, up, lag in sc.health()}
        assert sc._acked[0] > 0 and health[0, 0] == (True, sc._acked[0]) and health[0, 1] == (True, 0)
        # reads never see the empty replica: it refuses them until it has caught up
        for _ in range(4):
            assert _same(col.search_batch(queries, k=10, exact=True), want)
        # it catches up from its peer (points, payloads, the payload index added later)
        assert _wait(lambda: sc.replicas()[0][0] == sc.replicas()[0][1])
        assert col.upsert(ids[1500:], vectors[1500:], payloads[1500:]) == 500
        assert all(r[0] == r[1] for r in sc.replicas())
        info = ray.get(slot.handle.read.remote(0, "info", (), {}))
        assert info.config.payload_index == {"g": "int"}
        got = ray.get(slot.handle.read.remote(0, "get", ([i for i in ids[:200] if shard_of(i, 2) == 0],), {}))
        assert [p.id for p in got] == [i for i in ids[50:200] if shard_of(i, 2) == 0]
    finally:
        client.close()
    # the front end restarts; a replica lost its data while it was down: it catches up at open
    shutil.rmtree(root / "collections" / "c" / "shard-1" / "replica-1")
    with ld.connect(root) as again:
        col = again.get_collection("c")
        assert col.count() == 1950 and col.info().config.payload_index == {"g": "int"}
        assert all(r[0] == r[1] for r in _sharded(again, "c").replicas())
        assert col.get([ids[1999]])[0].payload == payloads[1999]


def test_ray_tasks_ingest_npy_and_parquet_into_the_shards(cluster: None, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((5000, DIM)).astype(np.float32)
    np.save(tmp_path / "v.npy", matrix)
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(3000)],
            "vector": matrix[:3000].tolist(),
            "lang": ["en", "de", "fr"] * 1000,
        }
    )
    pq.write_table(table, tmp_path / "v.parquet", row_group_size=700)
    seen: list[tuple[int, int]] = []
    with ld.connect(tmp_path / "shards") as db:
        db.create_collection("n", DIM, "l2", shards=3, replicas=2)
        assert (
            ld.ingest(
                db,
                "n",
                tmp_path / "v.npy",
                id_start=10,
                rows_per_block=1100,
                progress=lambda d, t: seen.append((d, t)),
            )
            == 5000
        )
        assert seen[-1] == (5000, 5000) and len(seen) == 5
        n = db.get_collection("n")
        assert n.count() == 5000
        assert np.array_equal(n.get([10, 5009])[0].vector, matrix[0])
        assert n.search(matrix[4321], k=1, exact=True)[0].id == 4331
        assert all(r[0] == r[1] for r in _sharded(db, "n").replicas())

        db.create_collection("p", DIM, "cosine", shards=2)
        assert ld.ingest(db, "p", tmp_path / "v.parquet") == 3000
        p = db.get_collection("p")
        assert p.count({"lang": "de"}) == 1000
        assert p.get(["p4"])[0].payload == {"lang": "de"}

        # a block that fails its checks is reported by rows; the blocks before it are written
        bad = matrix[:3000].tolist()
        bad[2500] = bad[2500][:3]
        pq.write_table(
            pa.table({"id": [f"q{i}" for i in range(3000)], "vector": bad}),
            tmp_path / "bad.parquet",
            row_group_size=1000,
        )
        with pytest.raises(lamina.InvalidArgument, match=r"rows 2001\.\.3000: row 2501"):
            ld.ingest(db, "p", tmp_path / "bad.parquet")
        assert p.count() == 3000 + 2000


def test_lamina_serve_ray_routes_grpc_requests_to_the_shards(tmp_path: Path) -> None:
    """`lamina serve --ray` (its own local Ray): the SDK over gRPC creates a sharded, replicated
    collection and gets one node's answers; acknowledged writes survive SIGTERM and kill -9."""
    import subprocess
    import sys
    import urllib.request

    from lamina.testing import ServerProcess, free_port

    ids, vectors, payloads = _data(2000, 21)
    for i, p in enumerate(payloads):
        p["text"] = f"note {i} about {'lions' if i % 50 == 0 else 'cats'}"
    queries = vectors[:8] + 0.02
    data = tmp_path / "data"
    metrics_port = free_port()
    server = ServerProcess(data, "--ray", "--metrics-port", str(metrics_port), "--metrics-names")
    try:
        with lamina.connect(server.address) as remote, lamina.connect(str(tmp_path / "single")) as single:
            options: dict[str, Any] = {"payload_index": {"text": "text", "g": "int"}}
            col = remote.create_collection("c", DIM, "cosine", shards=3, replicas=2, **options)
            one = single.create_collection("c", DIM, "cosine", **options)
            assert (col.info().config.shards, col.info().config.replicas) == (3, 2)
            for c in (col, one):
                for lo in range(0, 2000, 500):
                    c.upsert(ids[lo : lo + 500], vectors[lo : lo + 500], payloads[lo : lo + 500])
            for flt in (None, {"g": {"$gte": 7}}):
                assert _same(
                    col.search_batch(queries, k=10, filter=flt, exact=True),
                    one.search_batch(queries, k=10, filter=flt, exact=True),
                )
            assert col.count() == 2000 and col.count({"g": 3}) == one.count({"g": 3})
            # hybrid: dense and BM25 rankings merged over the shards, then fused
            hits = col.query(vector=vectors[50], text="lions", k=5)
            assert hits[0].id == ids[50] and all("lions" in h.payload["text"] for h in hits[:3])
            assert {h.id for h in col.query(text="lions", k=40)} == {ids[i] for i in range(0, 2000, 50)}
            with pytest.raises(lamina.InvalidArgument, match="dim"):
                col.upsert([1], np.zeros((1, DIM + 1), np.float32))
            snap = col.snapshot()  # every shard at one cut
            assert snap.points == 2000 and [s.name for s in remote.list_snapshots("c")] == [snap.name]
        listed = subprocess.run(
            [sys.executable, "-m", "lamina", "collections", "-t", server.address],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "sharded on Ray: 3 shards x 2 replicas" in listed.stdout, listed.stderr
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
        )
        for shard in range(3):
            for replica in range(2):
                labels = f'collection="c",replica="{replica}",shard="{shard}"'
                assert f"lamina_replica_up{{{labels}}} 1.0" in scraped
                assert f"lamina_replica_behind_writes{{{labels}}} 0.0" in scraped
        assert server.terminate() == 0
        server = ServerProcess(data, "--ray")
        with lamina.connect(server.address) as remote:
            col = remote.get_collection("c")
            assert col.count() == 2000
            col.upsert(["after-restart"], vectors[:1])
        server.kill(group=True)  # kill -9 of the front end with its Ray and the replica actors
        server = ServerProcess(data, "--ray")
        with lamina.connect(server.address) as remote:
            col = remote.get_collection("c")
            assert col.count() == 2001 and col.get(["after-restart"])[0].id == "after-restart"
    finally:
        if server.proc.poll() is None:
            server.terminate()


def test_lamina_ingest_ray_loads_a_sharded_data_directory(cluster: None, tmp_path: Path) -> None:
    import subprocess
    import sys

    matrix = np.random.default_rng(4).standard_normal((3000, DIM)).astype(np.float32)
    np.save(tmp_path / "v.npy", matrix)
    root = tmp_path / "shards"
    cmd = [sys.executable, "-m", "lamina", "ingest", str(tmp_path / "v.npy"), "-c", "v", "-t", str(root)]
    done = subprocess.run(
        [*cmd, "--ray", "--shards", "3", "--replicas", "2", "--metric", "l2", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 shards x 2 replicas" in done.stderr and "with Ray tasks; it now holds 3000" in done.stderr
    refused = subprocess.run(
        [*cmd[:-2], "-t", "127.0.0.1:1", "--ray"], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "leave --ray out" in refused.stderr
    with ld.connect(root) as db:
        col = db.get_collection("v")
        assert (col.info().config.shards, col.info().config.replicas, col.count()) == (3, 2, 3000)
        assert col.search(matrix[123], k=1, exact=True)[0].id == 123
        assert all(r[0] == r[1] for r in _sharded(db, "v").replicas())


def test_sharded_snapshot_is_one_cut_and_restores_every_shard(cluster: None, tmp_path: Path) -> None:
    ids, vectors, payloads = _data(2400, 31)
    queries = vectors[:6] + 0.03
    root = tmp_path / "shards"
    with ld.connect(root) as db:
        col = db.create_collection("c", DIM, "cosine", shards=3, replicas=2, payload_index={"g": "int"})
        col.upsert(ids[:1600], vectors[:1600], payloads[:1600])
        # a writer keeps upserting while the snapshot is taken: the snapshot holds a prefix of its writes
        acked: list[int] = []

        def writer() -> None:
            for lo in range(1600, 2400, 40):
                col.upsert(ids[lo : lo + 40], vectors[lo : lo + 40], payloads[lo : lo + 40])
                acked.append(lo + 40)
                time.sleep(0.1)  # keeps writing while the snapshot is taken

        thread = threading.Thread(target=writer)
        thread.start()
        assert _wait(lambda: len(acked) >= 3, 30)
        snap = col.snapshot()
        thread.join(120)
        assert len(acked) == 20 and col.count() == 2400
        want = col.search_batch(queries, k=10, exact=True, filter={"g": {"$lt": 6}})

        restored = ld.restore_snapshot(db, snap.path, "copy")
        copy = db.get_collection("copy")
        assert (restored.config.shards, restored.config.replicas) == (3, 2)
        n = copy.count()
        assert n == snap.points and 1600 + 120 <= n < 2400 and (n - 1600) % 40 == 0  # whole batches only
        assert copy.get(ids[: n - 1 : 97]) == col.get(ids[: n - 1 : 97])
        assert all(r[0] == r[1] for r in _sharded(db, "copy").replicas())
        copy.upsert(ids[n:], vectors[n:], payloads[n:])  # writes carry on on every replica
        assert _same(copy.search_batch(queries, k=10, exact=True, filter={"g": {"$lt": 6}}), want)

        assert [s.name for s in db.list_snapshots("c")] == [snap.name]
        with pytest.raises(lamina.FailedPrecondition, match="restore --ray"):
            lamina.restore_snapshot(snap.path, tmp_path / "plain")  # one node cannot take it
        manifest = orjson.loads((Path(snap.path) / "snapshot.json").read_bytes())
        parts = [Path(p["path"]) for p in manifest["shards"]]
        assert len(parts) == 3 and all(p.is_dir() for p in parts)
        db.delete_snapshot("c", snap.name)
        assert db.list_snapshots("c") == [] and not any(p.exists() for p in parts)


def test_every_shard_knows_the_payload_keys_any_shard_has_seen(cluster: None, tmp_path: Path) -> None:
    # with payload indexes a filter on a key no point has is refused as a typo; a key only one shard's
    # points carry must still be accepted by every shard, as one node accepts it
    ids, vectors, payloads = _data(400, 41)
    payloads[123] = {"g": 3, "rare": "x"}
    single = lamina.connect(str(tmp_path / "single"))
    try:
        for reopen in (False, True):
            with ld.connect(tmp_path / "shards") as db:
                if not reopen:
                    col = db.create_collection("c", DIM, "cosine", shards=4, payload_index={"g": "int"})
                    col.upsert(ids, vectors, payloads)
                    one = single.create_collection("c", DIM, "cosine", payload_index={"g": "int"})
                    one.upsert(ids, vectors, payloads)
                col = db.get_collection("c")
                assert col.count({"rare": "x"}) == one.count({"rare": "x"}) == 1
                assert col.count({"$not": {"rare": "x"}}) == one.count({"$not": {"rare": "x"}}) == 399
                assert [h.id for h in col.search(vectors[5], k=3, filter={"rare": "x"})] == [ids[123]]
                with pytest.raises(lamina.InvalidArgument, match="unknown field 'rrare'"):
                    col.count({"rrare": "x"})
    finally:
        single.close()


def test_a_read_stops_on_the_shards_with_its_deadline(cluster: None, tmp_path: Path) -> None:
    """The request's deadline travels with each shard read: the replicas stop their own work
    when it passes (their DeadlineExceeded, not the router's), as one node's engine does."""
    from lamina.engine import bounds

    ids, vectors, payloads = _data(6000, 31)
    db = ld.connect(tmp_path / "shards")
    try:
        col = db.create_collection("c", DIM, "l2", shards=2)
        col.upsert(ids, vectors, [{**p, "w": i} for i, p in enumerate(payloads)])
        sc = _sharded(db, "c")
        unindexed = {"w": {"$gte": 0}}  # a scan of stored payloads, checking the deadline as it goes
        assert sc.count(unindexed) == 6000  # no deadline: the whole answer
        with bounds.running(bounds.Deadline(3600)):
            assert sc.count(unindexed) == 6000  # a distant one: the same
        with bounds.running(bounds.Deadline(0.0)), pytest.raises(lamina.DeadlineExceeded) as stopped:
            sc.count(unindexed)
        assert "the work was stopped" in str(stopped.value)  # raised by a replica's own check
        assert sc.count(unindexed) == 6000  # and the shards serve on
    finally:
        db.close()


def test_text_in_and_out_on_a_sharded_collection(cluster: None, tmp_path: Path) -> None:
    """A sharded collection with the built-in model embeds once, in the router, and answers
    text searches and hybrid queries as one node does over the same documents."""
    docs = [
        f"paragraph {i}: " + ("roses are pruned in late winter" if i % 7 == 0 else f"tide table {i}")
        for i in range(60)
    ]
    sharded = ld.connect(tmp_path / "shards")
    single = lamina.connect(str(tmp_path / "single"))
    try:
        cols = [
            sharded.create_collection("kb", embedding="minilm", shards=3),
            single.create_collection("kb", embedding="minilm"),
        ]
        for col in cols:
            col.add(documents=docs, ids=list(range(60)), payloads=[{"i": i} for i in range(60)])
        assert cols[0].dim == 384 and _sharded(sharded, "kb").info().count == 60
        got, want = (c.search("when should I cut back my roses?", k=5) for c in cols)
        assert [h.id for h in got] == [h.id for h in want] and all(h.id % 7 == 0 for h in got)
        assert got[0].payload == {"i": got[0].id, "document": docs[got[0].id]}
        roses = {i for i in range(60) if i % 7 == 0}  # nine documents, tied in BM25 but for their number
        assert {h.id for h in cols[0].query(text="roses winter", k=9)} == roses
        assert {h.id for h in cols[1].query(text="roses winter", k=9)} == roses
    finally:
        sharded.close()
        single.close()
