"""Sealing: the first ``segment_rows`` rows of the mutable segment become a sealed
segment, committed to the manifest, and leave the heap."""

from __future__ import annotations

import logging

import numpy as np
import orjson

from lamina.storage.keys import row_key
from lamina.storage.rocks import MUTABLE_START, SEGMENTS

from ..payload import take
from ..state import GROW, MIN_CAPACITY
from .build import SegmentBuilder

log = logging.getLogger("lamina.engine")


class Seal(SegmentBuilder):
    """The seal job."""

    def _seal_step(self, take_rows: int) -> bool:
        """Seal the mutable segment's first ``take_rows`` rows (caller holds the lock; the
        build runs without it). Rows deleted while it was built are killed in the new
        segment and recorded as dead. Returns False when the collection closed meanwhile."""
        matrix, live = self._matrix, self._live[:take_rows].copy()
        start = self._mut_start
        schema = dict(self.config.payload_index)
        pidx = self._mut_pidx.snapshot()
        local = np.flatnonzero(live)
        segment = None
        log.info("sealing %d rows of %r", take_rows, self.name)
        self._lock.release()
        try:
            if local.size:
                rows = local + start
                payload = {name: take(kind, pidx.get(name, []), rows) for name, kind in schema.items()}
                segment = self._build(rows, matrix[local], payload)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        names = [s.name for s in self._segments] + ([segment.name] if segment is not None else [])
        died = local[~self._live[local]] + start  # deleted while the segment was built
        self._store.put_meta(
            {SEGMENTS: orjson.dumps(names), MUTABLE_START: row_key(start + take_rows)},
            add_dead=[int(r) for r in died] if segment is not None else [],
        )
        if segment is not None:
            segment.kill(died)
            self._segments.append(segment)
        rest = self._next_row - start - take_rows
        capacity = max(MIN_CAPACITY, int(rest * GROW))
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
