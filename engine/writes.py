"""The write path: upsert, delete (by ids, by filter, a whole tenant). RocksDB first,
in one write batch per request, then the mutable segment; a rejected request raises
before anything is written. Every write gives points fresh rows; the rows of replaced
or deleted points are killed in every segment (tombstones the optimizer compacts)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from lamina.errors import InvalidArgument, NotFound
from lamina.storage.keys import tenant_prefix
from lamina.storage.rocks import FIELDS, TENANT_FIELDS, TENANTS
from lamina.types import Payload, PointId
from lamina.validation import check_ids, check_points

from .optimizer.compaction import COMPACT_DEAD_FRACTION
from .planner import Planner

log = logging.getLogger("lamina.engine")


class Writes(Planner):
    """Writes of a collection."""

    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: object,
        payloads: Sequence[Payload | None] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Insert or replace points (of ``tenant`` in a multi-tenant collection, whose ids
        are its own: another tenant's point with the same id is a different point);
        returns how many were written."""
        code = self._tenant(tenant, write=True)
        id_list, matrix, blobs = check_points(ids, vectors, payloads, self.config.dim, self._limits)
        prepared = self._prepare(matrix)  # raises on zero vectors before anything is written
        raw = matrix.astype("<f4", copy=False)
        names = {name for p in payloads if p for name in p} if payloads is not None else set()
        self._reserve(len(id_list))  # a large tail grows without the lock
        codes = self._encode(prepared)
        with self._lock:
            self._check_open()
            tenants_meta: dict[bytes, bytes] = {}
            if code is not None:
                code = self._tenants.codes.get(tenant or "", -1)  # it may have been added meanwhile
                if code == -1:
                    code, tenants_meta[TENANTS] = self._tenants.added(tenant or "")
            keys = self._keys(id_list, code)
            old_rows = self._store.rows_of(keys)
            first = self._next_row
            new_rows = np.arange(first, first + len(keys), dtype=np.int64)
            dead = [(key, row) for key, row in zip(keys, old_rows, strict=True) if row is not None]
            fields = self._fields | names
            meta = {FIELDS: orjson.dumps(sorted(fields))} if len(fields) > len(self._fields) else {}
            if tenant is not None and (mine := self._tenant_fields.added(tenant, names)) is not None:
                meta[TENANT_FIELDS] = mine
            if dead:  # counted before RocksDB forgets the old rows and they die in the segments: a
                # search that saw either sees the count moved, and runs again (see _read)
                self._replaced += 1
            self._store.apply(keys, first, raw.tobytes(), blobs, dead, self._mut_start, meta | tenants_meta)
            if tenants_meta:
                self._tenants.apply(tenants_meta[TENANTS])
            if TENANT_FIELDS in meta:
                self._tenant_fields.apply(meta[TENANT_FIELDS])
            self._fields = fields
            self._next_row = first + len(keys)
            self._place(new_rows, prepared, -1 if code is None else code, codes)
            if self.config.payload_index and payloads is not None:
                self._mut_pidx.add(self.config.payload_index, new_rows.tolist(), payloads)
            if code is not None:
                self._tenant_live[code] = self._tenant_live.get(code, 0) + len(keys)
            if dead:
                self._kill([row for _, row in dead], code=code)
        if self._next_row - self._mut_start >= self.config.seal_rows:
            self._wake.set()
        return len(keys)

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Any = None, tenant: str | None = None
    ) -> int:
        """Delete by ids or by filter (exactly one; in a multi-tenant collection among the
        points of ``tenant``); returns how many points were deleted."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        self._tenant(tenant, write=True)  # checked before anything else
        if ids is not None:
            id_list = check_ids(ids, self._limits, unique=False)
            with self._lock:
                self._check_open()
                code = self._tenant(tenant)
                if code == -1:
                    return 0
                keys = list(dict.fromkeys(self._keys(id_list, code)))
                rows_of = self._store.rows_of(keys)
                dead = [(k, r) for k, r in zip(keys, rows_of, strict=True) if r is not None]
                return self._drop(dead, code)
        compiled = self._compile(filter, tenant)  # None: the empty filter, which matches every point
        with self._lock:
            self._check_open()
            code = self._tenant(tenant)
            if code == -1:
                return 0
            rows = (
                self._live_rows()
                if compiled is None and code is None
                else self._match_rows(compiled, self._snapshot(locked=True), code)
            )
            found = self._store.id_keys_of(rows)
            return self._drop([(k, r) for k, r in zip(found, rows, strict=True) if k is not None], code)

    def _drop(
        self, dead: list[tuple[bytes, int]], code: int | None = None, meta: dict[bytes, bytes] | None = None
    ) -> int:
        """Durably delete (id key, row) pairs of tenant ``code``, then hide the rows
        (caller holds the lock)."""
        if dead or meta:
            self._store.apply([], self._next_row, b"", [], dead, self._mut_start, meta)
        if dead:
            self._kill([row for _, row in dead], code=code)
            shrunk = (
                code in self._partitions
                and self._tenant_live.get(code or 0, 0) < self.config.tenant_index_rows // 2
            )
            if shrunk or any(s.dead > COMPACT_DEAD_FRACTION * s.size for s in self._segments):
                self._wake.set()
        return len(dead)

    def delete_tenant(self, tenant: str) -> int:
        """Delete a tenant with all its points, durably in one batch, and drop its index
        partition at once (its rows in sealed segments leave the disk at their next
        compaction). Returns how many points it held."""
        self._tenant(tenant, write=True)
        with self._lock:
            self._check_open()
            code = self._tenant(tenant)
            if code is None or code == -1:
                raise NotFound(f"tenant {tenant!r} of collection {self.name!r} does not exist")
            prefix = tenant_prefix(code)
            dead: list[tuple[bytes, int]] = []
            for key, row in self._store.scan_ids(prefix):
                if not key.startswith(prefix):
                    break
                dead.append((key, row))
            self._partitions = {c: p for c, p in self._partitions.items() if c != code}
            fields = self._tenant_fields.without(tenant)
            removed = self._drop(dead, code, {TENANTS: self._tenants.without(tenant), TENANT_FIELDS: fields})
            self._tenants.apply(self._tenants.without(tenant))
            self._tenant_fields.apply(fields)
            self._tenant_live.pop(code, None)
        log.info("deleted tenant %r of %r with %d points", tenant, self.name, removed)
        return removed

    def _live_rows(self) -> list[int]:
        """Every live global row, ascending (caller holds the lock)."""
        parts = [s.rows[s.live] for s in self._segments]
        parts.append(np.flatnonzero(self._live[: self._next_row - self._mut_start]) + self._mut_start)
        return [int(r) for r in np.concatenate(parts)]

    @property
    def payload_fields(self) -> frozenset[str]:
        """Top-level payload keys seen in this collection (a filter on another field is
        refused as unknown when the collection has payload indexes)."""
        with self._lock:
            return frozenset(self._fields)

    def learn_fields(self, names: Sequence[str], tenant: str | None = None) -> bool:
        """Count ``names`` as payload keys seen (by ``tenant``'s points), durably (a sharded
        collection tells every shard the keys any shard has seen, so they check filters
        alike); True if any was new."""
        with self._lock:
            self._check_open()
            fields = self._fields | set(names)
            mine = self._tenant_fields.added(tenant, set(names)) if tenant is not None else None
            if len(fields) == len(self._fields) and mine is None:
                return False
            self._store.put_meta(
                {FIELDS: orjson.dumps(sorted(fields)), **({TENANT_FIELDS: mine} if mine else {})}
            )
            self._fields = fields
            if mine is not None:
                self._tenant_fields.apply(mine)
            return True
