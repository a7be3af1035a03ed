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
from lamina.index.kernels import finish_scores, unit_query
from lamina.index.tiers import TopK
from lamina.storage.keys import id_from_key, tenant_prefix
from lamina.types import FloatMatrix, Hit, Point, PointId, QueryPlan, SearchParams, SegmentPlan, make_hit
from lamina.validation import SAFE_NORM2, as_matrix, as_query, check_ids, check_int, check_k, plain_vector

from . import bounds
from .filters import CompiledFilter
from .manifest import degraded_error
from .planner import DEFAULT_PARAMS
from .segments import Segment, nearest_all
from .state import ReadSnapshot, Vanished
from .tenancy import TenantSearch
from .topk import coded, merge_topk, mutable_topk, tail_topk


def _id_or_none(key: bytes | None) -> PointId | None:
    return id_from_key(key) if key is not None else None


_new = object.__new__
_ALIVE_STEP = 64  # queries searched between liveness checks of a batch
#: a collection is ``quick`` while its mutable segment (scanned exactly by every search) holds
#: at most this many rows: a scan of 4,096 x 384 floats takes well under a millisecond
QUICK_MUTABLE_ROWS = 4_096


class Reads(TenantSearch):
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

    def quick(self) -> bool:
        """Whether an unfiltered search is an index walk and little more (CollectionProtocol):
        no tenants, every sealed segment indexed, a small mutable segment, nothing damaged."""
        return (
            not self._multi
            and not self._damaged
            and self._next_row - self._mut_start <= QUICK_MUTABLE_ROWS
            and all(s.tier.kind != "exact" for s in self._segments)
        )

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

    def _plain(
        self,
        vector: object,
        k: object,
        with_payload: bool,
        params: SearchParams | None,
        raw: list[bytes] | None = None,
    ) -> list[Hit] | None:
        """A plain search (no filter, tenant, text, explain or vectors) from the snapshot to
        the hits in one go: one dot product validates (and normalises) the query, each sealed
        segment's tier answers local rows and their ids (``Segment.nearest``), the numba
        kernel scans the mutable rows, one merge, hits built without per-field setattrs.
        None when anything is unusual (a query that needs converting or fails a check, a k
        out of range, a damaged or multi-tenant collection, a point replaced while it ran):
        ``search``'s general path then answers, and raises exactly what it raises."""
        if type(k) is not int or not 0 < k <= self._limits.max_k or self._multi:
            return None
        if not plain_vector(vector, self.config.dim):
            return None
        cosine = self.config.metric == "cosine"
        norm2, query = unit_query(cast(np.ndarray, vector), cosine)  # the general path's query, in one call
        if not norm2 <= SAFE_NORM2 or (cosine and norm2 == 0):  # NaN, inf, too long, no direction
            return None  # refused by the general path
        self._check_answer(1, k, None, with_payload, False)
        knobs = self._knobs(params or DEFAULT_PARAMS)
        snap = self._published  # without the lock: a writer holding it does not hold us up
        if snap is None:  # closed or damaged
            return None
        segments, start, live, replaced = snap.segments, snap.start, snap.live, snap.replaced
        matrix, codes, thresholds = snap.matrix, snap.codes, snap.thresholds
        n = live.size
        self._last_read = time.monotonic()  # searches are being served (see optimizer/build.py)
        kernel = self._metric
        # per sealed segment: kernel scores, local rows and point ids of its top-k
        found = nearest_all(segments, query, k, knobs)
        if n and live.any():  # the mutable rows: their ids are read below, for the hits kept only
            t_scores, t_rows, t_counts = tail_topk(matrix, codes, thresholds, live, query, min(k, n), kernel)
            tail = (t_scores[0, : t_counts[0]], t_rows[0, : t_counts[0]] + start)
        elif len(found) == 1:  # the common case: one sealed segment and nothing else
            only = found[0]
            hits = self._plain_hits(
                finish_scores(only[0], kernel).tolist(), only[2], segments, start, only[1], with_payload, raw
            )
            return hits if self._replaced == replaced and len(hits) == len(only[2]) else None
        elif not found:
            return []
        else:
            tail = None
        # one stable sort of the lists side by side (the mutable rows last), as merge_topk does
        joined = np.concatenate([f[0] for f in found] + ([tail[0]] if tail is not None else []))
        order = np.argsort(-joined, kind="stable")[:k]
        picks = order.tolist()
        sealed_ids = [pid for f in found for pid in f[2]]
        sealed = len(sealed_ids)
        rows = np.concatenate(
            [seg.rows[f[1]] for seg, f in zip(segments, found, strict=True)]
            + ([tail[1]] if tail is not None else [])
        )[order]
        ids: list[PointId | None]
        if max(picks, default=-1) >= sealed:  # hits among the mutable rows: their ids from RocksDB
            keys = iter(
                self._store.id_keys_of([r for r, i in zip(rows.tolist(), picks, strict=True) if i >= sealed])
            )
            ids = [sealed_ids[i] if i < sealed else _id_or_none(next(keys)) for i in picks]
        else:
            ids = [sealed_ids[i] for i in picks]
        hits = self._plain_hits(
            finish_scores(joined[order], kernel).tolist(), ids, segments, start, rows, with_payload, raw, True
        )
        # a point moved, or a hit's row dropped by a delete in flight: the general path reads again
        return hits if self._replaced == replaced and len(hits) == len(picks) else None

    def _plain_hits(
        self,
        scores: list[float],
        ids: Sequence[PointId | None],
        segments: Sequence[Segment],
        start: int,
        rows: np.ndarray,
        with_payload: bool,
        raw: list[bytes] | None,
        merged: bool = False,
    ) -> list[Hit]:
        """Hits of a plain search over ``segments`` and the mutable rows from ``start``;
        ``rows``: global rows when ``merged``, else local rows of the one segment. ``raw``:
        receives the stored payload JSON of each hit kept, whose payload is left None."""
        hits: list[Hit] = []
        add = hits.append
        if not with_payload:
            for pid, score in zip(ids, scores, strict=True):
                if pid is not None:  # None: deleted while we read
                    hit = _new(Hit)  # make_hit, inline: a call per hit is a tenth of the hit
                    fields = hit.__dict__
                    fields["id"], fields["score"], fields["payload"], fields["vector"] = (
                        pid,
                        score,
                        None,
                        None,
                    )
                    add(hit)
            return hits
        if merged:
            blobs = self._payloads(segments, start, rows)
        elif segments[0].payload_column is not None:
            blobs = segments[0].payloads_local(rows)
        else:  # a segment written before payload columns
            blobs = self._store.payloads_of(segments[0].rows[rows].tolist())
        if raw is not None:
            for pid, score, blob in zip(ids, scores, blobs, strict=True):
                if pid is not None and blob is not None:
                    add(make_hit(pid, score))
                    raw.append(blob)
            return hits
        loads = orjson.loads
        for pid, score, blob in zip(ids, scores, blobs, strict=True):
            if pid is not None and blob is not None:
                hit = _new(Hit)  # make_hit, inline (as above)
                fields = hit.__dict__
                fields["id"], fields["score"], fields["payload"], fields["vector"] = (
                    pid,
                    score,
                    loads(blob),
                    None,
                )
                add(hit)
        return hits

    def _payloads(self, segments: Sequence[Segment], start: int, rows: np.ndarray) -> list[bytes | None]:
        """Stored payload JSON of result ``rows`` (global; None: deleted): a sealed row's from
        its segment's payload column (one slice), the mutable segment's and those of segments
        written before payload columns from RocksDB, in one multi-get."""
        if rows.size == 0:
            return []
        if len(segments) == 1 and segments[0].payload_column is not None and rows.max() < start:
            only = segments[0]  # the common case: one sealed segment
            return only.payloads_local(np.searchsorted(only.rows, rows))
        out: list[bytes | None] = [None] * rows.size
        rest = rows >= start
        sealed = np.flatnonzero(~rest)
        if sealed.size:
            los = np.array([s.lo for s in segments])
            which = np.searchsorted(los, rows[sealed], side="right") - 1
            for w in np.unique(which).tolist():
                pick = sealed[which == w]
                segment = segments[w]
                if segment.payload_column is None:
                    rest[pick] = True
                    continue
                found = segment.payloads_local(np.searchsorted(segment.rows, rows[pick]))
                for pos, blob in zip(pick.tolist(), found, strict=True):
                    out[pos] = blob
        if rest.any():
            at = np.flatnonzero(rest)
            for pos, blob in zip(at.tolist(), self._store.payloads_of(rows[at].tolist()), strict=True):
                out[pos] = blob
        return out

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

    def _k_within(self, k: int, code: int | None) -> int:
        """``k`` bounded by the points there are (of tenant ``code``), at least 1: an estimate
        for sizing an answer (read without the lock; searches bound k by their snapshot)."""
        live = self._live_count() if code is None else self._tenant_live.get(code, 0)
        return max(1, min(k, live))

    def _check_answer(
        self,
        queries: int,
        k: int,
        code: int | None,
        with_payload: bool,
        with_vector: bool,
        paging: str | None = None,
    ) -> None:
        """ResourceExhausted, before any work, when ``queries`` lists of ``k`` results (at
        most the points there are, of tenant ``code``) would outgrow one message
        (bounds.check_answer_size)."""
        payload = self._payload_size.mean(self._store, self._next_row) if with_payload else 0.0
        if bounds.answer_fits(queries * k, self.config.dim, with_vector, payload, with_payload, self._limits):
            return  # fits even with k hits per query: no need to count the points there are
        hits = queries * self._k_within(k, code)
        bounds.check_answer_size(
            hits,
            self.config.dim,
            with_vector,
            payload,
            with_payload,
            self._limits,
            *([paging] if paging else []),
        )

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
                "a large mutable segment is scanned by its binary codes, candidates reranked exactly"
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
