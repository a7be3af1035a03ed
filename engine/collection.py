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

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from lamina.config import Limits
from lamina.engine.filters import Predicate, compile_filter
from lamina.engine.segments import Segment
from lamina.errors import FailedPrecondition, InvalidArgument, NotFound
from lamina.index.flat import exact_topk
from lamina.index.kernels import METRIC_IP, METRIC_L2, finish_scores, normalize_rows
from lamina.index.tiers import Knobs, TopK
from lamina.storage.keys import id_from_key, id_key, row_from_key, row_key
from lamina.storage.rocks import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    MUTABLE_START,
    NEXT_ROW,
    SEGMENTS,
    CollectionStore,
)
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    FloatMatrix,
    Hit,
    IndexStatus,
    Payload,
    Point,
    PointId,
    SearchParams,
)
from lamina.validation import as_matrix, as_query, check_ids, check_int, check_k, encode_payloads

_GROW = 1.5
_MIN_CAPACITY = 1024
#: a segment with more than this fraction of dead rows is rewritten without them
COMPACT_DEAD_FRACTION = 0.2
_SEGMENTS = "segments"
_DEFAULT_PARAMS = SearchParams()

log = logging.getLogger("lamina.engine")


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
        self._segments: list[Segment] = []
        self._knob_cache: dict[tuple[int | None, float | None], Knobs] = {}
        self._segment_dir = store.path / _SEGMENTS
        self._load()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._force_seal = False
        self._error: str = ""
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
    def open(cls, name: str, path: Path, limits: Limits, *, sync: bool) -> Collection:
        if not (path / "CURRENT").exists():  # not a RocksDB: do not create one in a stranger's folder
            raise FailedPrecondition(f"{path} holds no Lamina collection: move it out of the data directory")
        store = CollectionStore(path, sync=sync)
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
        self._segment_dir.mkdir(exist_ok=True)
        for entry in self._segment_dir.iterdir():  # unfinished builds, segments replaced before a crash
            if entry.name not in names:
                shutil.rmtree(entry, ignore_errors=True)
        self._segments = [Segment.load(self._segment_dir / n, self.config, self._metric) for n in names]
        dead = self._store.dead_rows()
        for segment in self._segments:
            segment.kill(dead)
        dim = self.config.dim
        block_rows: list[int] = []
        block_vecs: list[bytes] = []

        def flush() -> None:
            if block_rows:
                vecs = np.frombuffer(b"".join(block_vecs), dtype="<f4").reshape(-1, dim)
                self._place(np.asarray(block_rows, dtype=np.int64), self._prepare(vecs))
                block_rows.clear()
                block_vecs.clear()

        for row, vec in self._store.scan_vectors(self._mut_start):
            block_rows.append(row)
            block_vecs.append(vec)
            if len(block_rows) >= 65_536:
                flush()
        flush()

    def close(self) -> None:
        """Stop the optimizer (waiting for a build in progress) and close the store."""
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
        norms = np.einsum("ij,ij->i", vectors, vectors)
        if (norms == 0).any():
            bad = int(np.flatnonzero(norms == 0)[0])
            raise InvalidArgument(f"vector {bad} is all zeros: a zero vector has no direction under cosine")
        return normalize_rows(vectors)

    def _ensure_capacity(self, need: int) -> None:
        """Grow the mutable matrix and live mask to hold ``need`` rows (caller holds the lock)."""
        if need > self._matrix.shape[0]:
            capacity = max(need, int(self._matrix.shape[0] * _GROW))
            matrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
            matrix[: self._matrix.shape[0]] = self._matrix
            live = np.zeros(capacity, dtype=np.bool_)
            live[: self._live.shape[0]] = self._live
            self._matrix, self._live = matrix, live

    def _place(self, rows: np.ndarray, prepared: FloatMatrix) -> None:
        """Write prepared vectors at global ``rows`` of the mutable segment and mark them
        live (caller holds the lock)."""
        if rows.size:
            local = rows - self._mut_start
            self._ensure_capacity(int(local.max()) + 1)
            self._matrix[local] = prepared
            self._live[local] = True

    def _kill(self, rows: Sequence[int]) -> None:
        """Hide dead global ``rows`` from every segment (caller holds the lock)."""
        arr = np.asarray(rows, dtype=np.int64)
        mutable = arr[arr >= self._mut_start]
        self._live[mutable - self._mut_start] = False
        sealed = np.sort(arr[arr < self._mut_start])
        if sealed.size:
            for segment in self._segments:
                segment.kill(sealed)

    def _match_rows(self, predicate: Predicate) -> list[int]:
        """Rows whose payload satisfies ``predicate`` (exact scan over stored payloads)."""
        return [row for row, blob in self._store.scan_payloads() if predicate(orjson.loads(blob))]

    def _compile(self, flt: Any) -> Predicate | None:
        return compile_filter(flt, self._limits.max_filter_depth)

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
        self, ids: Sequence[PointId], vectors: object, payloads: Sequence[Payload | None] | None = None
    ) -> int:
        """Insert or replace points; returns how many were written."""
        id_list = check_ids(ids, self._limits)
        if not id_list:
            raise InvalidArgument("upsert needs at least one point: ids is empty")
        matrix = as_matrix(vectors, self.config.dim)
        if matrix.shape[0] != len(id_list):
            raise InvalidArgument(
                f"got {matrix.shape[0]} vectors for {len(id_list)} ids: give one vector per id"
            )
        blobs = encode_payloads(payloads, len(id_list), self._limits)
        prepared = self._prepare(matrix)  # raises on zero vectors before anything is written
        keys = [id_key(i) for i in id_list]
        raw = matrix.astype("<f4", copy=False)
        with self._lock:
            self._check_open()
            old_rows = self._store.rows_of(keys)
            first = self._next_row
            new_rows = np.arange(first, first + len(keys), dtype=np.int64)
            dead = [(key, row) for key, row in zip(keys, old_rows, strict=True) if row is not None]
            self._store.apply(keys, first, raw.tobytes(), blobs, dead, self._mut_start)
            self._next_row = first + len(keys)
            self._place(new_rows, prepared)
            if dead:
                self._kill([row for _, row in dead])
        if self._next_row - self._mut_start >= self.config.segment_rows:
            self._wake.set()
        return len(keys)

    def delete(self, ids: Sequence[PointId] | None = None, filter: Any = None) -> int:
        """Delete by ids or by filter (exactly one); returns how many points were deleted."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        if ids is not None:
            keys = list(dict.fromkeys(id_key(i) for i in check_ids(ids, self._limits, unique=False)))
            with self._lock:
                self._check_open()
                rows_of = self._store.rows_of(keys)
                dead = [(k, r) for k, r in zip(keys, rows_of, strict=True) if r is not None]
                return self._drop(dead)
        predicate = self._compile(filter)  # None: the empty filter, which matches every point
        with self._lock:
            self._check_open()
            rows = self._live_rows() if predicate is None else self._match_rows(predicate)
            found = self._store.id_keys_of(rows)
            return self._drop([(k, r) for k, r in zip(found, rows, strict=True) if k is not None])

    def _drop(self, dead: list[tuple[bytes, int]]) -> int:
        """Durably delete (id key, row) pairs, then hide the rows (caller holds the lock)."""
        if dead:
            self._store.apply([], self._next_row, b"", [], dead, self._mut_start)
            self._kill([row for _, row in dead])
            if any(s.dead > COMPACT_DEAD_FRACTION * s.size for s in self._segments):
                self._wake.set()
        return len(dead)

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
    def count(self, filter: Any = None) -> int:
        """Number of live points, or of those matching ``filter``."""
        predicate = self._compile(filter)
        self._check_open()
        if predicate is None:
            with self._lock:
                return self._live_count()
        return len(self._match_rows(predicate))

    def get(self, ids: Sequence[PointId], with_payload: bool = True, with_vector: bool = True) -> list[Point]:
        """Points for ``ids`` in the order asked; ids that do not exist are left out."""
        id_list = check_ids(ids, self._limits, unique=False)
        self._check_open()
        keys = [id_key(i) for i in id_list]
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
    ) -> tuple[list[Point], PointId | None]:
        """One page of points in id order from ``offset``; returns (points, next offset or None)."""
        if not 1 <= check_int("scroll limit", limit) <= self._limits.max_scroll_limit:
            raise InvalidArgument(
                f"scroll limit must be an integer in 1..{self._limits.max_scroll_limit}, got {limit!r}"
            )
        start = id_key(check_ids([offset], self._limits)[0]) if offset is not None else None
        predicate = self._compile(filter)
        self._check_open()
        page: list[tuple[bytes, int]] = []
        next_offset: PointId | None = None
        for key, row in self._store.scan_ids(start):
            if predicate is not None:
                blob = self._store.payloads_of([row])[0]
                if blob is None or not predicate(orjson.loads(blob)):
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
    ) -> list[Hit]:
        """The ``k`` nearest points to one query vector, best first."""
        query = as_query(vector, self.config.dim)
        return self._search(query.reshape(1, -1), k, filter, with_payload, with_vector, params)[0]

    def search_batch(
        self,
        vectors: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
    ) -> list[list[Hit]]:
        """One hit list per query row, each best first."""
        queries = as_matrix(vectors, self.config.dim, "query vectors")
        if queries.shape[0] > self._limits.max_query_batch:
            raise InvalidArgument(
                f"batch of {queries.shape[0]} queries exceeds the limit of {self._limits.max_query_batch}"
            )
        if queries.shape[0] == 0:
            return []
        return self._search(queries, k, filter, with_payload, with_vector, params)

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            self._check_open()
            n = self._next_row - self._mut_start
            return _Snapshot(tuple(self._segments), self._mut_start, self._matrix, self._live[:n].copy())

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
        filter: Any,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
    ) -> list[list[Hit]]:
        k = check_k(k, self._limits)
        params = params or _DEFAULT_PARAMS
        predicate = self._compile(filter)
        prepared = self._prepare(queries)
        allowed = np.asarray(self._match_rows(predicate), dtype=np.int64) if predicate is not None else None
        snap = self._snapshot()
        knobs = self._knobs(params)
        parts: list[TopK] = []
        for segment in snap.segments:
            if allowed is not None:  # exact over the matching rows (payload-index plans come with #5)
                rows, vectors = segment.gather(allowed)
                parts.append(_exact_over(rows, vectors, prepared, k, self._metric))
            else:
                parts.append(segment.search(prepared, k, knobs, params.exact, self._metric))
        mask = snap.live
        if allowed is not None:
            local = allowed[(allowed >= snap.start) & (allowed < snap.start + mask.size)] - snap.start
            only = np.zeros_like(mask)
            only[local] = True
            mask = mask & only
        if mask.any():
            scores, local_rows, counts = exact_topk(
                snap.matrix, mask, prepared, min(k, mask.size), self._metric
            )
            parts.append((scores, np.where(local_rows >= 0, local_rows + snap.start, -1), counts))
        scores, rows, counts = merge_topk(parts, prepared.shape[0], k)
        return self._hits(snap, finish_scores(scores, self._metric), rows, counts, with_payload, with_vector)

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
            error = self._error
        notes = sorted({s.note for s in segments if s.note} | ({error} if error else set()))
        status = IndexStatus(
            segments=len(segments),
            indexed_points=sum(s.live_count for s in segments),
            mutable_points=mutable,
            index_bytes=sum(s.index_bytes() for s in segments),
            note="; ".join(notes),
        )
        return CollectionInfo(self.name, self.config, status.indexed_points + mutable, status)

    # ------------------------------------------------------------ optimizer
    def optimize(self, timeout: float | None = None) -> bool:
        """Seal the mutable segment now (whatever its size), compact and merge segments,
        and wait until the optimizer is idle; False if ``timeout`` seconds passed first."""
        self._check_open()
        with self._lock:
            self._force_seal = True
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while (self._force_seal or self._busy or self._wake.is_set()) and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
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
                while self._optimize_step():
                    pass
                self._error = ""
            except Exception as exc:  # keep serving from what is sealed; info() shows the error
                log.exception("optimizer of %r failed", self.name)
                self._error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._force_seal = False
            with self._lock:
                self._busy = False
                self._idle.notify_all()

    def _optimize_step(self) -> bool:
        """Do one unit of work (seal, compact or merge); False when there is none."""
        with self._lock:
            if self._closed:
                return False
            pending = self._next_row - self._mut_start
            size = self.config.segment_rows
            if pending >= size or (self._force_seal and pending > 0):
                take = min(pending, size)
                matrix, live = self._matrix, self._live[:take].copy()
                start = self._mut_start
            else:
                did = self._rewrite_step()
                if not did:
                    self._force_seal = False
                return did
        local = np.flatnonzero(live)
        segment = None
        if local.size:
            segment = self._build(local + start, matrix[local])
        with self._lock:
            if self._closed:
                return False
            names = [s.name for s in self._segments] + ([segment.name] if segment is not None else [])
            died = local[~self._live[local]] + start  # deleted while the segment was built
            self._store.put_meta(
                {SEGMENTS: orjson.dumps(names), MUTABLE_START: row_key(start + take)},
                add_dead=[int(r) for r in died] if segment is not None else [],
            )
            if segment is not None:
                segment.kill(died)
                self._segments.append(segment)
            rest = self._next_row - start - take
            capacity = max(_MIN_CAPACITY, int(rest * _GROW))
            new_matrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
            new_matrix[:rest] = self._matrix[take : take + rest]
            new_live = np.zeros(capacity, dtype=np.bool_)
            new_live[:rest] = self._live[take : take + rest]
            self._matrix, self._live, self._mut_start = new_matrix, new_live, start + take
        log.info("sealed %d rows of %r into segment %s", take, self.name, segment.name if segment else "-")
        return True

    def _rewrite_step(self) -> bool:
        """Pick segments to rewrite (caller holds the lock): one with many dead rows, or
        two neighbours that fit in one segment together. Returns whether it did one."""
        group: list[Segment] = []
        for seg in self._segments:
            if seg.dead > COMPACT_DEAD_FRACTION * seg.size or seg.live_count == 0:
                group = [seg]
                break
        if not group:
            for left, right in pairwise(self._segments):
                if left.live_count + right.live_count <= self.config.segment_rows:
                    group = [left, right]
                    break
        if not group:
            return False
        lives = [seg.live.copy() for seg in group]
        self._lock.release()
        try:
            rows = np.concatenate([seg.rows[lv] for seg, lv in zip(group, lives, strict=True)])
            segment = None
            if rows.size:
                vectors = np.concatenate([seg.vectors[lv] for seg, lv in zip(group, lives, strict=True)])
                segment = self._build(rows, vectors)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        at = self._segments.index(group[0])
        replaced = self._segments[:at] + ([segment] if segment else []) + self._segments[at + len(group) :]
        gone = np.concatenate([seg.rows[~lv] for seg, lv in zip(group, lives, strict=True)])
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

    def _keys_for_build(self, rows: np.ndarray) -> list[bytes]:
        """Id keys of ``rows`` from RocksDB; a row deleted meanwhile gets an empty key
        (it is killed in the new segment before the segment is used)."""
        keys: list[bytes] = []
        for lo in range(0, rows.size, 65_536):
            found = self._store.id_keys_of([int(r) for r in rows[lo : lo + 65_536]])
            keys.extend(k if k is not None else b"" for k in found)
        return keys

    def _build(self, rows: np.ndarray, vectors: FloatMatrix) -> Segment:
        folder = self._segment_dir / f"{int(rows[0]):012d}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        keys = self._keys_for_build(rows)
        segment = Segment.build(folder, rows, keys, vectors, self.config, self._metric, build_threads())
        log.info(
            "built %s segment of %d rows for %r in %.1f s",
            segment.tier.kind,
            rows.size,
            self.name,
            time.perf_counter() - started,
        )
        return segment


def _exact_over(rows: np.ndarray, vectors: FloatMatrix, queries: FloatMatrix, k: int, metric: int) -> TopK:
    """Exact top-k over gathered ``vectors`` whose global row numbers are ``rows``."""
    if rows.size == 0:
        nq = queries.shape[0]
        return (np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), np.zeros(nq, np.int64))
    scores, local, counts = exact_topk(
        vectors, np.ones(rows.size, np.bool_), queries, min(k, rows.size), metric
    )
    return scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1), counts


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
