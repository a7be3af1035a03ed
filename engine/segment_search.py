"""Searches of one sealed segment by global rows (``SegmentSearch``, a base of
engine/segments.py ``Segment``): the plain top-k, filtered searches planned by how many rows
match (scored exactly, the tier with an allow-list, or the index asked for more candidates and
filtered, widening until k match), and a tenant's rows read with ``pread`` and scored exactly.
The plain search path's per-segment step is ``Segment.nearest``."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from itertools import pairwise
from pathlib import Path
from typing import ParamSpec, TypeVar, cast

import numpy as np

from lamina.errors import DataLoss
from lamina.index.flat import exact_topk
from lamina.index.kernels import rerank
from lamina.index.tiers import HnswTier, Knobs, Tier, TopK
from lamina.storage import faults
from lamina.types import FloatMatrix, SegmentPlan

#: a graph step (one candidate of an HNSW walk) costs about this many exact row scores
#: (measured on kernel-docs: ef=64 walk ≈ 125 µs, exact score of a gathered row ≈ 0.2 µs at 384-d)
GRAPH_STEP_COST = 10.0
#: how many times more candidates than k / selectivity a widened walk asks for
WIDEN = 1.5
#: filter results a segment keeps (each a bool per row)
MATCH_CACHE = 32
#: gather() reads at most this many runs of consecutive rows with pread, else the map
MAX_READ_RUNS = 64

log = logging.getLogger("lamina.engine")
P = ParamSpec("P")
R = TypeVar("R")


def reads_disk(method: Callable[P, R]) -> Callable[P, R]:
    """A segment method that reads its files: an I/O error becomes DataLoss naming the segment."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        segment = cast(SegmentSearch, args[0])
        try:
            faults.check_read(segment._mapped)
            return method(*args, **kwargs)
        except OSError as exc:
            log.error(
                "I/O error reading segment %s (%s): %s. Searches that read it fail with DATA_LOSS; the "
                "disk is failing: move the data directory to a healthy disk and run `lamina check --deep`",
                segment.name,
                segment.folder,
                exc,
            )
            raise DataLoss(
                f"segment {segment.name} could not be read ({exc.strerror or exc}): the disk under "
                f"{segment.folder} is failing; the server log says how to recover"
            ) from exc

    return wrapper


def _empty(nq: int) -> TopK:
    return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), np.zeros(nq, np.int64)


