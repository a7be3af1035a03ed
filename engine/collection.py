"""A collection: durable points in RocksDB, searched through segments.

Writes go to RocksDB first (one WriteBatch per request) and then to the mutable
segment, an in-memory float32 matrix searched exactly; a rejected request raises
before anything is written. Every write gives points fresh rows, so an upsert
that replaces a point leaves a dead row behind (a tombstone).

When the mutable segment holds ``segment_rows`` rows, a background optimizer seals
them into a ``Segment`` (vectors memory-mapped from a file, index tier in memory),
commits it to the manifest in RocksDB and drops those rows from the heap. It also
rewrites segments with many tombstones (compaction) and merges small neighbours.
Searches take a snapshot of the segment list and the mutable segment and merge the
top-k of each; readers never wait for a build.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from lamina.config import Limits
from lamina.engine.filters import CompiledFilter, compile_filter, evaluate
from lamina.engine.payload import FieldIndex, MutableIndexes, take
from lamina.engine.segments import (
    GRAPH_STEP_COST,
    WIDEN,
    Segment,
    degraded_error,
    discard_unless_committed,
    open_segments,
    take_first,
)
from lamina.engine.tenants import DELTA_SHARE, MERGE_SHARE, Partition, Tenants
from lamina.engine.text import Bm25Query, fuse, fusion_depth, top_rows
from lamina.errors import FailedPrecondition, InvalidArgument, LaminaError, NotFound, ResourceExhausted
from lamina.index.flat import exact_topk
from lamina.index.kernels import METRIC_IP, METRIC_L2, finish_scores, normalize_rows
from lamina.index.tiers import BuildStopped, Knobs, TopK
from lamina.storage.faults import Backoff
from lamina.storage.keys import id_from_key, id_key, row_from_key, row_key, tenant_of_key, tenant_prefix
from lamina.storage.rocks import (
    CONFIG,
    FIELDS,
    FORMAT,
    FORMAT_VERSION,
    MUTABLE_START,
    NEXT_ROW,
    SEGMENTS,
    TENANTS,
    CollectionStore,
)
from lamina.storage.vectorfile import link_tree
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    FloatMatrix,
    Hit,
    IndexStatus,
    Payload,
    Point,
    PointId,
    QueryPlan,
    SearchParams,
    SegmentPlan,
    TenantInfo,
    check_payload_field,
)
from lamina.validation import (
    as_matrix,
    as_query,
    check_ids,
    check_int,
    check_k,
    check_tenant,
    encode_payloads,
)

_GROW = 1.5
_MIN_CAPACITY = 1024
#: a segment with more than this fraction of dead rows is rewritten without them
COMPACT_DEAD_FRACTION = 0.2
_SEGMENTS = "segments"
_DEFAULT_PARAMS = SearchParams()
_ALIVE_STEP = 64  # queries searched between liveness checks of a batch
_READ_ATTEMPTS = 3  # see Collection._read
T = TypeVar("T")

log = logging.getLogger("lamina.engine")


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_heap() -> None:
    """Return freed heap memory to the OS. glibc keeps the blocks the write path frees (a
    1,000-row batch allocates megabytes) inside the heap; after a burst of sealing that was
    36 MB of 240 resident for 60,000 x 384 vectors (bench/README.md, compare)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def check_tenant_use(collection: str, multi_tenant: bool, tenant: str | None, *, write: bool = False) -> None:
    """The tenant rule: every request to a multi-tenant collection names a tenant, no
    request to another collection does."""
    if not multi_tenant:
        if tenant is not None:
            raise InvalidArgument(
                f"collection {collection!r} is not multi-tenant: leave tenant out "
                "(create the collection with multi_tenant=True to keep tenants apart)"
            )
        return
    if tenant is None:
        raise InvalidArgument(
            f"collection {collection!r} is multi-tenant: every {'write' if write else 'read'} "
            "names its tenant (tenant=...)"
        )
    check_tenant(tenant)


def check_points(
    ids: Sequence[PointId],
    vectors: object,
    payloads: Sequence[Payload | None] | None,
    dim: int,
    limits: Limits,
) -> tuple[list[PointId], FloatMatrix, list[bytes]]:
    """An upsert's ids, vectors (float32, ``dim`` wide) and encoded payloads, checked."""
    id_list = check_ids(ids, limits)
    if not id_list:
        raise InvalidArgument("upsert needs at least one point: ids is empty")
    matrix = as_matrix(vectors, dim)
    if matrix.shape[0] != len(id_list):
        raise InvalidArgument(f"got {matrix.shape[0]} vectors for {len(id_list)} ids: give one vector per id")
    return id_list, matrix, encode_payloads(payloads, len(id_list), limits)


def check_directions(norms: np.ndarray) -> None:
    """InvalidArgument for the first zero vector among rows of squared ``norms`` (cosine)."""
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise InvalidArgument(f"vector {bad} is all zeros: a zero vector has no direction under cosine")


def build_threads() -> int:
    """Threads an index build may use: LAMINA_BUILD_THREADS, or every core."""
    return max(1, int(os.environ.get("LAMINA_BUILD_THREADS", "0")) or (os.cpu_count() or 1))


@dataclass(frozen=True)
class _Snapshot:
    """What one search reads: sealed segments, and the mutable segment's rows
    ``start .. start + len(live)`` in ``matrix``."""

    segments: tuple[Segment, ...]
    start: int
    matrix: FloatMatrix
    live: np.ndarray
    payload: dict[str, list[FieldIndex]]
    replaced: int  # Collection._replaced when it was taken
    tcodes: np.ndarray  # multi-tenant: tenant code of each mutable row (from ``start``)
    partitions: dict[int, tuple[Partition, ...]]  # tenant code -> its HNSW partitions (main, delta)


