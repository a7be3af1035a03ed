"""A collection: durable points in RocksDB, searched exactly by a numba kernel.

Writes go to RocksDB first (one WriteBatch per request) and then to the
in-memory search matrix; a rejected request raises before anything is written.
Every write gives points fresh rows, so an upsert that replaces a point leaves a
dead row behind (a tombstone in the ``live`` mask) until compaction reclaims it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from lamina.config import Limits
from lamina.engine.filters import Predicate, compile_filter
from lamina.errors import FailedPrecondition, InvalidArgument, NotFound
from lamina.index.flat import exact_topk
from lamina.index.kernels import METRIC_IP, METRIC_L2, finish_scores, normalize_rows
from lamina.storage.keys import id_from_key, id_key, row_from_key
from lamina.storage.rocks import CONFIG, FORMAT, FORMAT_VERSION, NEXT_ROW, CollectionStore
from lamina.types import CollectionConfig, CollectionInfo, FloatMatrix, Hit, Payload, Point, PointId
from lamina.validation import as_matrix, as_query, check_ids, check_int, check_k, encode_payloads

_GROW = 1.5
_MIN_CAPACITY = 1024


class Collection:
    """Engine-side collection. Thread-safe: writers are serialised by a lock;
    searches copy the live mask under the lock and then scan without it."""

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
        capacity = max(_MIN_CAPACITY, self._next_row)
        self._matrix: FloatMatrix = np.zeros((capacity, config.dim), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=np.bool_)
        self._load()

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
        """Rebuild the search matrix from the stored vectors."""
        dim = self.config.dim
        block_rows: list[int] = []
        block_vecs: list[bytes] = []

        def flush() -> None:
            if block_rows:
                vecs = np.frombuffer(b"".join(block_vecs), dtype="<f4").reshape(-1, dim)
                self._place(np.asarray(block_rows, dtype=np.int64), self._prepare(vecs))
                block_rows.clear()
                block_vecs.clear()

        for row, vec in self._store.scan_vectors():
            block_rows.append(row)
            block_vecs.append(vec)
            if len(block_rows) >= 65_536:
                flush()
        flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection {self.name!r} does not exist (it was deleted or the database closed)")

    # ------------------------------------------------------------ helpers
    def _prepare(self, vectors: FloatMatrix) -> FloatMatrix:
        """Vectors as the kernel sees them: unit length for cosine."""
        if self.config.metric != "cosine":
            return vectors
        norms = np.einsum("ij,ij->i", vectors, vectors)
        if (norms == 0).any():
            bad = int(np.flatnonzero(norms == 0)[0])
            raise InvalidArgument(f"vector {bad} is all zeros: a zero vector has no direction under cosine")
        return normalize_rows(vectors)

    def _ensure_capacity(self, need: int) -> None:
        """Grow the search matrix and live mask to hold ``need`` rows (caller holds the lock)."""
        if need > self._matrix.shape[0]:
            capacity = max(need, int(self._matrix.shape[0] * _GROW))
            matrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
            matrix[: self._matrix.shape[0]] = self._matrix
            live = np.zeros(capacity, dtype=np.bool_)
            live[: self._live.shape[0]] = self._live
            self._matrix, self._live = matrix, live

    def _place(self, rows: np.ndarray, prepared: FloatMatrix) -> None:
        """Write prepared vectors at ``rows`` and mark them live (caller holds the lock)."""
        if rows.size:
            self._ensure_capacity(int(rows.max()) + 1)
            self._matrix[rows] = prepared
            self._live[rows] = True

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
            self._store.apply(keys, first, raw.tobytes(), blobs, dead)
            self._next_row = first + len(keys)
            self._place(new_rows, prepared)
            if dead:
                self._live[[row for _, row in dead]] = False
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
            if predicate is None:
                rows = [int(r) for r in np.flatnonzero(self._live[: self._next_row])]
            else:
                rows = self._match_rows(predicate)
            found = self._store.id_keys_of(rows)
            return self._drop([(k, r) for k, r in zip(found, rows, strict=True) if k is not None])

    def _drop(self, dead: list[tuple[bytes, int]]) -> int:
        """Durably delete (id key, row) pairs, then hide the rows (caller holds the lock)."""
        if dead:
            self._store.apply([], self._next_row, b"", [], dead)
            self._live[[row for _, row in dead]] = False
        return len(dead)

    # ------------------------------------------------------------ reads
    def count(self, filter: Any = None) -> int:
        """Number of live points, or of those matching ``filter``."""
        predicate = self._compile(filter)
        self._check_open()
        if predicate is None:
            with self._lock:
                return int(np.count_nonzero(self._live[: self._next_row]))
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
    ) -> list[Hit]:
        """The ``k`` nearest points to one query vector, best first."""
        query = as_query(vector, self.config.dim)
        return self._search(query.reshape(1, -1), k, filter, with_payload, with_vector)[0]

    def search_batch(
        self,
        vectors: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
    ) -> list[list[Hit]]:
        """One hit list per query row, each best first."""
        queries = as_matrix(vectors, self.config.dim, "query vectors")
        if queries.shape[0] > self._limits.max_query_batch:
            raise InvalidArgument(
                f"batch of {queries.shape[0]} queries exceeds the limit of {self._limits.max_query_batch}"
            )
        if queries.shape[0] == 0:
            return []
        return self._search(queries, k, filter, with_payload, with_vector)

    def _search(
        self, queries: FloatMatrix, k: int, filter: Any, with_payload: bool, with_vector: bool
    ) -> list[list[Hit]]:
        k = check_k(k, self._limits)
        predicate = self._compile(filter)
        prepared = self._prepare(queries)
        allowed_rows = self._match_rows(predicate) if predicate is not None else None
        with self._lock:
            self._check_open()
            n = self._next_row
            matrix = self._matrix
            allowed = self._live[:n].copy()
        if allowed_rows is not None:
            mask = np.zeros(n, dtype=np.bool_)
            mask[[r for r in allowed_rows if r < n]] = True
            allowed &= mask
        scores, rows, counts = exact_topk(matrix, allowed, prepared, min(k, max(n, 1)), self._metric)
        scores = finish_scores(scores, self._metric)
        flat_rows = [int(r) for q in range(len(counts)) for r in rows[q, : counts[q]]]
        keys = self._store.id_keys_of(flat_rows)
        points = self._points(flat_rows, keys, with_payload, with_vector)
        results: list[list[Hit]] = []
        pos = 0
        for q in range(len(counts)):
            hits = []
            for j in range(int(counts[q])):
                point = points[pos]
                pos += 1
                if point is not None:  # None: deleted while we read
                    hits.append(Hit(point.id, float(scores[q, j]), point.payload, point.vector))
            results.append(hits)
        return results

    def info(self) -> CollectionInfo:
        return CollectionInfo(self.name, self.config, self.count())
