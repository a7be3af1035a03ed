"""What a query may return, per segment: filters compiled against the collection's
schema, allow masks of each sealed segment and of the mutable segment (payload indexes
decide most rows, stored payloads the rest), narrowed to a tenant, and the search knobs
(ef, oversample) each segment's planner (``Segment.search_filtered``) is given."""

from __future__ import annotations

from typing import Any

import numpy as np

from lamina.index.tiers import Knobs
from lamina.types import SearchParams

from .filters import CompiledFilter, compile_filter, evaluate
from .segments import Segment
from .state import CollectionState, ReadSnapshot

DEFAULT_PARAMS = SearchParams()


class Planner(CollectionState):
    """Filter masks and search knobs of a collection."""

    def _compile(self, flt: Any) -> CompiledFilter | None:
        schema = self.config.payload_index  # a collection with a declared schema rejects unknown fields
        known = frozenset(self._fields) if schema else None
        return compile_filter(flt, self._limits.max_filter_depth, schema, known)

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

    def _filter_masks(self, compiled: CompiledFilter, snap: ReadSnapshot) -> list[np.ndarray]:
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
        self, compiled: CompiledFilter | None, snap: ReadSnapshot, code: int | None
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

    def _match_rows(
        self, compiled: CompiledFilter | None, snap: ReadSnapshot, code: int | None = None
    ) -> list[int]:
        """Live rows matching a filter (and of tenant ``code``), ascending."""
        masks = self._masks(compiled, snap, code)
        assert masks is not None
        parts = [seg.rows[m] for seg, m in zip(snap.segments, masks, strict=False)]
        parts.append(np.flatnonzero(masks[-1]) + snap.start)
        return [int(r) for r in np.concatenate(parts)]
