"""Tenant promotion: HNSW partitions (a main and a delta graph) for tenants with many
points, extended as their rows are sealed, merged, and dropped when a tenant shrinks."""

from __future__ import annotations

import logging
import time

import numpy as np

from lamina.cores import niced

from ..state import CollectionState
from ..tenants import DELTA_SHARE, MERGE_SHARE, Partition
from .build import build_threads

log = logging.getLogger("lamina.engine")


class TenantGraphs(CollectionState):
    """The tenant-graph job."""

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
            part = niced(  # the build yields the CPU to searches and writes (lamina/cores.py)
                self._nice,
                lambda: Partition.build(
                    code, lo, bound, rows[order], vectors[order], self.config, self._metric, build_threads()
                ),
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
