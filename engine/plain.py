"""The plain search path: a search without filter, tenant, text, explain or vectors, from the
published snapshot to its hits in one go (``PlainSearch._plain``), and the answer-size check every
read makes before it works (``_check_answer``). engine/reads.py's ``Reads`` builds on it and falls
back to its general path whenever the plain one answers None."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import numpy as np
import orjson

from lamina.index.kernels import finish_scores, unit_query
from lamina.storage.keys import id_from_key
from lamina.types import Hit, PointId, SearchParams, make_hit
from lamina.validation import SAFE_NORM2, plain_vector

from . import bounds
from .planner import DEFAULT_PARAMS
from .segments import Segment, nearest_all
from .tenancy import TenantSearch
from .topk import tail_topk

#: a collection is ``quick`` while its mutable segment (scanned by every search) holds at most
#: this many rows: a live collection's tail (up to ``seal_rows``, 20,000 by default, and the
#: writes that land while it is sealed); 40,000 x 384 rows by their codes and a rerank take
#: ~0.2 ms a query (engine/state.py ``coded_tail_rows``)
QUICK_MUTABLE_ROWS = 40_000
_new = object.__new__


def _id_or_none(key: bytes | None) -> PointId | None:
    return id_from_key(key) if key is not None else None


class PlainSearch(TenantSearch):
    """The plain search path and the answer-size check of a collection's reads."""

    def quick(self) -> bool:
        """Whether an unfiltered search is an index walk and little more (CollectionProtocol):
        no tenants, every sealed segment indexed, a small mutable segment, nothing damaged."""
        return (
            not self._multi
            and not self._damaged
            and self._next_row - self._mut_start <= QUICK_MUTABLE_ROWS
            and all(s.tier.kind != "exact" for s in self._segments)
        )

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