class SegmentSearch:
    """A sealed segment's searches by global rows: plain (``search``), filtered and planned
    by selectivity (``search_filtered``), and a tenant's rows read and scored exactly
    (``tenant_exact``); ``Segment`` (engine/segments.py) holds the state they read."""

    folder: Path
    name: str
    rows: np.ndarray
    vectors: FloatMatrix
    tier: Tier
    live: np.ndarray
    dead: int
    _mapped: Path
    _fd: int
    _matches: OrderedDict[Hashable, np.ndarray]
    _cache_lock: threading.Lock
    _tenant_order: np.ndarray
    _tenant_sorted: np.ndarray
    _tenant_span: dict[int, tuple[int, int]]

    def tenant_local(self, code: int) -> np.ndarray:
        """Local positions (ascending, dead or alive) of the rows of tenant ``code``."""
        lo, hi = self._tenant_span.get(code, (0, 0))
        return self._tenant_order[lo:hi]

    def tenant_codes_live(self) -> np.ndarray:
        """The tenant code of every live row (in tenant order)."""
        return self._tenant_sorted[self.live[self._tenant_order]]

    @reads_disk
    def gather(self, local: np.ndarray) -> FloatMatrix:
        """The vectors of ascending ``local`` rows, read with ``pread`` one run of
        consecutive rows at a time: a tenant's rows are few runs (writes come in
        batches), and reading them leaves no pages mapped in the process, so that serving
        thousands of small tenants exactly does not grow its resident memory the way
        touching the memory map would. Many short runs are read through the map instead."""
        dim = self.vectors.shape[1]
        if local.size == 0:
            return np.zeros((0, dim), np.float32)
        breaks = np.flatnonzero(np.diff(local) != 1) + 1
        if breaks.size >= MAX_READ_RUNS or self._fd < 0:
            return np.ascontiguousarray(self.vectors[local])
        out = np.empty((local.size, dim), np.float32)
        row_bytes = 4 * dim
        for a, b in pairwise([0, *breaks.tolist(), local.size]):
            want = (b - a) * row_bytes
            got = os.preadv(self._fd, [out[a:b].data.cast("B")], int(local[a]) * row_bytes)
            if got != want:
                raise OSError(f"short read of {self.folder / 'vectors.f32'}: {got} of {want} bytes")
        return out

    def tenant_exact(
        self, queries: FloatMatrix, k: int, local: np.ndarray, allow: np.ndarray, metric: int
    ) -> TopK:
        """Exact top-k (global rows) among the ascending ``local`` rows that ``allow``
        passes, over vectors read by ``gather``."""
        local = local[allow[local]]
        if local.size == 0:
            return _empty(queries.shape[0])
        scores, pos, counts = exact_topk(
            self.gather(local), np.ones(local.size, np.bool_), queries, k, metric
        )
        rows = self.rows[local].take(pos, mode="clip")
        return scores, np.where(pos >= 0, rows, -1), counts

    @property
    def lo(self) -> int:
        return int(self.rows[0])

    @property
    def hi(self) -> int:
        return int(self.rows[-1]) + 1

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def live_count(self) -> int:
        return self.size - self.dead

    @reads_disk
    def search(self, queries: FloatMatrix, k: int, knobs: Knobs, exact: bool, metric: int) -> TopK:
        """Top-k with global row numbers (-1 padded), best first per query."""
        k = min(k, self.size)
        if exact:
            scores, local, counts = exact_topk(self.vectors, self.live, queries, k, metric)
        else:
            scores, local, counts = self.tier.search(self.vectors, self.live, queries, k, knobs)
        return self._global((scores, local, counts))

    def matching(self, key: Hashable) -> np.ndarray | None:
        """Rows (dead or alive) matching the filter with canonical ``key``, as a mask, if a
        small LRU cache holds it (a sealed segment's payloads never change, so a repeated
        filter costs one AND with the live mask); None otherwise (``remember`` it then)."""
        cache = self._matches
        with self._cache_lock:
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
            return found

    def remember(self, key: Hashable, found: np.ndarray) -> np.ndarray:
        """Cache the mask of rows matching the filter with canonical ``key``; returns it."""
        with self._cache_lock:
            self._matches[key] = found
            while len(self._matches) > MATCH_CACHE:
                self._matches.popitem(last=False)
        return found

    @reads_disk
    def search_filtered(
        self, queries: FloatMatrix, k: int, knobs: Knobs, allow: np.ndarray, plan: str, metric: int
    ) -> tuple[TopK, SegmentPlan]:
        """Top-k among the rows in ``allow`` (live rows matching the filter), planned by
        how many match: a few are scored exactly (gather + rerank); many go through the
        tier, which either takes the bitmap as an allow-list (exact and binary scans) or
        is asked for k / selectivity candidates and filtered, widening until k match."""
        nq = queries.shape[0]
        matches = int(np.count_nonzero(allow))
        k = min(k, matches)
        if matches == 0:
            return _empty(nq), self._plan(0, "skip", "no live row matches the filter")
        if matches == self.live_count and plan == "auto":
            return self.search(queries, k, knobs, False, metric), self._plan(
                matches, f"{self.tier.kind}", "every live row matches: the plain index search"
            )
        selectivity = matches / max(1, self.live_count)
        # exact and binary scans take the bitmap as an allow-list; graphs and PQ need widening
        scan = self.tier.kind in ("exact", "binary") and getattr(self.tier, "graph", None) is None
        wanted = max(0 if scan else knobs.ef, math.ceil(WIDEN * k * knobs.oversample / selectivity))
        walk_cost = 0.03 * self.size + k * knobs.oversample if scan else GRAPH_STEP_COST * wanted
        if plan == "exact" or (plan == "auto" and matches <= walk_cost):
            why = (
                "forced"
                if plan == "exact"
                else f"{matches} matching rows cost less than the index (≈{walk_cost:.0f})"
            )
            return self._exact(queries, k, allow, metric), self._plan(matches, "exact", why)
        if scan:
            found = self.tier.search(self.vectors, allow, queries, k, knobs)
            how = "full scan" if self.tier.kind == "exact" else "binary scan + rerank"
            return self._global(found), self._plan(
                matches, f"{self.tier.kind}+allow-list", f"{how} skipping rows outside the filter"
            )
        if plan == "allow_list" and isinstance(self.tier, HnswTier):
            return self._global(self.tier.search_allowed(self.vectors, allow, queries, k, knobs)), self._plan(
                matches, "hnsw+allow-list", "forced: the graph walk asks the filter for every node"
            )
        if plan == "post_filter":
            n = max(k, knobs.ef) if self.tier.kind == "hnsw" else knobs.candidates(k, self.size)
            found = self._filter_top(
                self.tier.search(self.vectors, self.live, queries, min(n, self.size), knobs), allow, k
            )
            return self._global(found), self._plan(
                matches, f"{self.tier.kind}+post-filter", f"forced: {n} candidates, then the filter"
            )
        return self._widened(queries, k, knobs, allow, matches, selectivity, metric)

    def _plan(self, matches: int, method: str, reason: str) -> SegmentPlan:
        return SegmentPlan(self.name, self.live_count, matches, method, reason)

    def _global(self, found: TopK) -> TopK:
        scores, local, counts = found
        rows = self.rows.take(local, mode="clip")
        unused = local < 0
        if unused.any():
            rows[unused] = -1
        return scores, rows, counts

    def _exact(self, queries: FloatMatrix, k: int, allow: np.ndarray, metric: int) -> TopK:
        local = np.flatnonzero(allow)
        candidates = np.ascontiguousarray(np.broadcast_to(local, (queries.shape[0], local.size)))
        return self._global(rerank(self.vectors, candidates, allow, queries, k, metric))

    def _widened(
        self,
        queries: FloatMatrix,
        k: int,
        knobs: Knobs,
        allow: np.ndarray,
        matches: int,
        selectivity: float,
        metric: int,
    ) -> tuple[TopK, SegmentPlan]:
        n = math.ceil(WIDEN * k / selectivity)
        rounds = 0
        while True:
            rounds += 1
            n = min(n, self.live_count)
            if self.tier.kind == "hnsw":
                wide = Knobs(ef=max(knobs.ef, n), oversample=knobs.oversample)
                found = self.tier.search(self.vectors, self.live, queries, n, wide)
            else:  # quantized graph or PQ: more candidates into the rerank, which applies the filter
                wide = Knobs(ef=knobs.ef, oversample=knobs.oversample / selectivity * WIDEN ** (rounds - 1))
                found = self.tier.search(self.vectors, allow, queries, k, wide)
            found = self._filter_top(found, allow, k)
            if found[2].min() >= k:
                return self._global(found), self._plan(
                    matches,
                    f"{self.tier.kind}+widened",
                    f"selectivity {selectivity:.3f}: asked the index for {n} candidates"
                    + (f" after {rounds - 1} widening(s)" if rounds > 1 else ""),
                )
            if n >= self.live_count or rounds >= 3:
                return self._exact(queries, k, allow, metric), self._plan(
                    matches, "exact", f"the index returned fewer than {k} matches after {rounds} tries"
                )
            n *= 4

    @staticmethod
    def _filter_top(found: TopK, allow: np.ndarray, k: int) -> TopK:
        """Keep the first k hits of each query whose rows are in ``allow``."""
        local = found[1]
        return take_first(found, (local >= 0) & allow[np.maximum(local, 0)], k)


def take_first(found: TopK, keep: np.ndarray, k: int) -> TopK:
    """The first k hits of each query among those ``keep`` (same shape as the hits) passes."""
    scores, rows, counts = found
    nq = scores.shape[0]
    keep = keep & (np.arange(rows.shape[1])[None, :] < counts[:, None])
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_r = np.full((nq, k), -1, np.int64)
    out_c = np.zeros(nq, np.int64)
    for q in range(nq):
        pick = np.flatnonzero(keep[q])[:k]
        out_s[q, : pick.size] = scores[q, pick]
        out_r[q, : pick.size] = rows[q, pick]
        out_c[q] = pick.size
    return out_s, out_r, out_c
