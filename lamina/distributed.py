"""Sharded, replicated Lamina on Ray (issue 9, in progress): collections split by id hash over shard actors.

Each shard is kept by ``replicas`` Ray actors, each owning an embedded Lamina (its own data directory,
RocksDB, optimizer). ``ShardedClient`` routes every write to the shard owning the id and acknowledges it
when every replica of that shard has applied it; reads by id go to one replica of their shard, and
searches are scattered to one replica of every shard and merged into the global top-k. A read whose
replica dies is sent to another replica of the shard. Ray places the actors and restarts a dead one
(``max_restarts``) over its durable data directory; a write to a restarting replica is retried by Ray
once it is back (writes are idempotent upserts and deletes), so both replicas hold every acknowledged
write. No protocol of our own runs between the actors.

Install with ``pip install "laminadb[ray]"``::

    import ray, lamina.distributed as ld
    ray.init()
    db = ld.ShardedClient("/data/lamina-shards", shards=4)
    col = db.create_collection("docs", dim=384)
    col.upsert(ids, vectors, payloads)
    hits = col.search(query, k=10, filter={"lang": "en"})

Not yet here (issue 9 continues): ``lamina serve --ray`` (the gRPC front end), tenants, Ray Data
ingest, the capacity plan and the benchmark.
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
    """A Lamina whose collections are split over ``shards`` shards of ``replicas`` Ray actors each,
    with data directories ``<root>/shard-<i>/replica-<j>``. Call ``ray.init(...)`` first (a local
    or a remote cluster)."""

    def __init__(self, root: str | Path, shards: int = 2, replicas: int = 1) -> None:
        if ray is None:
            raise InvalidArgument('sharding needs Ray: pip install "laminadb[ray]"')
        if not ray.is_initialized():
            raise InvalidArgument("call ray.init(...) before ShardedClient (a local or a cluster address)")
        if shards < 1 or replicas < 1:
            raise InvalidArgument(f"shards and replicas must be at least 1, got {shards} and {replicas}")
        # a dead actor is restarted over its data directory; its pending calls are sent again
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(_Shard)
        self.replicas: list[list[Any]] = [
            [actor.remote(str(Path(root) / f"shard-{i}" / f"replica-{j}")) for j in range(replicas)]
            for i in range(shards)
        ]
        self._turn = 0

    def create_collection(
        self, name: str, dim: int, metric: str = "cosine", **options: Any
    ) -> ShardedCollection:
        """Create the collection on every replica of every shard (options as ``Client.create_collection``)."""
        ray.get([r.create_collection.remote(name, dim, metric, options) for rs in self.replicas for r in rs])
        return ShardedCollection(self, name, dim, metric)

    def write(self, shard: int, method: str, *args: Any) -> Any:
        """Apply a write on every replica of ``shard``; the answer once all have applied it."""
        return ray.get([getattr(r, method).remote(*args) for r in self.replicas[shard]])[0]

    def read(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """Send each ``(shard, args)`` read to one replica of its shard (taking turns), all at
        once; a read whose replica is dead is sent to the next replica of that shard."""
        self._turn += 1

        def send(shard: int, args: tuple[Any, ...], attempt: int) -> Any:
            replicas = self.replicas[shard]
            replica = replicas[(self._turn + attempt) % len(replicas)]
            # no retry on this replica: another one answers now
            return getattr(replica, method).options(max_task_retries=0).remote(*args)

        answers = []
        for (shard, args), ref in zip(calls, [send(s, a, 0) for s, a in calls], strict=True):
            attempt = 0
            while True:
                try:
                    answers.append(ray.get(ref))
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    attempt += 1
                    if attempt == len(self.replicas[shard]):
                        raise
                    ref = send(shard, args, attempt)
        return answers

    def close(self) -> None:
        ray.get([r.close.remote() for rs in self.replicas for r in rs])
        for rs in self.replicas:
            for replica in rs:
                ray.kill(replica, no_restart=True)


class ShardedCollection:
    """Writes go to the shard owning each id; searches go to every shard and are merged."""

    def __init__(self, client: ShardedClient, name: str, dim: int, metric: str) -> None:
        self._client = client
        self._count = len(client.replicas)
        self.name = name
        self.dim = dim
        self.metric = metric

    def _split(self, ids: Sequence[PointId]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard."""
        parts: dict[int, list[int]] = {}
        for pos, pid in enumerate(ids):
            parts.setdefault(shard_of(pid, self._count), []).append(pos)
        return parts

    def upsert(
        self, ids: Sequence[PointId], vectors: Any, payloads: Sequence[Payload | None] | None = None
    ) -> int:
        """Insert or replace points, each on its shard; every shard's part is atomic and durable on
        every replica when this returns (a batch spanning shards is not atomic as a whole)."""
        id_list = check_ids(ids, _LIMITS)
        matrix = as_rows(vectors)
        if matrix.shape[0] != len(id_list):
            raise InvalidArgument(f"{len(id_list)} ids but {matrix.shape[0]} vectors: give one vector per id")
        written = 0
        for shard, pos in self._split(id_list).items():
            part = [payloads[p] for p in pos] if payloads is not None else None
            written += self._client.write(
                shard, "upsert", self.name, [id_list[p] for p in pos], matrix[pos], part
            )
        return written

    def search(self, vector: Any, k: int = 10, filter: Filter | None = None, **options: Any) -> list[Hit]:
        """The global top ``k`` (options as ``Collection.search``)."""
        return self.search_batch(as_vector(vector)[None, :], k, filter, **options)[0]

    def search_batch(
        self, vectors: Any, k: int = 10, filter: Filter | None = None, **options: Any
    ) -> list[list[Hit]]:
        """Each shard answers its top ``k`` per query; the merge keeps the best ``k`` of them."""
        queries = as_rows(vectors, "query vectors")
        args = (self.name, queries, k, {"filter": filter, **options})
        parts = self._client.read("search_batch", [(s, args) for s in range(self._count)])
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
        found = self._client.read(
            "get", [(s, (self.name, [id_list[p] for p in pos], options)) for s, pos in parts.items()]
        )
        by_id = {p.id: p for points in found for p in points}
        return [by_id[i] for i in id_list if i in by_id]

    def count(self, filter: Filter | None = None) -> int:
        return int(sum(self._client.read("count", [(s, (self.name, filter)) for s in range(self._count)])))

    def delete(self, ids: Sequence[PointId] | None = None, filter: Filter | None = None) -> int:
        """Delete by ids (each on its shard) or by filter (on every shard); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        if ids is not None:
            id_list = check_ids(ids, _LIMITS, unique=False)
            parts = self._split(id_list)
            return sum(
                self._client.write(s, "delete", self.name, [id_list[p] for p in pos], None)
                for s, pos in parts.items()
            )
        return sum(self._client.write(s, "delete", self.name, None, filter) for s in range(self._count))

    def optimize(self) -> None:
        """Seal and index every shard's pending points, waiting until done."""
        for shard in range(self._count):
            self._client.write(shard, "optimize", self.name)
