"""Sharded collections on a local Ray cluster (issue 9, first slice): the same answers as one node."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

import lamina
from lamina.distributed import ShardedClient, shard_of

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


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sharded_collection_answers_as_one_node(cluster: None, tmp_path: Path, metric: str) -> None:
    rng = np.random.default_rng(5)
    ids: list[Any] = [i if i % 3 else f"doc-{i}" for i in range(3000)]
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    payloads = [{"g": i % 10} for i in range(3000)]
    queries = rng.standard_normal((15, DIM)).astype(np.float32)

    sharded = ShardedClient(tmp_path / "shards", shards=3)
    single = lamina.connect(str(tmp_path / "single"))
    try:
        cols = [sharded.create_collection("c", DIM, metric), single.create_collection("c", DIM, metric)]
        for col in cols:
            for lo in range(0, 3000, 1000):
                assert (
                    col.upsert(ids[lo : lo + 1000], vectors[lo : lo + 1000], payloads[lo : lo + 1000]) == 1000
                )
        sc, one = cols
        # every shard holds part of the data
        owners = {shard_of(i, 3) for i in ids}
        assert owners == {0, 1, 2}
        for flt in (None, {"g": {"$in": [1, 4]}}):
            got = sc.search_batch(queries, k=12, filter=flt, exact=True)
            want = one.search_batch(queries, k=12, filter=flt, exact=True)
            assert _same(got, want)
            assert _same([sc.search(queries[0], k=5, filter=flt, exact=True)], [want[0][:5]])
        assert sc.count() == one.count() == 3000 and sc.count({"g": 3}) == one.count({"g": 3})
        asked = [ids[7], "missing", ids[2999], ids[3]]
        assert [(p.id, p.payload) for p in sc.get(asked)] == [(p.id, p.payload) for p in one.get(asked)]
        assert sc.delete(ids=ids[:100]) == one.delete(ids=ids[:100]) == 100
        assert sc.delete(filter={"g": 9}) == one.delete(filter={"g": 9})
        sc.optimize()
        one.optimize()
        assert _same(sc.search_batch(queries, k=12, exact=True), one.search_batch(queries, k=12, exact=True))
        with pytest.raises(lamina.InvalidArgument, match="one vector per id"):
            sc.upsert([1, 2], vectors[:1])
    finally:
        sharded.close()
        single.close()


def test_shard_of_is_stable_across_processes() -> None:
    # CRC-32 of the id's canonical bytes: fixed values, not Python's per-process salted hash
    assert [shard_of(i, 4) for i in (0, 1, 2, 12345)] == [shard_of(i, 4) for i in (0, 1, 2, 12345)]
    assert shard_of(1, 4) == __import__("zlib").crc32((1).to_bytes(8, "big")) % 4
    assert shard_of("a", 4) == __import__("zlib").crc32(b"sa") % 4


def test_a_replica_killed_mid_query_loses_no_write_and_reads_go_on(cluster: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    client = ShardedClient(tmp_path / "shards", shards=2, replicas=2)
    try:
        col = client.create_collection("c", DIM, "l2")
        col.upsert(list(range(2000)), vectors[:2000])

        # a replica killed and restarted by Ray over its data directory: a write is acknowledged only
        # once both replicas of its shard applied it (the restarted one included), none is lost
        ray.kill(client.replicas[0][0], no_restart=False)
        assert col.upsert(list(range(2000, 3000)), vectors[2000:]) == 1000
        for shard, replicas in enumerate(client.replicas):
            counts = [ray.get(r.count.remote("c", None)) for r in replicas]
            assert counts[0] == counts[1] == sum(1 for i in range(3000) if shard_of(i, 2) == shard)

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
        ray.kill(client.replicas[1][1], no_restart=True)
        at_kill = len(answers)
        time.sleep(1.0)
        stop.set()
        thread.join(60)
        assert not errors, errors[:1]
        assert len(answers) > at_kill + 4 and set(answers) <= {10, 4}  # reads went on, complete
        with lamina.connect(str(tmp_path / "single")) as single:
            one = single.create_collection("c", DIM, "l2")
            for lo in range(0, 3000, 1000):
                one.upsert(list(range(lo, lo + 1000)), vectors[lo : lo + 1000])
            for _ in range(4):  # both replicas' turns: the dead one's are answered by its peer
                assert _same(
                    col.search_batch(queries, k=10, exact=True), one.search_batch(queries, k=10, exact=True)
                )
            assert col.count() == 3000
    finally:
        client.replicas[1] = client.replicas[1][:1]  # the lost replica is gone: close the others
        client.close()
