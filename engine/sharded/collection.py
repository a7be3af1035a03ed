"""The Collection interface of a sharded collection: each call checked as one node
checks it, routed to the shards that hold its points (engine/sharded/replication.py),
and the shards' answers merged (top-k by score, hybrid fusion here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lamina.errors import InvalidArgument, NotFound
from lamina.storage.keys import id_key
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    Hit,
    IndexStatus,
    Payload,
    Point,
    PointId,
    QueryPlan,
    SearchParams,
    TenantInfo,
)
from lamina.validation import as_matrix, as_query, check_directions, check_ids, check_k, check_points

from ..fusion import fuse, fusion_depth
from ..protocol import CollectionProtocol
from .replication import Replication
from .snapshots import ShardSnapshots

if TYPE_CHECKING:
    from .database import ShardedDatabase


class ShardedCollection(Replication, ShardSnapshots, CollectionProtocol):
    """A collection split over shards of replica actors; the methods of the engine's
    ``Collection`` that the server and the SDK call, with the same arguments."""

    def __init__(self, db: ShardedDatabase, name: str, config: CollectionConfig) -> None:
        super().__init__(db, name, config)
        self._open_shards()

    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: object,
        payloads: Sequence[Payload | None] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Insert or replace points, each on its shard. Everything is checked before any shard
        is written; each shard's part is atomic and on every replica when this returns."""
        self._check_tenant(tenant, write=True)
        id_list, matrix, _ = check_points(ids, vectors, payloads, self.config.dim, self._db.limits)
        if self.config.metric == "cosine":
            check_directions(np.einsum("ij,ij->i", matrix, matrix))
        if payloads is not None:
            self.learn([key for p in payloads if isinstance(p, dict) for key in p])
        parts = {
            shard: (
                "upsert",
                (
                    [id_list[p] for p in pos],
                    matrix[pos],
                    [payloads[p] for p in pos] if payloads is not None else None,
                ),
                {"tenant": tenant},
            )
            for shard, pos in self._split(id_list).items()
        }
        return int(sum(self._write(parts)))

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Any = None, tenant: str | None = None
    ) -> int:
        """Delete by ids (each on its shard) or by filter (on every shard); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        self._check_tenant(tenant, write=True)
        parts: dict[int, tuple[str, tuple[Any, ...], dict[str, Any]]]
        if ids is not None:
            id_list = check_ids(ids, self._db.limits, unique=False)
            parts = {
                s: ("delete", ([id_list[p] for p in pos],), {"tenant": tenant})
                for s, pos in self._split(id_list).items()
            }
        else:
            self._check_filter(filter)
            parts = {
                s: ("delete", (), {"filter": filter, "tenant": tenant}) for s in range(self.config.shards)
            }
        return int(sum(self._write(parts)))

    def delete_tenant(self, tenant: str) -> int:
        """Delete a tenant on every shard; NotFound when no shard has it."""
        self._check_tenant(tenant, write=True)
        owners = {
            s for s, names in enumerate(self._every("list_tenants")) if any(t.name == tenant for t in names)
        }
        if not owners:
            raise NotFound(f"tenant {tenant!r} of collection {self.name!r} does not exist")
        return int(sum(self._write({s: ("delete_tenant", (tenant,), {}) for s in sorted(owners)})))

    def create_payload_index(self, field: str, kind: str) -> bool:
        changed = self._write(
            {s: ("create_payload_index", (field, kind), {}) for s in range(self.config.shards)}
        )
        self.config = replace(self.config, payload_index={**self.config.payload_index, field: kind})
        self._db.save_catalog()
        return any(changed)

    def drop_payload_index(self, field: str) -> bool:
        changed = self._write({s: ("drop_payload_index", (field,), {}) for s in range(self.config.shards)})
        self.config = replace(
            self.config, payload_index={f: k for f, k in self.config.payload_index.items() if f != field}
        )
        self._db.save_catalog()
        return any(changed)

    def count(self, filter: Any = None, tenant: str | None = None) -> int:
        self._check_tenant(tenant)
        return int(sum(self._every("count", filter, tenant=tenant)))

    def get(
        self,
        ids: Sequence[PointId],
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> list[Point]:
        """Points for ``ids`` in the order asked; missing ids are left out."""
        self._check_tenant(tenant)
        id_list = check_ids(ids, self._db.limits, unique=False)
        parts = self._split(id_list)
        kwargs = {"with_payload": with_payload, "with_vector": with_vector, "tenant": tenant}
        found = self._read("get", [(s, ([id_list[p] for p in pos],), kwargs) for s, pos in parts.items()])
        by_id = {p.id: p for points in found for p in points}
        return [by_id[i] for i in id_list if i in by_id]

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> tuple[list[Point], PointId | None]:
        """One page in id order, merged from every shard's page from ``offset``."""
        self._check_tenant(tenant)
        pages = self._every("scroll", limit, offset, filter, with_payload, with_vector, tenant=tenant)
        merged = sorted(((id_key(p.id), p) for points, _ in pages for p in points), key=lambda kp: kp[0])
        rest = [nxt for _, nxt in pages if nxt is not None]
        points = [p for _, p in merged[:limit]]
        if len(merged) > limit:
            return points, merged[limit][1].id
        # every shard's page fit: the next offset is the lowest id a shard has after its page
        return points, min(rest, key=id_key) if rest else None

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant with its points summed over the shards."""
        if not self.config.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant: it has no tenants")
        points: dict[str, int] = {}
        indexed: dict[str, bool] = {}
        for names in self._every("list_tenants"):
            for t in names:
                points[t.name] = points.get(t.name, 0) + t.points
                indexed[t.name] = indexed.get(t.name, False) or t.indexed
        return [TenantInfo(n, points[n], indexed[n]) for n in sorted(points)]

    def _merge(self, per_shard: list[list[Hit]], k: int) -> list[Hit]:
        hits = [h for shard_hits in per_shard for h in shard_hits]
        hits.sort(key=lambda h: h.score, reverse=self.config.metric != "l2")  # l2 scores are distances
        return hits[:k]

    def search(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """The global top ``k``: each shard's top ``k``, merged."""
        query = as_query(vector, self.config.dim)
        return self.search_batch(query[None, :], k, filter, with_payload, with_vector, params, None, tenant)[
            0
        ]

    def search_batch(
        self,
        vectors: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        alive: Callable[[], None] | None = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """Each shard answers its top ``k`` per query (all shards at once); the merge keeps
        the best ``k``. ``alive`` is checked before the scatter and before the merge."""
        self._check_tenant(tenant)
        queries = as_matrix(vectors, self.config.dim, "query vectors")
        k = check_k(k, self._db.limits)
        self._check_filter(filter)
        if alive is not None:
            alive()
        parts = self._every(
            "search_batch", queries, k, filter, with_payload, with_vector, params, tenant=tenant
        )
        if alive is not None:
            alive()
        return [self._merge(list(per_query), k) for per_query in zip(*parts, strict=True)]

    def search_explained(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> tuple[list[Hit], QueryPlan]:
        """``search`` with every shard's plan: their segment plans one after another."""
        self._check_tenant(tenant)
        answers = self._every(
            "search_explained", vector, k, filter, with_payload, with_vector, params, tenant=tenant
        )
        hits = self._merge([h for h, _ in answers], check_k(k, self._db.limits))
        plans = [p for _, p in answers]
        return hits, QueryPlan(
            segments=[s for p in plans for s in p.segments],
            indexed_fields=plans[0].indexed_fields,
            unindexed_fields=plans[0].unindexed_fields,
            hits=len(hits),
            seconds=max(p.seconds for p in plans),
        )

    def explain(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> QueryPlan:
        return self.search_explained(vector, k, filter, False, False, params, tenant)[1]

    def query(
        self,
        vector: object = None,
        text: str | None = None,
        k: int = 10,
        filter: Any = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        text_field: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """Hybrid search: the dense and the BM25 rankings are each merged over the shards
        and then fused here, as one node fuses them. BM25 weighs terms by each shard's own
        document frequencies (as most distributed engines do by default)."""
        self._check_tenant(tenant)
        if vector is None or text is None:  # one ranking: merged by score
            per_shard = self._every(
                "query",
                vector,
                text,
                k,
                filter,
                fusion,
                weights,
                text_field,
                with_payload,
                with_vector,
                params,
                tenant=tenant,
            )
            if vector is None:
                hits = [h for hs in per_shard for h in hs]
                hits.sort(key=lambda h: h.score, reverse=True)  # BM25: higher is better
                return hits[: check_k(k, self._db.limits)]
            return self._merge(per_shard, check_k(k, self._db.limits))
        k = check_k(k, self._db.limits)
        depth = fusion_depth(k, self._db.limits.max_k)
        dense = self.query(
            vector,
            None,
            depth,
            filter,
            fusion,
            weights,
            text_field,
            with_payload,
            with_vector,
            params,
            tenant,
        )
        sparse = self.query(
            None, text, depth, filter, fusion, weights, text_field, with_payload, with_vector, params, tenant
        )
        w = (1.0, 1.0) if weights is None else tuple(weights)
        by_id = {id_key(h.id): h for h in (*dense, *sparse)}
        keys = sorted(by_id)
        pos = {key: i for i, key in enumerate(keys)}
        sign = -1.0 if self.config.metric == "l2" else 1.0  # fuse expects higher-is-better scores
        rankings = [
            (
                np.array([pos[id_key(h.id)] for h in hits], np.int64),
                np.array([sign * h.score if hits is dense else h.score for h in hits], np.float32),
            )
            for hits in (dense, sparse)
        ]
        rows, scores = fuse(rankings, fusion, w, k)
        return [
            replace(by_id[keys[r]], score=float(s))
            for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def info(self) -> CollectionInfo:
        """Counts and index status summed over one replica of every shard."""
        infos: list[CollectionInfo] = self._every("info")
        st = [i.status for i in infos]
        tenants = len(self.list_tenants()) if self.config.multi_tenant else 0
        status = IndexStatus(
            segments=sum(s.segments for s in st),
            indexed_points=sum(s.indexed_points for s in st),
            mutable_points=sum(s.mutable_points for s in st),
            index_bytes=sum(s.index_bytes for s in st),
            note="; ".join(sorted({s.note for s in st if s.note})),
            optimizing=any(s.optimizing for s in st),
            tenants=tenants,
            tenant_partitions=sum(s.tenant_partitions for s in st),
        )
        return CollectionInfo(self.name, self.config, sum(i.count for i in infos), status)

    def optimize(self, timeout: float | None = None) -> bool:
        """Seal and index pending points on every replica of every shard."""
        self._check_open()
        ray = self._ray
        refs = [s.handle.read.remote(0, "optimize", (timeout,), {}) for slots in self._slots for s in slots]
        return all(ray.get(refs))
