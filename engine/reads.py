"""The read path: count, get, scroll and dense search. A search takes a snapshot
(engine/state.py), asks every sealed segment for its top-k (with an allow mask from
engine/planner.py under a filter), scans the mutable segment exactly, merges the lists
(engine/topk.py) and turns rows into hits (ids from the segments' id files or RocksDB,
payloads from the segments' payload columns or RocksDB, vectors from RocksDB)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
import orjson

from lamina.errors import InvalidArgument, ResourceExhausted
from lamina.index.kernels import finish_scores
from lamina.index.tiers import TopK
from lamina.storage.keys import id_from_key, tenant_prefix
from lamina.types import FloatMatrix, Hit, Point, PointId, QueryPlan, SearchParams, SegmentPlan
from lamina.validation import as_matrix, as_query, check_ids, check_int, check_k

from . import bounds
from .filters import CompiledFilter
from .manifest import degraded_error
from .plain import PlainSearch
from .planner import DEFAULT_PARAMS
from .state import ReadSnapshot, Vanished
from .topk import coded, merge_topk, mutable_topk

_ALIVE_STEP = 64  # queries searched between liveness checks of a batch


class Reads(PlainSearch):
    """Reads of a collection."""

    def count(self, filter: Any = None, tenant: str | None = None) -> int:
        """Number of live points (of ``tenant``), or of those matching ``filter``."""
        code = self._tenant(tenant)
        compiled = self._compile(filter, tenant)
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
        self._check_answer(1, len(id_list), code, with_payload, with_vector, "ask for fewer ids per request")
        keys = self._keys(id_list, code)
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
        compiled = self._compile(filter, tenant)
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
        self._check_answer(1, limit, code, with_payload, with_vector, "ask for a smaller page (limit)")
        for seen, (key, row) in enumerate(self._store.scan_ids(start)):
            if seen % 4_096 == 0:
                bounds.check()  # a filter matching few points reads many keys
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
        return self._search_one(vector, k, filter, with_payload, with_vector, params, tenant, None)

    def search_json(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> tuple[list[Hit], list[bytes]]:
        """``search`` with payloads, for the server (CollectionProtocol): the hits' payloads
        are left None and given instead as the JSON bytes stored, one per hit, never decoded."""
        raw: list[bytes] = []
        return self._search_one(vector, k, filter, True, False, params, tenant, raw), raw

    def _search_one(
        self,
        vector: object,
        k: object,
        filter: Any,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
        raw: list[bytes] | None,
    ) -> list[Hit]:
        """``search``; ``raw``: a list that receives the hits' stored payload JSON instead of
        their payloads (see ``search_json``)."""
        if filter is None and tenant is None and not with_vector and (params is None or not params.exact):
            hits = self._plain(vector, k, with_payload, params, raw)
            if hits is not None:
                return hits
            if raw is not None:
                raw.clear()  # the plain path gave up after building its hits
        code = self._tenant(tenant)
        query = as_query(vector, self.config.dim)
        checked = check_k(k, self._limits)
        self._check_answer(1, checked, code, with_payload, with_vector)
        return self._search(
            query.reshape(1, -1),
            checked,
            self._compile(filter, tenant),
            with_payload,
            with_vector,
            params,
            code=code,
            raw=raw,
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
        compiled = self._compile(filter, tenant)
        self._check_answer(queries.shape[0], check_k(k, self._limits), code, with_payload, with_vector)
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
        self._check_answer(1, check_k(k, self._limits), code, with_payload, with_vector)
        plans: list[SegmentPlan] = []
        started = time.perf_counter()
        compiled = self._compile(filter, tenant)
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
        raw: list[bytes] | None = None,
    ) -> list[list[Hit]]:
        asked = k  # checked by every caller (check_k)
        prepared = self._prepare(queries)
        if code == -1:  # a tenant without points
            return [[] for _ in range(queries.shape[0])]

        def read(snap: ReadSnapshot) -> list[list[Hit]]:
            # no more hits than rows the snapshot holds (dead ones too: a safe bound), so that
            # the kernels never allocate queries x k for a k past the collection's size
            k = max(1, min(asked, sum(s.size for s in snap.segments) + snap.live.size))
            if explain is not None:
                explain.clear()
            if raw is not None:
                raw.clear()  # an earlier attempt's (see _read)
            if code is not None:
                masks = self._masks(compiled, snap, code) if compiled is not None else None
                found = self._tenant_rows(prepared, k, snap, code, masks, params, explain)
                return self._hits(
                    snap,
                    finish_scores(found[0], self._metric),
                    found[1],
                    found[2],
                    with_payload,
                    with_vector,
                    raw,
                )
            masks = self._filter_masks(compiled, snap) if compiled is not None else None
            scores, rows, counts = self._search_rows(prepared, k, snap, masks, params, explain)
            return self._hits(
                snap, finish_scores(scores, self._metric), rows, counts, with_payload, with_vector, raw
            )

        return self._read(read)

    def _search_rows(
        self,
        prepared: FloatMatrix,
        k: int,
        snap: ReadSnapshot,
        masks: list[np.ndarray] | None,
        params: SearchParams | None,
        explain: list[SegmentPlan] | None,
    ) -> TopK:
        """Top-k (kernel scores, global rows, counts) over a snapshot; ``masks`` (from
        ``_filter_masks``) restrict it to the rows matching a filter."""
        params = params or DEFAULT_PARAMS
        knobs = self._knobs(params)
        parts: list[TopK] = []
        mask = snap.live
        if masks is None:
            for segment in snap.segments:
                parts.append(segment.search(prepared, k, knobs, params.exact, self._metric))
        else:
            plan = "exact" if params.exact else params.plan
            for segment, allow in zip(snap.segments, masks, strict=False):
                started = time.perf_counter()
                found, how = segment.search_filtered(prepared, k, knobs, allow, plan, self._metric)
                parts.append(found)
                if explain is not None:
                    explain.append(replace(how, seconds=time.perf_counter() - started))
            mask = masks[-1]
        started = time.perf_counter()
        if mask.any():
            parts.append(mutable_topk(prepared, k, snap, mask, self._metric, params.exact))
        if explain is not None and masks is not None:
            by_codes = not params.exact and coded(mask.size, min(k, mask.size), snap.thresholds)
            method = "binary+rerank" if by_codes else "exact"
            reason = (
                "the mutable segment is scanned by its binary codes, candidates reranked exactly"
                if by_codes
                else "the mutable segment is scanned exactly"
            )
            seconds = time.perf_counter() - started
            explain.append(
                SegmentPlan("mutable", int(snap.live.sum()), int(mask.sum()), method, reason, seconds)
            )
        return merge_topk(parts, prepared.shape[0], k)

    def _ids_of(self, snap: ReadSnapshot, rows: np.ndarray) -> list[PointId | None]:
        """Point ids of result ``rows``: from the segments' id files, or RocksDB for rows
        of the mutable segment (None: deleted while we read)."""
        if len(snap.segments) == 1 and (snap.live.size == 0 or rows.size == 0 or rows.max() < snap.start):
            return cast(
                list[PointId | None], snap.segments[0].ids_at(rows)
            )  # the common case: one sealed segment
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
        snap: ReadSnapshot,
        scores: FloatMatrix,
        rows: np.ndarray,
        counts: np.ndarray,
        with_payload: bool,
        with_vector: bool,
        raw: list[bytes] | None = None,
    ) -> list[list[Hit]]:
        """The hits of a search's top-k rows (see ``_plain_hits`` for ``raw``)."""
        nq = len(counts)
        ends = np.cumsum(counts).tolist() if nq > 1 else [int(counts[0])]
        flat = np.concatenate([rows[q, : counts[q]] for q in range(nq)]) if nq > 1 else rows[0, : counts[0]]
        flat_scores = (
            np.concatenate([scores[q, : counts[q]] for q in range(nq)]) if nq > 1 else scores[0, : counts[0]]
        ).tolist()  # Python floats in one call, not one numpy scalar per hit
        ids = self._ids_of(snap, flat)
        if not with_payload and not with_vector:
            hits = [Hit(pid, s) for pid, s in zip(ids, flat_scores, strict=True) if pid is not None]
            if len(hits) == len(ids):  # nothing deleted while we read: cut the flat list per query
                return [hits[lo:hi] for lo, hi in zip([0, *ends[:-1]], ends, strict=True)]
        flat_rows = flat.tolist()
        payloads = self._payloads(snap.segments, snap.start, flat) if with_payload else []
        vectors: list[bytes | None] = self._vectors_of(flat_rows) if with_vector else []
        results: list[list[Hit]] = []
        lo = 0
        for hi in ends:
            hits = []
            for pos in range(lo, hi):
                pid = ids[pos]
                pay = payloads[pos] if with_payload else None
                vec = vectors[pos] if with_vector else None
                if pid is None or (with_payload and pay is None) or (with_vector and vec is None):
                    if not snap.final:
                        raise Vanished  # a delete in flight: run again (CollectionState._read)
                    continue  # deleted while we read
                if raw is not None and pay is not None:
                    raw.append(pay)
                    pay = None
                hits.append(
                    Hit(
                        pid,
                        flat_scores[pos],
                        orjson.loads(pay) if pay is not None else None,
                        np.frombuffer(vec, dtype="<f4").copy() if vec is not None else None,
                    )
                )
            results.append(hits)
            lo = hi
        return results

    def _points(
        self, rows: Sequence[int], keys: Sequence[bytes | None], with_payload: bool, with_vector: bool
    ) -> list[Point | None]:
        payloads = self._store.payloads_of(rows) if with_payload else [None] * len(rows)
        vectors = self._vectors_of(rows) if with_vector else [None] * len(rows)
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
