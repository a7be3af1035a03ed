"""Sealing: the first rows of the mutable segment (``seal_rows``, more when the optimizer
is behind and the last segment can take them) become a sealed segment, or grow the last
HNSW segment when they are enough to (see build.py), committed to the manifest, and
leave the heap."""

from __future__ import annotations

import logging

import numpy as np
import orjson

from lamina.storage.keys import row_key
from lamina.storage.rocks import MUTABLE_START, SEGMENTS

from ..payload import FieldIndex, take
from ..segments import discard_unless_committed
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
        kept: list[tuple[int, bytes]] = []
        last = self._segments[-1] if self._segments else None
        base = last if last is not None and self._growable(last) and self._joins(last, local.size) else None
        log.info(
            "sealing %d rows of %r%s", take_rows, self.name, f" into segment {base.name}" if base else ""
        )
        self._lock.release()
        try:
            if local.size:
                rows = local + start
                vectors = matrix[local]
                scales, kept = self._restoring(rows, vectors)
                payload = {name: take(kind, pidx.get(name, []), rows) for name, kind in schema.items()}
                if base is None:
                    segment = self._build(rows, vectors, payload, scales)
                else:
                    at = np.arange(base.size, base.size + rows.size)
                    payload = {  # a field the segment lacks is built over the grown one later
                        name: FieldIndex.merge([base.payload[name], index], [np.arange(base.size), at])
                        for name, index in payload.items()
                        if name in base.payload
                    }
                    segment = self._grow(base, rows, vectors, payload, scales)
            with self._lock:  # the rows written so far never change: copied without the lock
                copied = self._next_row - start - take_rows
                source = self._matrix
            rest_matrix = np.zeros((max(MIN_CAPACITY, int(copied * GROW)), self.config.dim), np.float32)
            rest_matrix[:copied] = source[take_rows : take_rows + copied]
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        before = self._segments[:-1] if segment is not None and base is not None else self._segments
        names = [s.name for s in before] + ([segment.name] if segment is not None else [])
        died = local[~self._live[local]] + start  # deleted while the segment was built
        gone = set(died.tolist())
        with self._sealing, discard_unless_committed(segment):
            # the segment's file (durable now) becomes the one copy of the sealed rows'
            # vectors in the batch that names it: a crash leaves both or the old state
            self._store.put_meta(
                {SEGMENTS: orjson.dumps(names), MUTABLE_START: row_key(start + take_rows)},
                add_dead=[int(r) for r in died] if segment is not None else [],
                sealed=(start, start + take_rows),
                kept=[(row, vec) for row, vec in kept if row not in gone],
            )
            if segment is not None:
                segment.kill(died)
                if base is not None:
                    segment.kill(base.rows[~base.live])  # deleted from the base while it grew
                self._segments = [*before, segment]
        self._dropped_vectors.append((start, start + take_rows))
        if segment is not None and base is not None:
            self._drop_stale_indexes(segment)
            self._discard(base.folder)
        rest = self._next_row - start - take_rows
        if rest > rest_matrix.shape[0]:  # the tail outgrew the copy meanwhile
            grown = np.zeros((int(rest * GROW), self.config.dim), np.float32)
            grown[:copied] = rest_matrix[:copied]
            rest_matrix = grown
        rest_matrix[copied:rest] = self._matrix[take_rows + copied : take_rows + rest]  # written meanwhile
        matrix, live, tcodes, codes = self._matrix, self._live, self._tcodes, self._codes
        self._empty_mutable(rest_matrix.shape[0])
        self._matrix = rest_matrix
        self._live[:rest] = live[take_rows : take_rows + rest]
        self._tcodes[:rest] = tcodes[take_rows : take_rows + rest]
        self._codes[:rest] = codes[take_rows : take_rows + rest]
        self._mut_start = start + take_rows
        self._mut_pidx.forget_below(start + take_rows)
        log.info(
            "sealed %d rows of %r into segment %s", take_rows, self.name, segment.name if segment else "-"
        )
        return True
