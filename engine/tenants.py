"""Tenants of a multi-tenant collection (after Curator: per-tenant speed at shared memory).

Every point of a multi-tenant collection belongs to one tenant, named by every read
and write. A tenant has a 4-byte code (``Tenants``; the name -> code map is a meta key
in RocksDB written in the batch of the tenant's first upsert) and its point ids are
keyed under the code's prefix (``storage.keys.tenant_prefix``), so ids are scoped by
tenant and a tenant's keys are one range.

Membership is a bitmap in effect: each sealed segment sorts its rows by tenant code
(``Segment.tenant_local`` answers a tenant's rows with two binary searches) and the
mutable segment keeps one code per row. Sealed segments of a multi-tenant collection
build no shared graph (every query names a tenant, so it would never be walked):

* a small tenant is searched exactly over its own rows (a gather from the memory-mapped
  vectors + the numba rerank kernel);
* a tenant that grows past ``tenant_index_rows`` is promoted by the optimizer, in the
  background, to a ``Partition``: an HNSW graph over its rows in sealed segments below
  the partition's ``bound``. Rows sealed later go into a second, delta graph once they
  are a sixteenth of the main one, and both are merged into one main graph when the
  delta reaches half of it; the rows past the last graph (few, or still mutable) are
  searched exactly;
* a partition whose tenant shrinks below half the threshold is dropped (demotion), and
  ``delete_tenant`` drops it at once with the tenant's points.

Partitions live in memory and are rebuilt by the optimizer after a restart; queries
are exact (and correct) meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hnswlib
import numpy as np
import orjson

from lamina.index.tiers import TopK, hnsw_index, hnsw_mark_deleted, hnsw_walk
from lamina.storage.keys import tenant_of_key
from lamina.types import CollectionConfig, FloatMatrix

#: a tenant's sealed rows past its graphs go into a delta graph once they reach this share
#: of the main graph (and a quarter of ``tenant_index_rows``)
DELTA_SHARE = 1 / 16
#: main and delta graphs are rebuilt as one when the delta reaches this share of the main
MERGE_SHARE = 0.5


class Tenants:
    """The name <-> code map of a collection's tenants (not thread-safe: the collection's
    writer lock guards changes; readers see a dict replaced on write)."""

    def __init__(self, raw: bytes | None) -> None:
        data: dict[str, Any] = orjson.loads(raw) if raw else {"names": {}, "next": 0}
        self.codes: dict[str, int] = dict(data["names"])
        self.next: int = int(data["next"])
        self.names: dict[int, str] = {c: n for n, c in self.codes.items()}

    def encode(self) -> bytes:
        return orjson.dumps({"names": self.codes, "next": self.next})

    def added(self, name: str) -> tuple[int, bytes]:
        """The code a new tenant gets and the meta value that records it (not yet applied)."""
        data = {"names": {**self.codes, name: self.next}, "next": self.next + 1}
        return self.next, orjson.dumps(data)

    def apply(self, raw: bytes) -> None:
        """Take the map from an encoded value once it is written."""
        fresh = Tenants(raw)
        self.codes, self.next, self.names = fresh.codes, fresh.next, fresh.names

    def without(self, name: str) -> bytes:
        return orjson.dumps({"names": {n: c for n, c in self.codes.items() if n != name}, "next": self.next})


class TenantFields:
    """The top-level payload keys each tenant's points have had (by tenant name), so that
    what a tenant-scoped request is told about fields ("unknown field ..., known fields:
    ...") comes from its own points and the declared schema, never from another tenant's.
    Kept like ``Tenants``: a meta value written in the batch of the upsert that adds a key
    (a sharded collection also tells every shard what a tenant's points on the others have)."""

    def __init__(self, raw: bytes | None) -> None:
        data: dict[str, list[str]] = orjson.loads(raw) if raw else {}
        self.by_tenant: dict[str, frozenset[str]] = {t: frozenset(f) for t, f in data.items()}

    @classmethod
    def learn(cls, store: Any, names: dict[int, str]) -> TenantFields:
        """The map rebuilt from the stored payloads (of a collection written before it was
        kept); ``names`` maps tenant codes to names."""
        found: dict[str, set[str]] = {}
        rows: list[int] = []
        payloads: list[Any] = []

        def flush() -> None:
            for key, payload in zip(store.id_keys_of(rows), payloads, strict=True):
                tenant = names.get(tenant_of_key(key)) if key is not None else None
                if tenant is not None and isinstance(payload, dict):
                    found.setdefault(tenant, set()).update(payload)
            rows.clear()
            payloads.clear()

        for row, blob in store.scan_payloads():
            rows.append(row)
            payloads.append(orjson.loads(blob))
            if len(rows) >= 65_536:
                flush()
        flush()
        fields = cls(None)
        fields.by_tenant = {t: frozenset(f) for t, f in found.items()}
        return fields

    def encode(self, by_tenant: dict[str, frozenset[str]] | None = None) -> bytes:
        return orjson.dumps(
            {t: sorted(f) for t, f in (self.by_tenant if by_tenant is None else by_tenant).items()}
        )

    def of(self, tenant: str) -> frozenset[str]:
        return self.by_tenant.get(tenant, frozenset())

    def added(self, tenant: str, names: set[str] | frozenset[str]) -> bytes | None:
        """The meta value recording ``names`` for ``tenant``; None when it knew them all."""
        if names <= self.of(tenant):
            return None
        return self.encode({**self.by_tenant, tenant: self.of(tenant) | names})

    def without(self, tenant: str) -> bytes:
        return self.encode({t: f for t, f in self.by_tenant.items() if t != tenant})

    def apply(self, raw: bytes) -> None:
        self.by_tenant = TenantFields(raw).by_tenant


class Partition:
    """An HNSW graph over one tenant's rows in sealed segments from row ``lo`` to below
    ``bound``; labels are global row numbers, deleted rows are marked in the graph."""

    def __init__(
        self, code: int, lo: int, bound: int, rows: np.ndarray, index: hnswlib.Index, metric: int
    ) -> None:
        self.code = code
        self.lo = lo
        self.bound = bound
        self.rows = rows  # ascending global rows it was built over
        self.index = index
        self.metric = metric
        self.dead = 0

    @classmethod
    def build(
        cls,
        code: int,
        lo: int,
        bound: int,
        rows: np.ndarray,
        vectors: FloatMatrix,
        config: CollectionConfig,
        metric: int,
        threads: int,
    ) -> Partition:
        index = hnsw_index(config, metric, rows.size)
        index.add_items(np.ascontiguousarray(vectors), rows.astype(np.int64), num_threads=threads)
        return cls(code, lo, bound, rows, index, metric)

    @property
    def live_count(self) -> int:
        return int(self.rows.size) - self.dead

    def kill(self, rows: Sequence[int] | np.ndarray) -> None:
        """Mark those global ``rows`` that the graph holds as deleted."""
        arr = np.asarray(rows, dtype=np.int64)
        if not arr.size or not self.rows.size:
            return
        pos = np.minimum(np.searchsorted(self.rows, arr), self.rows.size - 1)
        self.dead += hnsw_mark_deleted(self.index, arr[self.rows[pos] == arr].tolist())

    def search(self, queries: FloatMatrix, n: int, ef: int) -> TopK | None:
        """Top-n (kernel scores, global rows, counts) among its live rows; None when the
        graph cannot return n (too few live rows reachable): the caller answers exactly."""
        n = min(n, self.live_count)
        if n <= 0:
            return None
        found = hnsw_walk(self.index, queries, n, ef, self.metric)
        if found is None:
            return None
        return found[0], found[1], np.full(queries.shape[0], n, dtype=np.int64)

    def nbytes(self) -> int:
        """Memory of the graph: vectors, links and labels (hnswlib's layout, estimated)."""
        cap = self.index.get_max_elements()
        per = self.index.dim * 4 + 8 + 4 + 2 * self.index.M * 4
        return cap * per + int(self.rows.nbytes)
