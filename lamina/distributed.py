"""Sharded Lamina on Ray (first slice of issue 9): a collection split by id hash over shard actors.

Each shard is a Ray actor that owns an embedded Lamina (its own data directory, RocksDB, optimizer).
``ShardedClient`` routes every write to the shard owning the id, sends reads by id to their shards,
and scatters searches to every shard, merging the per-shard top-k into the global top-k. Ray places
the actors and restarts them; no protocol of our own runs between them.

Install with ``pip install "laminadb[ray]"``::

    import ray, lamina.distributed as ld
    ray.init()
    db = ld.ShardedClient("/data/lamina-shards", shards=4)
    col = db.create_collection("docs", dim=384)
    col.upsert(ids, vectors, payloads)
    hits = col.search(query, k=10, filter={"lang": "en"})

Not yet here (issue 9 continues): replication and read failover, ``lamina serve --ray`` (the gRPC
front end), Ray Data ingest, the capacity plan and the benchmark.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamina.config import DEFAULT_LIMITS as _LIMITS
from lamina.errors import InvalidArgument
from lamina.types import Filter, Hit, Payload, Point, PointId
from lamina.validation import as_rows, as_vector, check_ids

ray: Any
try:
    import ray
except ImportError:  # the extra is not installed: ShardedClient says how to get it
    ray = None


def shard_of(point_id: PointId, shards: int) -> int:
    """The shard owning ``point_id``: CRC-32 of its canonical bytes, so every process (and
    every restart) agrees, unlike Python's salted ``hash``."""
    raw = point_id.to_bytes(8, "big") if isinstance(point_id, int) else b"s" + point_id.encode("utf-8")
    return zlib.crc32(raw) % shards


class _Shard:
    """One shard: an embedded Lamina over its own data directory (runs as a Ray actor)."""

    def __init__(self, path: str) -> None:
        import lamina

        self.db = lamina.connect(path)

    def create_collection(self, name: str, dim: int, metric: str, options: dict[str, Any]) -> None:
        self.db.create_collection(name, dim, metric, **options)  # type: ignore[arg-type]

    def upsert(
        self, name: str, ids: list[PointId], vectors: np.ndarray, payloads: list[Payload | None] | None
    ) -> int:
        return self.db.get_collection(name).upsert(ids, vectors, payloads)

    def search_batch(
        self, name: str, queries: np.ndarray, k: int, options: dict[str, Any]
    ) -> list[list[Hit]]:
        return self.db.get_collection(name).search_batch(queries, k, **options)

    def get(self, name: str, ids: list[PointId], options: dict[str, Any]) -> list[Point]:
        return self.db.get_collection(name).get(ids, **options)

    def count(self, name: str, filter: Filter | None) -> int:
        return self.db.get_collection(name).count(filter)

    def delete(self, name: str, ids: list[PointId] | None, filter: Filter | None) -> int:
        return self.db.get_collection(name).delete(ids=ids, filter=filter)

    def optimize(self, name: str) -> None:
        self.db.get_collection(name).optimize()

    def close(self) -> None:
        self.db.close()


class ShardedClient:
    """A Lamina whose collections are split over ``shards`` Ray actors, each with a data
    directory ``<root>/shard-<i>``. Call ``ray.init(...)`` first (a local or a remote cluster)."""

    def __init__(self, root: str | Path, shards: int = 2) -> None:
        if ray is None:
            raise InvalidArgument('sharding needs Ray: pip install "laminadb[ray]"')
        if not ray.is_initialized():
            raise InvalidArgument("call ray.init(...) before ShardedClient (a local or a cluster address)")
        if shards < 1:
            raise InvalidArgument(f"shards must be at least 1, got {shards}")
        actor = ray.remote(_Shard)
        self.shards = [actor.remote(str(Path(root) / f"shard-{i}")) for i in range(shards)]

    def create_collection(
        self, name: str, dim: int, metric: str = "cosine", **options: Any
    ) -> ShardedCollection:
        """Create the collection on every shard (options as ``Client.create_collection``)."""
        ray.get([s.create_collection.remote(name, dim, metric, options) for s in self.shards])
        return ShardedCollection(self, name, dim, metric)

    def close(self) -> None:
        ray.get([s.close.remote() for s in self.shards])
        for shard in self.shards:
            ray.kill(shard)