class Collection:
    """Engine-side collection. Thread-safe: writers are serialised by a lock;
    searches copy a snapshot under the lock and then scan without it."""

    def __init__(self, name: str, store: CollectionStore, config: CollectionConfig, limits: Limits) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._limits = limits
        self._metric = METRIC_L2 if config.metric == "l2" else METRIC_IP
        self._lock = threading.Lock()
        self._closed = False
        raw = store.get_meta(NEXT_ROW)
        self._next_row = row_from_key(raw) if raw else 0
        raw = store.get_meta(MUTABLE_START)
        self._mut_start = row_from_key(raw) if raw else 0
        capacity = max(_MIN_CAPACITY, self._next_row - self._mut_start)
        self._matrix: FloatMatrix = np.zeros((capacity, config.dim), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=np.bool_)
        self._multi = config.multi_tenant
        self._tenants = Tenants(store.get_meta(TENANTS))
        self._tcodes = np.full(capacity, -1, dtype=np.int32)  # tenant code per mutable row
        # tenant code -> (main, [delta]) partitions; replaced, never changed: searches hold it
        self._partitions: dict[int, tuple[Partition, ...]] = {}
        self._tenant_live: dict[int, int] = {}  # tenant code -> live points
        self._segments: list[Segment] = []
        self._damaged: dict[str, str] = {}  # segment name -> why it could not be opened
        self._knob_cache: dict[tuple[int | None, float | None], Knobs] = {}
        self._segment_dir = store.path / _SEGMENTS
        self._mut_pidx = MutableIndexes()
        self._replaced = 0  # upserts that replaced points so far (see _read)
        raw = store.get_meta(FIELDS)
        self._fields: set[str] = set(orjson.loads(raw)) if raw else set()
        self._load()
        if raw is None and self._next_row and not store.read_only:  # written before fields were tracked
            for _, blob in store.scan_payloads():
                payload = orjson.loads(blob)
                if isinstance(payload, dict):
                    self._fields.update(payload)
            store.put_meta({FIELDS: orjson.dumps(sorted(self._fields))})
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._force_seal = False
        self._sealed_last = False  # the optimizer's last step was a seal (see _optimize_step)
        self._error: str = ""
        self._fault: LaminaError | None = None  # a full or read-only disk stalls the optimizer
        self._backoff = Backoff(self._wake.set)
        self._optimizer = threading.Thread(target=self._optimize_loop, name=f"optimizer-{name}", daemon=True)
        self._optimizer.start()
        self._wake.set()

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls, name: str, path: Path, config: CollectionConfig, limits: Limits, *, sync: bool
    ) -> Collection:
        store = CollectionStore(path, sync=sync)
        store.put_meta({FORMAT: FORMAT_VERSION, CONFIG: orjson.dumps(config.to_dict())})
        return cls(name, store, config, limits)

    @classmethod
    def open(
        cls, name: str, path: Path, limits: Limits, *, sync: bool, read_only: bool = False
    ) -> Collection:
        if not (path / "CURRENT").exists():  # not a RocksDB: do not create one in a stranger's folder
            raise FailedPrecondition(f"{path} holds no Lamina collection: move it out of the data directory")
        store = CollectionStore(path, sync=sync, read_only=read_only)
        raw = store.get_meta(CONFIG)
        if raw is None:
            store.close()
            raise FailedPrecondition(
                f"{path} holds no Lamina collection config: move it out of the data directory"
            )
        return cls(name, store, CollectionConfig.from_dict(orjson.loads(raw)), limits)

    def _load(self) -> None:
        """Load the sealed segments of the manifest, re-apply deletes made after sealing,
        and rebuild the mutable segment from the vectors stored past it."""
        raw = self._store.get_meta(SEGMENTS)
        names: list[str] = orjson.loads(raw) if raw else []
        if not self._store.read_only:
            self._segment_dir.mkdir(exist_ok=True)
            for entry in self._segment_dir.iterdir():  # unfinished builds, segments replaced before a crash
                if entry.name not in names:
                    shutil.rmtree(entry, ignore_errors=True)
        self._segments, self._damaged = open_segments(self._segment_dir, names, self.config, self._metric)
        dead = self._store.dead_rows()
        for segment in self._segments:
            segment.kill(dead)
        dim = self.config.dim
        block_rows: list[int] = []
        block_vecs: list[bytes] = []

        def flush() -> None:
            if block_rows:
                vecs = np.frombuffer(b"".join(block_vecs), dtype="<f4").reshape(-1, dim)
                rows = np.asarray(block_rows, dtype=np.int64)
                self._place(rows, self._prepare(vecs))
                if self._multi:
                    keys = self._store.id_keys_of(block_rows)
                    self._tcodes[rows - self._mut_start] = [tenant_of_key(k or b"") for k in keys]
                block_rows.clear()
                block_vecs.clear()

        for row, vec in self._store.scan_vectors(self._mut_start):
            block_rows.append(row)
            block_vecs.append(vec)
            if len(block_rows) >= 65_536:
                flush()
        flush()
        if self.config.payload_index:
            self._index_mutable(self.config.payload_index)
        if self._multi:
            counts: dict[int, int] = {}
            n = self._next_row - self._mut_start
            parts = [s.tenant_codes_live() for s in self._segments] + [self._tcodes[:n][self._live[:n]]]
            codes, sizes = np.unique(np.concatenate(parts), return_counts=True)
            counts = {int(c): int(z) for c, z in zip(codes.tolist(), sizes.tolist(), strict=True) if c >= 0}
            self._tenant_live = counts

    def _index_mutable(self, fields: dict[str, str]) -> None:
        """Index ``fields`` of the mutable segment's stored payloads (at start, and when an
        index is added; caller holds the lock or is the constructor)."""
        rows: list[int] = []
        payloads: list[Payload | None] = []
        for row, blob in self._store.scan_payloads(self._mut_start):
            rows.append(row)
            payloads.append(orjson.loads(blob))
            if len(rows) >= 65_536:
                self._mut_pidx.add(fields, rows, payloads)
                rows, payloads = [], []
        if rows:
            self._mut_pidx.add(fields, rows, payloads)

    def close(self) -> None:
        """Stop the optimizer (a build in progress ends within a chunk of rows; its rows stay
        in the write-ahead log and are sealed again at the next open) and close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._optimizer is not threading.current_thread():
            self._optimizer.join()
        self._store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection {self.name!r} does not exist (it was deleted or the database closed)")

    # ------------------------------------------------------------ helpers
    def _prepare(self, vectors: FloatMatrix) -> FloatMatrix:
        """Vectors as the kernel sees them: unit length for cosine."""
        if self.config.metric != "cosine":
            return vectors
        if vectors.shape[0] == 1:  # one query: two numpy calls instead of a kernel dispatch
            norm = float(np.dot(vectors[0], vectors[0]))
            if norm == 0:
                raise InvalidArgument("vector 0 is all zeros: a zero vector has no direction under cosine")
            return vectors * np.float32(1.0 / np.sqrt(norm))
        check_directions(np.einsum("ij,ij->i", vectors, vectors))
        return normalize_rows(vectors)

    def _ensure_capacity(self, need: int) -> None:
        """Grow the mutable matrix and live mask to hold ``need`` rows (caller holds the lock)."""
        if need > self._matrix.shape[0]:
            capacity = max(need, int(self._matrix.shape[0] * _GROW))
            matrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
            matrix[: self._matrix.shape[0]] = self._matrix
            live = np.zeros(capacity, dtype=np.bool_)
            live[: self._live.shape[0]] = self._live
            tcodes = np.full(capacity, -1, dtype=np.int32)
            tcodes[: self._tcodes.shape[0]] = self._tcodes
            self._matrix, self._live, self._tcodes = matrix, live, tcodes

    def _place(self, rows: np.ndarray, prepared: FloatMatrix, code: int = -1) -> None:
        """Write prepared vectors at global ``rows`` of the mutable segment and mark them
        live, as points of tenant ``code`` (caller holds the lock)."""
        if rows.size:
            local = rows - self._mut_start
            self._ensure_capacity(int(local.max()) + 1)
            self._matrix[local] = prepared
            self._live[local] = True
            self._tcodes[local] = code

    def _kill(self, rows: Sequence[int], replaced: bool = False, code: int | None = None) -> None:
        """Hide dead global ``rows`` (of tenant ``code`` in a multi-tenant collection) from
        every segment (caller holds the lock); ``replaced``: their points were written
        again, at rows past every current snapshot."""
        arr = np.asarray(rows, dtype=np.int64)
        mutable = arr[arr >= self._mut_start]
        self._live[mutable - self._mut_start] = False
        sealed = np.sort(arr[arr < self._mut_start])
        if sealed.size:
            for segment in self._segments:
                segment.kill(sealed)
            for part in self._partitions.get(code, ()) if code is not None else ():
                part.kill(sealed)
        if code is not None:
            self._tenant_live[code] = self._tenant_live.get(code, 0) - arr.size
        if replaced:
            self._replaced += 1

    def _match_rows(
        self, compiled: CompiledFilter | None, snap: _Snapshot, code: int | None = None
    ) -> list[int]:
        """Live rows matching a filter (and of tenant ``code``), ascending."""
        masks = self._masks(compiled, snap, code)
        assert masks is not None
        parts = [seg.rows[m] for seg, m in zip(snap.segments, masks, strict=False)]
        parts.append(np.flatnonzero(masks[-1]) + snap.start)
        return [int(r) for r in np.concatenate(parts)]

    def _filter_masks(self, compiled: CompiledFilter, snap: _Snapshot) -> list[np.ndarray]:
        """Per sealed segment, then for the mutable segment: the mask of live rows that
        match. Payload indexes decide most rows; rows they cannot decide (unindexed
        fields, odd values) are checked against their stored payloads."""
        masks: list[np.ndarray] = []
        for seg in snap.segments:

            def compute(seg: Segment = seg) -> np.ndarray:
                indexes = {name: [index] for name, index in seg.payload.items()}
                surely, maybe = evaluate(compiled.tree, seg.size, 0, indexes)
                return self._settle(compiled, surely, maybe, seg.rows)

            masks.append(seg.matching(compiled.key, compute) & seg.live)
        n = snap.live.size
        surely, maybe = evaluate(compiled.tree, n, snap.start, snap.payload)
        masks.append(self._settle(compiled, surely & snap.live, maybe & snap.live, None, snap.start))
        return masks

    def _masks(
        self, compiled: CompiledFilter | None, snap: _Snapshot, code: int | None
    ) -> list[np.ndarray] | None:
        """``_filter_masks`` narrowed to the rows of tenant ``code``; None when there is
        neither a filter nor a tenant (every live row)."""
        if code is None:
            return None if compiled is None else self._filter_masks(compiled, snap)
        masks = (
            self._filter_masks(compiled, snap)
            if compiled is not None
            else [s.live for s in snap.segments] + [snap.live]
        )
        out: list[np.ndarray] = []
        for seg, mask in zip(snap.segments, masks, strict=False):
            mine = np.zeros(seg.size, np.bool_)
            local = seg.tenant_local(code)
            mine[local] = mask[local]
            out.append(mine)
        out.append(masks[-1] & (snap.tcodes[: snap.live.size] == code))
        return out

    def _tenant(self, tenant: str | None, *, write: bool = False) -> int | None:
        """The code of the tenant a request names: None in a collection without tenants,
        -1 for a tenant that holds no points yet. A multi-tenant collection needs one."""
        check_tenant_use(self.name, self._multi, tenant, write=write)
        if tenant is None:
            return None
        return self._tenants.codes.get(tenant, -1)

    def _key(self, point_id: PointId, code: int | None) -> bytes:
        return id_key(point_id) if code is None else tenant_prefix(code) + id_key(point_id)

    def _settle(
        self,
        compiled: CompiledFilter,
        surely: np.ndarray,
        maybe: np.ndarray,
        rows: np.ndarray | None,
        base: int = 0,
    ) -> np.ndarray:
        """Decide the rows in ``maybe`` but not ``surely`` by reading their payloads."""
        check = np.flatnonzero(maybe & ~surely)
        if check.size:
            global_rows = rows[check] if rows is not None else check + base
            predicate = compiled.predicate
            ok = [p is not None and predicate(p) for p in self._stored_payloads(global_rows)]
            surely[check[np.asarray(ok, dtype=np.bool_)]] = True
        return surely

    def _stored_payloads(self, rows: np.ndarray) -> list[Payload | None]:
        """Decoded payloads of global ``rows`` (None: deleted), read in blocks."""
        out: list[Payload | None] = []
        for lo in range(0, rows.size, 16_384):
            blobs = self._store.payloads_of(rows[lo : lo + 16_384].tolist())
            out.extend(orjson.loads(b) if b is not None else None for b in blobs)
        return out

    def _compile(self, flt: Any) -> CompiledFilter | None:
        schema = self.config.payload_index  # a collection with a declared schema rejects unknown fields
        known = frozenset(self._fields) if schema else None
        return compile_filter(flt, self._limits.max_filter_depth, schema, known)

    def _points(
        self, rows: Sequence[int], keys: Sequence[bytes | None], with_payload: bool, with_vector: bool
    ) -> list[Point | None]:
        payloads = self._store.payloads_of(rows) if with_payload else [None] * len(rows)
        vectors = self._store.vectors_of(rows) if with_vector else [None] * len(rows)
        out: list[Point | None] = []
        for key, pay, vec in zip(keys, payloads, vectors, strict=True):
            if key is None or (with_payload and pay is None) or (with_vector and vec is None):
                out.append(None)  # deleted while we read
                continue
            out.append(
                Point(
                    id=id_from_key(key),
                    vector=np.frombuffer(vec, dtype="<f4").copy() if vec is not None else None,
                    payload=orjson.loads(pay) if pay is not None else None,
                )
            )
        return out

    # ------------------------------------------------------------ writes
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
        with self._lock:
            self._check_open()
            tenants_meta: dict[bytes, bytes] = {}
            if code is not None:
                code = self._tenants.codes.get(tenant or "", -1)  # it may have been added meanwhile
                if code == -1:
                    code, tenants_meta[TENANTS] = self._tenants.added(tenant or "")
            keys = [self._key(i, code) for i in id_list]
            old_rows = self._store.rows_of(keys)
            first = self._next_row
            new_rows = np.arange(first, first + len(keys), dtype=np.int64)
            dead = [(key, row) for key, row in zip(keys, old_rows, strict=True) if row is not None]
            fields = self._fields | names
            meta = {FIELDS: orjson.dumps(sorted(fields))} if len(fields) > len(self._fields) else {}
            self._store.apply(keys, first, raw.tobytes(), blobs, dead, self._mut_start, meta | tenants_meta)
            if tenants_meta:
                self._tenants.apply(tenants_meta[TENANTS])
            self._fields = fields
            self._next_row = first + len(keys)
            self._place(new_rows, prepared, -1 if code is None else code)
            if self.config.payload_index and payloads is not None:
                self._mut_pidx.add(self.config.payload_index, new_rows.tolist(), payloads)
            if code is not None:
                self._tenant_live[code] = self._tenant_live.get(code, 0) + len(keys)
            if dead:
                self._kill([row for _, row in dead], replaced=True, code=code)
        if self._next_row - self._mut_start >= self.config.segment_rows:
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
                keys = list(dict.fromkeys(self._key(i, code) for i in id_list))
                rows_of = self._store.rows_of(keys)
                dead = [(k, r) for k, r in zip(keys, rows_of, strict=True) if r is not None]
                return self._drop(dead, code)
        compiled = self._compile(filter)  # None: the empty filter, which matches every point
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

    @property
    def payload_fields(self) -> frozenset[str]:
        """Top-level payload keys seen in this collection (a filter on another field is
        refused as unknown when the collection has payload indexes)."""
        with self._lock:
            return frozenset(self._fields)

    def learn_fields(self, names: Sequence[str]) -> bool:
        """Count ``names`` as payload keys seen, durably (a sharded collection tells every
        shard the keys any shard has seen, so they check filters alike); True if any was new."""
        with self._lock:
            self._check_open()
            fields = self._fields | set(names)
            if len(fields) == len(self._fields):
                return False
            self._store.put_meta({FIELDS: orjson.dumps(sorted(fields))})
            self._fields = fields
            return True

    # ------------------------------------------------------------ tenants
    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant of a multi-tenant collection, by name, with its live points."""
        if not self._multi:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant: it has no tenants")
        with self._lock:
            self._check_open()
            return [
                TenantInfo(name, self._tenant_live.get(code, 0), code in self._partitions)
                for name, code in sorted(self._tenants.codes.items())
            ]

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
            removed = self._drop(dead, code, {TENANTS: self._tenants.without(tenant)})
            self._tenants.apply(self._tenants.without(tenant))
            self._tenant_live.pop(code, None)
        log.info("deleted tenant %r of %r with %d points", tenant, self.name, removed)
        return removed

    def _live_rows(self) -> list[int]:
        """Every live global row, ascending (caller holds the lock)."""
        parts = [s.rows[s.live] for s in self._segments]
        parts.append(np.flatnonzero(self._live[: self._next_row - self._mut_start]) + self._mut_start)
        return [int(r) for r in np.concatenate(parts)]

    def _mutable_count(self) -> int:
        """Live points in the mutable segment (caller holds the lock)."""
        return int(np.count_nonzero(self._live[: self._next_row - self._mut_start]))

    def _live_count(self) -> int:
        return self._mutable_count() + sum(s.live_count for s in self._segments)

    # ------------------------------------------------------------ reads
    def count(self, filter: Any = None, tenant: str | None = None) -> int:
        """Number of live points (of ``tenant``), or of those matching ``filter``."""
        code = self._tenant(tenant)
        compiled = self._compile(filter)
        self._check_open()
        if code == -1:
            return 0
        if compiled is None:
            with self._lock:
                if self._damaged:
                    raise degraded_error(self.name, self._damaged)
                return self._live_count() if code is None else self._tenant_live.get(code, 0)
        return self._read(
            lambda snap: sum(int(np.count_nonzero(m)) for m in self._masks(compiled, snap, code) or [])
        )

    def get(
        self,
        ids: Sequence[PointId],
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> list[Point]:
        """Points for ``ids`` (of ``tenant``) in the order asked; ids that do not exist are left out."""
        code = self._tenant(tenant)
        id_list = check_ids(ids, self._limits, unique=False)
        self._check_open()
        if code == -1:
            return []
        keys = [self._key(i, code) for i in id_list]
        rows = self._store.rows_of(keys)
        present = [(k, r) for k, r in zip(keys, rows, strict=True) if r is not None]
        points = self._points([r for _, r in present], [k for k, _ in present], with_payload, with_vector)
        return [p for p in points if p is not None]

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> tuple[list[Point], PointId | None]:
        """One page of points (of ``tenant``) in id order from ``offset``; returns (points,
        next offset or None)."""
        code = self._tenant(tenant)
        if not 1 <= check_int("scroll limit", limit) <= self._limits.max_scroll_limit:
            raise InvalidArgument(
                f"scroll limit must be an integer in 1..{self._limits.max_scroll_limit}, got {limit!r}"
            )
        compiled = self._compile(filter)
        self._check_open()
        if code == -1:
            return [], None
        prefix = tenant_prefix(code) if code is not None else b""
        start = (
            self._key(check_ids([offset], self._limits)[0], code) if offset is not None else prefix or None
        )
        matching = (
            None if compiled is None else set(self._read(lambda snap: self._match_rows(compiled, snap, code)))
        )
        page: list[tuple[bytes, int]] = []
        next_offset: PointId | None = None
        for key, row in self._store.scan_ids(start):
            if not key.startswith(prefix):
                break  # past the tenant's range
            if matching is not None and row not in matching:
                continue
            if len(page) == limit:
                next_offset = id_from_key(key)
                break
            page.append((key, row))
        points = self._points([r for _, r in page], [k for k, _ in page], with_payload, with_vector)
        return [p for p in points if p is not None], next_offset

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
        """The ``k`` nearest points (of ``tenant``) to one query vector, best first."""
        code = self._tenant(tenant)
        query = as_query(vector, self.config.dim)
        return self._search(
            query.reshape(1, -1), k, self._compile(filter), with_payload, with_vector, params, code=code
        )[0]

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
        """One hit list per query row (among the points of ``tenant``), each best first.
        ``alive`` (the server's) is called between blocks of queries; whatever it raises
        stops the search."""
        code = self._tenant(tenant)
        queries = as_matrix(vectors, self.config.dim, "query vectors")
        if queries.shape[0] > self._limits.max_query_batch:
            raise ResourceExhausted(
                f"batch of {queries.shape[0]} queries exceeds the limit of {self._limits.max_query_batch}"
            )
        compiled = self._compile(filter)
        step = _ALIVE_STEP if alive is not None else max(1, queries.shape[0])
        results: list[list[Hit]] = []
        for lo in range(0, queries.shape[0], step):
            if alive is not None:
                alive()
            results.extend(
                self._search(
                    queries[lo : lo + step], k, compiled, with_payload, with_vector, params, code=code
                )
            )
        return results

    def _snapshot(self, locked: bool = False) -> _Snapshot:
        if not locked:
            with self._lock:
                return self._snapshot(locked=True)
        self._check_open()
        if self._damaged:  # refused rather than answered without the damaged rows
            raise degraded_error(self.name, self._damaged)
        n = self._next_row - self._mut_start
        return _Snapshot(
            tuple(self._segments),
            self._mut_start,
            self._matrix,
            self._live[:n].copy(),
            self._mut_pidx.snapshot(),
            self._replaced,
            self._tcodes,
            self._partitions,
        )

    def _read(self, read: Callable[[_Snapshot], T]) -> T:
        """``read(snapshot)``, consistent with concurrent writes. An upsert that replaces a
        point while a search runs writes it at a row past the search's snapshot and drops its
        old row: sealed segments hide the old row at once (their live masks and graphs are
        shared, not copied), and its id and payload leave RocksDB, so the search could see
        the point nowhere. Such a read is run again; the last attempt holds the writer lock."""
        for _ in range(_READ_ATTEMPTS - 1):
            snap = self._snapshot()
            result = read(snap)
            if self._replaced == snap.replaced:
                return result
        with self._lock:
            return read(self._snapshot(locked=True))

    def _knobs(self, params: SearchParams) -> Knobs:
        quant = self.config.quantization
        key = (params.ef, params.oversample)
        knobs = self._knob_cache.get(key)
        if knobs is None:
            knobs = Knobs(
                ef=params.ef if params.ef is not None else self.config.index.ef,
                oversample=params.oversample
                if params.oversample is not None
                else (quant.oversample if quant is not None else 1.0),
            )
            if len(self._knob_cache) < 256:
                self._knob_cache[key] = knobs
        return knobs

    def _search(
        self,
        queries: FloatMatrix,
        k: int,
        compiled: CompiledFilter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        explain: list[SegmentPlan] | None = None,
        code: int | None = None,
    ) -> list[list[Hit]]:
        k = check_k(k, self._limits)
        prepared = self._prepare(queries)
        if code == -1:  # a tenant without points
            return [[] for _ in range(queries.shape[0])]

        def read(snap: _Snapshot) -> list[list[Hit]]:
            if explain is not None:
                explain.clear()
            if code is not None:
                masks = self._masks(compiled, snap, code) if compiled is not None else None
                found = self._tenant_rows(prepared, k, snap, code, masks, params, explain)
                return self._hits(
                    snap, finish_scores(found[0], self._metric), found[1], found[2], with_payload, with_vector
                )
            masks = self._filter_masks(compiled, snap) if compiled is not None else None
            scores, rows, counts = self._search_rows(prepared, k, snap, masks, params, explain)
            return self._hits(
                snap, finish_scores(scores, self._metric), rows, counts, with_payload, with_vector
            )

        return self._read(read)

    def _search_rows(
        self,
        prepared: FloatMatrix,
        k: int,
        snap: _Snapshot,
        masks: list[np.ndarray] | None,
        params: SearchParams | None,
        explain: list[SegmentPlan] | None,
    ) -> TopK:
        """Top-k (kernel scores, global rows, counts) over a snapshot; ``masks`` (from
        ``_filter_masks``) restrict it to the rows matching a filter."""
        params = params or _DEFAULT_PARAMS
        knobs = self._knobs(params)
        parts: list[TopK] = []
        mask = snap.live
        if masks is None:
            for segment in snap.segments:
                parts.append(segment.search(prepared, k, knobs, params.exact, self._metric))
        else:
            plan = "exact" if params.exact else params.plan
            for segment, allow in zip(snap.segments, masks, strict=False):
                found, how = segment.search_filtered(prepared, k, knobs, allow, plan, self._metric)
                parts.append(found)
                if explain is not None:
                    explain.append(how)
            mask = masks[-1]
            if explain is not None:
                reason = "the mutable segment is always scanned exactly"
                explain.append(SegmentPlan("mutable", int(snap.live.sum()), int(mask.sum()), "exact", reason))
        if mask.any():
            parts.append(self._mutable_topk(prepared, k, snap, mask))
        return merge_topk(parts, prepared.shape[0], k)

    def _mutable_topk(self, prepared: FloatMatrix, k: int, snap: _Snapshot, mask: np.ndarray) -> TopK:
        """Exact top-k (global rows) of the snapshot's mutable rows that ``mask`` passes."""
        scores, local_rows, counts = exact_topk(snap.matrix, mask, prepared, min(k, mask.size), self._metric)
        return scores, np.where(local_rows >= 0, local_rows + snap.start, -1), counts

    def _tenant_rows(
        self,
        prepared: FloatMatrix,
        k: int,
        snap: _Snapshot,
        code: int,
        masks: list[np.ndarray] | None,
        params: SearchParams | None,
        explain: list[SegmentPlan] | None,
    ) -> TopK:
        """Top-k (kernel scores, global rows, counts) among the live rows of tenant
        ``code`` (and ``masks``, a filter narrowed to it): its partition answers for the
        sealed rows below the partition's bound, its other rows are scored exactly."""
        params = params or _DEFAULT_PARAMS
        graphs = () if params.exact else snap.partitions.get(code, ())
        bound = graphs[-1].bound if graphs else 0
        parts: list[TopK] = []
        covered: list[tuple[Segment, np.ndarray | None, np.ndarray]] = []  # below the partition's bound
        exact_rows = 0
        for i, seg in enumerate(snap.segments):
            allow = masks[i] if masks is not None else seg.live
            if seg.hi <= bound:  # all in the partition: its rows are looked up only if needed
                covered.append((seg, None, allow))
                continue
            local = seg.tenant_local(code)
            if not local.size:
                continue
            if seg.lo < bound:
                below = seg.rows[local] < bound
                covered.append((seg, local[below], allow))
                local = local[~below]
            if local.size:
                parts.append(seg.tenant_exact(prepared, k, local, allow, self._metric))
                exact_rows += int(local.size)
        mask = masks[-1] if masks is not None else snap.live & (snap.tcodes[: snap.live.size] == code)
        if mask.any():
            parts.append(self._mutable_topk(prepared, k, snap, mask))
            exact_rows += int(np.count_nonzero(mask))
        if explain is not None:
            explain.append(
                SegmentPlan(
                    "tenant", exact_rows, exact_rows, "exact", "the tenant's rows outside a partition"
                )
            )
        for part in graphs if covered else ():
            found, how = self._partition_search(
                part, prepared, k, self._knobs(params), covered, masks is not None
            )
            parts.append(found)
            if explain is not None:
                explain.append(how)
        return merge_topk(parts, prepared.shape[0], k)

    def _partition_search(
        self,
        part: Partition,
        prepared: FloatMatrix,
        k: int,
        knobs: Knobs,
        lazy: list[tuple[Segment, np.ndarray | None, np.ndarray]],
        filtered: bool,
    ) -> tuple[TopK, SegmentPlan]:
        """A tenant's partition searched for the top-k of its covered rows (``lazy``:
        segment, local rows or None for all the tenant's rows there, allowed mask); with a
        filter the walk asks for k / selectivity candidates, widening up to 3 times,
        unless few rows match (then exact)."""
        nq = prepared.shape[0]
        name = f"tenant-partition-{part.code}-{part.lo}"

        def inside(seg: Segment, local: np.ndarray | None) -> np.ndarray:
            local = seg.tenant_local(part.code) if local is None else local
            if part.lo <= seg.lo and seg.hi <= part.bound:
                return local
            rows = seg.rows[local]
            return local[(rows >= part.lo) & (rows < part.bound)]

        covered = [
            (seg, inside(seg, local), allow)
            for seg, local, allow in lazy
            if seg.hi > part.lo and seg.lo < part.bound
        ]

        def exact(why: str, matches: int) -> tuple[TopK, SegmentPlan]:
            found = [
                seg.tenant_exact(prepared, k, local, allow, self._metric) for seg, local, allow in covered
            ]
            return merge_topk(found, nq, k), SegmentPlan(name, part.live_count, matches, "exact", why)

        if not filtered:
            found = part.search(prepared, k, knobs.ef)
            if found is None:
                return exact("the graph could not return k live rows", part.live_count)
            return found, SegmentPlan(
                name, part.live_count, part.live_count, "hnsw", "the tenant's own graph"
            )
        allowed = np.sort(np.concatenate([seg.rows[local[allow[local]]] for seg, local, allow in covered]))
        matches = int(allowed.size)
        if matches == 0:
            return merge_topk([], nq, k), SegmentPlan(name, part.live_count, 0, "skip", "no row matches")
        n = math.ceil(WIDEN * k * max(1, part.live_count) / matches)
        if matches <= GRAPH_STEP_COST * max(knobs.ef, n):
            return exact(f"{matches} matching rows cost less than the graph", matches)
        for attempt in range(3):
            found = part.search(prepared, n, knobs.ef)
            if found is None:
                break
            pos = np.minimum(np.searchsorted(allowed, found[1]), allowed.size - 1)
            kept = take_first(found, allowed[pos] == found[1], k)
            if kept[2].min() >= min(k, matches):
                why = f"asked the graph for {n} candidates" + (
                    f" after {attempt} widening(s)" if attempt else ""
                )
                return kept, SegmentPlan(name, part.live_count, matches, "hnsw+widened", why)
            n *= 4
        return exact("the graph returned too few matches", matches)

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
        """Hybrid search (among the points of ``tenant``): the dense ranking of ``vector`` and the BM25 ranking of ``text``
        (over a ``text`` payload index), fused by ``fusion`` (``"rrf"`` or ``"weighted"``,
        with ``weights`` (dense, text), default (1, 1)); ``filter`` applies to both.
        With only one of vector and text, that ranking alone (BM25 scores for text)."""
        code = self._tenant(tenant)
        if vector is None and text is None:
            raise InvalidArgument("query needs a vector, a text or both")
        if fusion not in ("rrf", "weighted"):
            raise InvalidArgument(f"unknown fusion {fusion!r}: use rrf or weighted")
        w = (1.0, 1.0) if weights is None else tuple(weights)
        if len(w) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < float("inf") for x in w
        ):
            raise InvalidArgument(f"weights must be two non-negative numbers (dense, text), got {weights!r}")
        if text is not None and not isinstance(text, str):
            raise InvalidArgument(f"text must be a string, got {type(text).__name__}")
        k = check_k(k, self._limits)
        query = as_query(vector, self.config.dim).reshape(1, -1) if vector is not None else None
        field_name = self._text_field(text_field) if text is not None else ""
        compiled = self._compile(filter)
        prepared = self._prepare(query) if query is not None else None
        depth = k if vector is None or text is None else fusion_depth(k, self._limits.max_k)

        if code == -1:
            return []

        def read(snap: _Snapshot) -> list[Hit]:
            masks = self._masks(compiled, snap, code)
            rankings: list[tuple[np.ndarray, np.ndarray]] = []
            if prepared is not None:
                scores, rows, counts = self._search_rows(prepared, depth, snap, masks, params, None)
                rankings.append((rows[0, : counts[0]], scores[0, : counts[0]]))
            if text is not None:
                rankings.append(self._bm25(text, field_name, depth, snap, masks))
            if len(rankings) == 1:
                rows, fused = rankings[0]
                if prepared is not None:
                    fused = finish_scores(fused[None, :], self._metric)[0]
            else:
                rows, fused = fuse(rankings, fusion, w, k)
            return self._hits(
                snap, fused[None, :], rows[None, :], np.array([rows.size]), with_payload, with_vector
            )[0]

        return self._read(read)

    def _text_field(self, name: str | None) -> str:
        texts = sorted(f for f, kind in self.config.payload_index.items() if kind == "text")
        if name is None:
            if len(texts) != 1:
                raise InvalidArgument(
                    "text search needs a text payload index: create one with create_payload_index(field, 'text')"
                    if not texts
                    else f"the collection has several text indexes ({', '.join(texts)}): pass text_field="
                )
            return texts[0]
        if self.config.payload_index.get(name) != "text":
            raise InvalidArgument(
                f"field {name!r} has no text index: create one with create_payload_index({name!r}, 'text')"
            )
        return name

    def _bm25(
        self, text: str, field_name: str, n: int, snap: _Snapshot, masks: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(global rows, BM25 scores) of the best ``n`` allowed rows, best first."""
        sealed = [
            seg.payload.get(field_name) or self._index_segment(seg, field_name, "text")
            for seg in snap.segments
        ]
        mutable = snap.payload.get(field_name, [])
        bm25 = Bm25Query.prepare(text, [*sealed, *mutable])
        found_rows: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        for i, (seg, part) in enumerate(zip(snap.segments, sealed, strict=True)):
            pos, scores = top_rows(bm25.score(part, seg.size), masks[i] if masks else seg.live, n)
            found_rows.append(seg.rows[pos])
            found_scores.append(scores)
        size = snap.live.size
        total = np.zeros(size, np.float32)
        for part in mutable:
            total += bm25.score(part, size, snap.start)
        pos, scores = top_rows(total, masks[-1] if masks else snap.live, n)
        found_rows.append(pos + snap.start)
        found_scores.append(scores)
        rows, scores = np.concatenate(found_rows), np.concatenate(found_scores)
        order = np.argsort(-scores, kind="stable")[:n]
        return rows[order], scores[order]

    def explain(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> QueryPlan:
        """Run a search and say how each segment answered it: the plan (exact over the
        matching rows, the index with an allow-list, a widened walk, ...), how many rows
        matched and why that plan was chosen."""
        return self.search_explained(vector, k, filter, False, False, params, tenant)[1]

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
        """``search`` that also returns the QueryPlan ``explain`` describes."""
        code = self._tenant(tenant)
        query = as_query(vector, self.config.dim)
        plans: list[SegmentPlan] = []
        started = time.perf_counter()
        compiled = self._compile(filter)
        hits = self._search(
            query.reshape(1, -1), k, compiled, with_payload, with_vector, params, plans, code
        )[0]
        seconds = time.perf_counter() - started
        names = sorted(compiled.fields) if compiled is not None else []
        schema = self.config.payload_index
        plan = QueryPlan(
            segments=plans,
            indexed_fields=[f for f in names if f in schema],
            unindexed_fields=[f for f in names if f not in schema],
            hits=len(hits),
            seconds=seconds,
        )
        return hits, plan

    def _ids_of(self, snap: _Snapshot, rows: np.ndarray) -> list[PointId | None]:
        """Point ids of result ``rows``: from the segments' id files, or RocksDB for rows
        of the mutable segment (None: deleted while we read)."""
        if len(snap.segments) == 1 and (rows.size == 0 or rows.max() < snap.start):
            return list(snap.segments[0].ids_at(rows))  # the common case: one sealed segment
        out: list[PointId | None] = [None] * rows.size
        sealed = np.flatnonzero(rows < snap.start)
        if sealed.size:
            los = np.array([s.lo for s in snap.segments])
            which = np.searchsorted(los, rows[sealed], side="right") - 1
            for w in np.unique(which).tolist():
                pick = sealed[which == w]
                for pos, pid in zip(pick.tolist(), snap.segments[w].ids_at(rows[pick]), strict=True):
                    out[pos] = pid
        mutable = np.flatnonzero(rows >= snap.start)
        if mutable.size:
            keys = self._store.id_keys_of([int(r) for r in rows[mutable]])
            for pos, key in zip(mutable.tolist(), keys, strict=True):
                out[pos] = id_from_key(key) if key is not None else None
        return out

    def _hits(
        self,
        snap: _Snapshot,
        scores: FloatMatrix,
        rows: np.ndarray,
        counts: np.ndarray,
        with_payload: bool,
        with_vector: bool,
    ) -> list[list[Hit]]:
        flat = (
            np.concatenate([rows[q, : counts[q]] for q in range(len(counts))])
            if len(counts) > 1
            else rows[0, : counts[0]]
        )
        ids = self._ids_of(snap, flat)
        flat_rows = flat.tolist()
        payloads: list[bytes | None] = self._store.payloads_of(flat_rows) if with_payload else []
        vectors: list[bytes | None] = self._store.vectors_of(flat_rows) if with_vector else []
        results: list[list[Hit]] = []
        pos = 0
        for q in range(len(counts)):
            hits = []
            for j in range(int(counts[q])):
                pid = ids[pos]
                pay = payloads[pos] if with_payload else None
                vec = vectors[pos] if with_vector else None
                pos += 1
                if pid is None or (with_payload and pay is None) or (with_vector and vec is None):
                    continue  # deleted while we read
                hits.append(
                    Hit(
                        pid,
                        float(scores[q, j]),
                        orjson.loads(pay) if pay is not None else None,
                        np.frombuffer(vec, dtype="<f4").copy() if vec is not None else None,
                    )
                )
            results.append(hits)
        return results

    def info(self) -> CollectionInfo:
        """Settings, live point count and the state of the index tier."""
        with self._lock:
            self._check_open()
            mutable = self._mutable_count()
            segments = list(self._segments)
            payload_bytes = self._mut_pidx.nbytes() + sum(
                index.nbytes() for s in segments for index in s.payload.values()
            )
            error = self._error
            busy = self._busy
            partitions = [p for parts in self._partitions.values() for p in parts]
            tenants = len(self._tenants.codes)
        notes = sorted({s.note for s in segments if s.note} | ({error} if error else set()))
        if self._damaged:
            notes.insert(0, str(degraded_error(self.name, self._damaged)))
        status = IndexStatus(
            segments=len(segments),
            indexed_points=sum(s.live_count for s in segments),
            mutable_points=mutable,
            index_bytes=sum(s.index_bytes() for s in segments)
            + payload_bytes
            + sum(p.nbytes() for p in partitions),
            note="; ".join(notes),
            optimizing=busy,
            tenants=tenants,
            tenant_partitions=len({p.code for p in partitions}),
            write_stall=self._store.write_stall(self._fault),
        )
        return CollectionInfo(self.name, self.config, status.indexed_points + mutable, status)

    def snapshot(self, dest: Path) -> int:
        """Write a consistent copy of the collection into the new folder ``dest``: a RocksDB
        checkpoint and hard links to the sealed segment files its manifest names. Writers
        wait while it is taken (links, no data copied); searches do not. Returns the
        number of live points the copy holds."""
        with self._lock:
            self._check_open()
            self._store.checkpoint(dest)
            segments = dest / _SEGMENTS
            segments.mkdir(exist_ok=True)
            for segment in self._segments:
                link_tree(segment.folder, segments / segment.folder.name)
            return self._mutable_count() + sum(s.live_count for s in self._segments)

    # ------------------------------------------------------------ optimizer
    def optimize(self, timeout: float | None = None) -> bool:
        """Seal the mutable segment now (whatever its size), compact and merge segments,
        and wait until the optimizer is idle; False if ``timeout`` seconds passed first."""
        self._check_open()
        self._store.check_writable()
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None  # longer than a wait can be: wait without a limit
        with self._lock:
            self._force_seal = True
            self._fault = None  # tried again now; set again if the disk still refuses
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while (
                (self._force_seal or self._busy or self._wake.is_set())
                and not self._closed
                and (self._fault is None or self._busy)  # a stalled optimizer answers at once
            ):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        if self._fault is not None:
            raise type(self._fault)(str(self._fault))
        if self._error:
            raise FailedPrecondition(f"the optimizer of {self.name!r} failed: {self._error}")
        return True

    def _optimize_loop(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if self._closed:
                    return
                self._wake.clear()
                self._busy = True
            try:
                worked = False
                while self._optimize_step():
                    worked = True
                self._error, self._fault = "", None
                self._backoff.reset()
                if worked:
                    release_heap()  # a burst of seals and merges is over: give its garbage back
            except BuildStopped:
                log.info("closing %r: the index build in progress was stopped", self.name)
            except Exception as exc:  # keep serving from what is sealed; info() shows the error
                self._fault = self._backoff.failed(exc, self._store.path, f"optimizer of {self.name!r}")
                if self._fault is None:
                    log.exception("optimizer of %r failed", self.name)
                self._error = str(self._fault or f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._force_seal = self._force_seal and self._fault is not None  # retried after back-off
            with self._lock:
                self._busy = False
                self._idle.notify_all()

    def _optimize_step(self) -> bool:
        """Do one unit of work (seal, compact or merge); False when there is none."""
        with self._lock:
            if self._closed or self._damaged:
                return False  # a degraded collection keeps its manifest as it is until repaired
            if self._scrub_step():
                return True
            if self._store.read_only:
                return False
            pending = self._next_row - self._mut_start
            size = self.config.segment_rows
            seal = pending >= size or (self._force_seal and pending > 0)
            if seal and self._sealed_last:
                # one compaction between two seals: under a steady stream of replacing writes
                # sealing alone would pile up segments full of dead rows
                self._sealed_last = False
                if self._rewrite_step():
                    return True
            if seal:
                self._sealed_last = True
                take_rows = min(pending, size)
                matrix, live = self._matrix, self._live[:take_rows].copy()
                start = self._mut_start
                schema = dict(self.config.payload_index)
                pidx = self._mut_pidx.snapshot()
            else:
                did = self._rewrite_step() or self._index_step() or self._tenant_step()
                if not did:
                    self._force_seal = False
                return did
        local = np.flatnonzero(live)
        segment = None
        log.info("sealing %d rows of %r", take_rows, self.name)
        if local.size:
            rows = local + start
            payload = {name: take(kind, pidx.get(name, []), rows) for name, kind in schema.items()}
            segment = self._build(rows, matrix[local], payload)
        with self._lock:
            if self._closed:
                return False
            names = [s.name for s in self._segments] + ([segment.name] if segment is not None else [])
            died = local[~self._live[local]] + start  # deleted while the segment was built
            with discard_unless_committed(segment):
                self._store.put_meta(
                    {SEGMENTS: orjson.dumps(names), MUTABLE_START: row_key(start + take_rows)},
                    add_dead=[int(r) for r in died] if segment is not None else [],
                )
            if segment is not None:
                segment.kill(died)
                self._segments.append(segment)
            rest = self._next_row - start - take_rows
            capacity = max(_MIN_CAPACITY, int(rest * _GROW))
            new_matrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
            new_matrix[:rest] = self._matrix[take_rows : take_rows + rest]
            new_live = np.zeros(capacity, dtype=np.bool_)
            new_live[:rest] = self._live[take_rows : take_rows + rest]
            new_tcodes = np.full(capacity, -1, dtype=np.int32)
            new_tcodes[:rest] = self._tcodes[take_rows : take_rows + rest]
            self._matrix, self._live, self._mut_start = new_matrix, new_live, start + take_rows
            self._tcodes = new_tcodes
            self._mut_pidx.forget_below(start + take_rows)
        log.info(
            "sealed %d rows of %r into segment %s", take_rows, self.name, segment.name if segment else "-"
        )
        return True

    def _scrub_step(self) -> bool:
        """Verify the files of one segment opened but not yet checked in full (the vector
        file: see engine/segments.py); a damaged one makes the collection degraded. Caller
        holds the lock; the reading runs without it. Returns whether it did one."""
        segment = next((s for s in self._segments if not s.verified), None)
        if segment is None:
            return False
        self._lock.release()
        try:
            problems = segment.scrub()
        finally:
            self._lock.acquire()
        if problems and segment in self._segments:
            self._segments = [s for s in self._segments if s is not segment]
            self._damaged[segment.name] = "; ".join(problems)
            log.error(
                "%s: collection %r is degraded until repaired (lamina check --repair)", problems[0], self.name
            )
        return True

    def _rewrite_step(self) -> bool:
        """Pick segments to rewrite (caller holds the lock): one with many dead rows, or
        two neighbours that fit in one segment together, with as many following neighbours
        as still fit. Returns whether it did one."""
        segments, size = self._segments, self.config.segment_rows
        first = next(
            (
                i
                for i, seg in enumerate(segments)
                if seg.dead > COMPACT_DEAD_FRACTION * seg.size or seg.live_count == 0
            ),
            None,
        )
        if first is None:
            first = next(
                (i for i, (a, b) in enumerate(pairwise(segments)) if a.live_count + b.live_count <= size),
                None,
            )
        if first is None:
            return False
        group = [segments[first]]
        live_rows = group[0].live_count
        for seg in segments[first + 1 :]:  # take in the neighbours whose live rows still fit
            if live_rows + seg.live_count > size:
                break
            group.append(seg)
            live_rows += seg.live_count
        lives = [seg.live.copy() for seg in group]
        schema = dict(self.config.payload_index)
        log.info("compacting %d segment(s) of %r", len(group), self.name)
        self._lock.release()
        try:
            rows = np.concatenate([seg.rows[lv] for seg, lv in zip(group, lives, strict=True)])
            segment = None
            if rows.size:
                vectors = np.concatenate([seg.vectors[lv] for seg, lv in zip(group, lives, strict=True)])
                maps, offset = [], 0
                for seg, lv in zip(group, lives, strict=True):
                    mapping = np.full(seg.size, -1, dtype=np.int64)
                    mapping[lv] = np.arange(offset, offset + int(lv.sum()))
                    offset += int(lv.sum())
                    maps.append(mapping)
                payload = {  # carried over by renumbering; a field some segment lacks is built later
                    name: FieldIndex.merge([seg.payload[name] for seg in group], maps)
                    for name in schema
                    if all(name in seg.payload for seg in group)
                }
                segment = self._build(rows, vectors, payload)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        at = self._segments.index(group[0])
        replaced = self._segments[:at] + ([segment] if segment else []) + self._segments[at + len(group) :]
        gone = np.concatenate([seg.rows[~lv] for seg, lv in zip(group, lives, strict=True)])
        with discard_unless_committed(segment):
            self._store.put_meta({SEGMENTS: orjson.dumps([s.name for s in replaced])}, [int(r) for r in gone])
        if segment is not None:
            for seg, lv in zip(group, lives, strict=True):
                segment.kill(seg.rows[lv & ~seg.live])  # deleted while it was rebuilt
        self._segments = replaced
        for seg in group:
            shutil.rmtree(seg.folder, ignore_errors=True)
        log.info(
            "rewrote %d segment(s) of %r into %s", len(group), self.name, segment.name if segment else "-"
        )
        return True

    def _index_step(self) -> bool:
        """Build one payload index a sealed segment lacks (the field's index was added after
        the segment was sealed) from the stored payloads; caller holds the lock. Returns
        whether it did one."""
        todo = next(
            (
                (seg, name, kind)
                for seg in self._segments
                for name, kind in self.config.payload_index.items()
                if name not in seg.payload
            ),
            None,
        )
        if todo is None:
            return False
        segment, name, kind = todo
        self._lock.release()
        try:
            started = time.perf_counter()
            index = self._index_segment(segment, name, kind)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        if segment in self._segments and self.config.payload_index.get(name) == kind:
            segment.add_payload_index(name, index)
            log.info(
                "built %s index of %r over segment %s of %r in %.1f s",
                kind,
                name,
                segment.name,
                self.name,
                time.perf_counter() - started,
            )
        return True

    def _tenant_step(self) -> bool:
        """Promote, extend or demote one tenant's HNSW partitions (caller holds the lock;
        builds run without it). A tenant of ``tenant_index_rows`` points or more, half of
        them sealed, gets a main graph over its sealed rows. Rows sealed after it go into
        a delta graph once they reach ``DELTA_SHARE`` of the main one and a quarter of the
        threshold (the delta is rebuilt
        over all of them each time), and when main and delta differ by less than
        ``MERGE_SHARE`` both are rebuilt as one main graph: a query walks at most two
        graphs and scores few rows exactly, and rebuild work stays proportional to the
        tenant's size. A tenant that shrinks below half the threshold loses its graphs.
        Returns whether it did one."""
        if not self._multi:
            return False
        threshold = self.config.tenant_index_rows
        for code in self._partitions:
            if self._tenant_live.get(code, 0) < threshold // 2:
                self._partitions = {c: p for c, p in self._partitions.items() if c != code}
                log.info(
                    "demoted tenant %r of %r: %d points",
                    self._tenants.names.get(code),
                    self.name,
                    self._tenant_live.get(code, 0),
                )
                return True
        todo: tuple[int, int] | None = None  # (tenant, first row of the graph to build)
        for code, live in self._tenant_live.items():
            if live < threshold:
                continue
            graphs = self._partitions.get(code, ())
            bound = graphs[-1].bound if graphs else 0
            outside = sum(
                int(np.count_nonzero(seg.live[loc] & (seg.rows[loc] >= bound)))
                for seg in self._segments
                if seg.hi > bound
                for loc in [seg.tenant_local(code)]
            )
            if not graphs:
                if outside >= threshold // 2:
                    todo = (code, 0)
            elif outside >= max(threshold // 4, DELTA_SHARE * graphs[0].live_count):
                delta = sum(p.live_count for p in graphs[1:]) + outside
                todo = (code, 0 if delta >= MERGE_SHARE * graphs[0].live_count else graphs[0].bound)
            if todo is not None:
                break
        if todo is None:
            return False
        (code, lo), bound = todo, self._mut_start
        picks = []
        for seg in self._segments:
            if seg.hi > lo:
                local = seg.tenant_local(code)
                picks.append((seg, local[seg.live[local] & (seg.rows[local] >= lo)]))
        self._lock.release()
        try:
            started = time.perf_counter()
            rows = np.concatenate([seg.rows[loc] for seg, loc in picks])
            vectors = np.concatenate([seg.gather(loc) for seg, loc in picks])
            order = np.argsort(rows)
            part = Partition.build(
                code, lo, bound, rows[order], vectors[order], self.config, self._metric, build_threads()
            )
        finally:
            self._lock.acquire()
        if self._closed or code not in self._tenants.names:
            return True  # closed, or the tenant was deleted meanwhile
        current = self._partitions.get(code, ())
        if lo and (not current or current[0].bound != lo):
            return True  # the main graph changed meanwhile: this delta no longer fits
        part.kill(part.rows[~self._alive_sealed(part.rows)])  # deleted while it was built
        self._partitions = {**self._partitions, code: (part,) if lo == 0 else (current[0], part)}
        log.info(
            "built the %s HNSW partition of tenant %r of %r: %d rows in %.1f s",
            "delta" if lo else "main",
            self._tenants.names.get(code),
            self.name,
            part.live_count,
            time.perf_counter() - started,
        )
        return True

    def _alive_sealed(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of the ascending global ``rows`` is live in a sealed segment (caller holds the lock)."""
        alive = np.zeros(rows.size, np.bool_)
        for seg in self._segments:
            inside = np.flatnonzero((rows >= seg.lo) & (rows < seg.hi))
            if inside.size:
                pos = np.searchsorted(seg.rows, rows[inside])
                hit = seg.rows[pos] == rows[inside]
                alive[inside[hit]] = seg.live[pos[hit]]
        return alive

    def _index_segment(self, segment: Segment, name: str, kind: str) -> FieldIndex:
        """A payload index of a sealed segment built from its stored payloads."""
        payloads = self._stored_payloads(segment.rows)
        return FieldIndex.build(kind, tuple(name.split(".")), range(segment.size), payloads)

    def create_payload_index(self, field: str, kind: str) -> bool:
        """Index a payload field (``keyword``, ``int``, ``float``, ``bool``, ``datetime`` or
        ``text``). The mutable segment is indexed now; sealed segments in the background
        (``optimize()`` waits for them); filters are exact meanwhile. Returns False when
        the field already has this index."""
        check_payload_field(field, kind)
        with self._lock:
            self._check_open()
            current = self.config.payload_index.get(field)
            if current == kind:
                return False
            if current is not None:
                raise InvalidArgument(
                    f"field {field!r} already has a {current} index: drop_payload_index({field!r}) first"
                )
            config = replace(self.config, payload_index={**self.config.payload_index, field: kind})
            self._store.put_meta({CONFIG: orjson.dumps(config.to_dict())})
            self.config = config
            self._index_mutable({field: kind})
        self._wake.set()
        log.info("added %s payload index on %r of %r", kind, field, self.name)
        return True

    def drop_payload_index(self, field: str) -> bool:
        """Remove a payload index; False when the field had none."""
        with self._lock:
            self._check_open()
            if field not in self.config.payload_index:
                return False
            config = replace(
                self.config, payload_index={k: v for k, v in self.config.payload_index.items() if k != field}
            )
            self._store.put_meta({CONFIG: orjson.dumps(config.to_dict())})
            self.config = config
            self._mut_pidx.drop_field(field)
            for segment in self._segments:
                segment.drop_payload_index(field)
        return True

    def _keys_for_build(self, rows: np.ndarray) -> list[bytes]:
        """Id keys of ``rows`` from RocksDB; a row deleted meanwhile gets an empty key
        (it is killed in the new segment before the segment is used)."""
        keys: list[bytes] = []
        for lo in range(0, rows.size, 65_536):
            found = self._store.id_keys_of([int(r) for r in rows[lo : lo + 65_536]])
            keys.extend(k if k is not None else b"" for k in found)
        return keys

    def _build(self, rows: np.ndarray, vectors: FloatMatrix, payload: dict[str, FieldIndex]) -> Segment:
        folder = self._segment_dir / f"{int(rows[0]):012d}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        keys = self._keys_for_build(rows)
        segment = Segment.build(
            folder,
            rows,
            keys,
            vectors,
            self.config,
            self._metric,
            build_threads(),
            payload,
            stop=lambda: self._closed,  # closing does not wait for a whole build
        )
        log.info(
            "built %s segment of %d rows for %r in %.1f s",
            segment.tier.kind,
            rows.size,
            self.name,
            time.perf_counter() - started,
        )
        return segment


def merge_topk(parts: list[TopK], nq: int, k: int) -> TopK:
    """Merge per-segment top-k lists (kernel scores, global rows, counts) into one."""
    if not parts:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), np.zeros(nq, np.int64)
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([p[0] for p in parts], axis=1)
    rows = np.concatenate([p[1] for p in parts], axis=1)
    valid = np.concatenate([np.arange(p[0].shape[1])[None, :] < p[2][:, None] for p in parts], axis=1)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_rows = np.take_along_axis(rows, order, axis=1)
    counts = np.minimum(valid.sum(axis=1), k).astype(np.int64)
    return top_scores, np.where(np.isfinite(top_scores), top_rows, -1), counts
