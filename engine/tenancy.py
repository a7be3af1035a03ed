"""Searches among one tenant's points: the tenant's HNSW partitions (main and delta
graph, built by engine/optimizer/tenant_graphs.py) answer for its sealed rows below
their bound, with widening under a filter; its other rows are scored exactly."""

from __future__ import annotations

import math

import numpy as np

from lamina.errors import InvalidArgument
from lamina.index.tiers import Knobs, TopK
from lamina.types import FloatMatrix, SearchParams, SegmentPlan, TenantInfo

from .planner import DEFAULT_PARAMS, Planner
from .segment_search import GRAPH_STEP_COST, WIDEN, take_first
from .segments import Segment
from .state import ReadSnapshot
from .tenants import Partition
from .topk import merge_topk, mutable_topk


class TenantSearch(Planner):
    """The tenant side of the read path."""

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

    def _tenant_rows(
        self,
        prepared: FloatMatrix,
        k: int,
        snap: ReadSnapshot,
        code: int,
        masks: list[np.ndarray] | None,
        params: SearchParams | None,
        explain: list[SegmentPlan] | None,
    ) -> TopK:
        """Top-k (kernel scores, global rows, counts) among the live rows of tenant
        ``code`` (and ``masks``, a filter narrowed to it): its partition answers for the
        sealed rows below the partition's bound, its other rows are scored exactly."""
        params = params or DEFAULT_PARAMS
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
            parts.append(mutable_topk(prepared, k, snap, mask, self._metric))
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
        # named by its role, not by the tenant's code (which tells the order tenants were created in)
        name = "tenant-partition-delta" if part.lo else "tenant-partition-main"

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