class ShardedCollection:
    """Writes go to the shard owning each id; searches go to every shard and are merged."""

    def __init__(self, client: ShardedClient, name: str, dim: int, metric: str) -> None:
        self._shards = client.shards
        self.name = name
        self.dim = dim
        self.metric = metric

    def _split(self, ids: Sequence[PointId]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard."""
        parts: dict[int, list[int]] = {}
        for pos, pid in enumerate(ids):
            parts.setdefault(shard_of(pid, len(self._shards)), []).append(pos)
        return parts

    def upsert(
        self, ids: Sequence[PointId], vectors: Any, payloads: Sequence[Payload | None] | None = None
    ) -> int:
        """Insert or replace points, each on its shard; every shard's part is atomic and durable
        when this returns (a batch spanning shards is not atomic as a whole)."""
        id_list = check_ids(ids, _LIMITS)
        matrix = as_rows(vectors)
        if matrix.shape[0] != len(id_list):
            raise InvalidArgument(f"{len(id_list)} ids but {matrix.shape[0]} vectors: give one vector per id")
        calls = []
        for shard, pos in self._split(id_list).items():
            part = [payloads[p] for p in pos] if payloads is not None else None
            calls.append(
                self._shards[shard].upsert.remote(self.name, [id_list[p] for p in pos], matrix[pos], part)
            )
        return int(sum(ray.get(calls)))

    def search(self, vector: Any, k: int = 10, filter: Filter | None = None, **options: Any) -> list[Hit]:
        """The global top ``k`` (options as ``Collection.search``)."""
        return self.search_batch(as_vector(vector)[None, :], k, filter, **options)[0]

    def search_batch(
        self, vectors: Any, k: int = 10, filter: Filter | None = None, **options: Any
    ) -> list[list[Hit]]:
        """Each shard answers its top ``k`` per query; the merge keeps the best ``k`` of them."""
        queries = as_rows(vectors, "query vectors")
        parts = ray.get(
            [
                s.search_batch.remote(self.name, queries, k, {"filter": filter, **options})
                for s in self._shards
            ]
        )
        lower_is_better = self.metric == "l2"  # l2 scores are distances
        merged = []
        for per_query in zip(*parts, strict=True):
            hits = [h for shard_hits in per_query for h in shard_hits]
            hits.sort(key=lambda h: h.score, reverse=not lower_is_better)
            merged.append(hits[:k])
        return merged

    def get(self, ids: Sequence[PointId], **options: Any) -> list[Point]:
        """Points for ``ids`` in the order asked; missing ids are left out."""
        id_list = check_ids(ids, _LIMITS, unique=False)
        parts = self._split(id_list)
        found = ray.get(
            [
                self._shards[s].get.remote(self.name, [id_list[p] for p in pos], options)
                for s, pos in parts.items()
            ]
        )
        by_id = {p.id: p for points in found for p in points}
        return [by_id[i] for i in id_list if i in by_id]

    def count(self, filter: Filter | None = None) -> int:
        return int(sum(ray.get([s.count.remote(self.name, filter) for s in self._shards])))

    def delete(self, ids: Sequence[PointId] | None = None, filter: Filter | None = None) -> int:
        """Delete by ids (each on its shard) or by filter (on every shard); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        if ids is not None:
            id_list = check_ids(ids, _LIMITS, unique=False)
            calls = [
                self._shards[s].delete.remote(self.name, [id_list[p] for p in pos], None)
                for s, pos in self._split(id_list).items()
            ]
        else:
            calls = [s.delete.remote(self.name, None, filter) for s in self._shards]
        return int(sum(ray.get(calls)))

    def optimize(self) -> None:
        """Seal and index every shard's pending points, waiting until done."""
        ray.get([s.optimize.remote(self.name) for s in self._shards])
