"""Compaction and merging: a segment with many dead rows is rewritten without them
(vacuum), neighbours that fit in one segment together are merged; payload indexes are
carried over by renumbering."""

from __future__ import annotations

import logging
import shutil
from itertools import pairwise

import numpy as np
import orjson

from lamina.storage.rocks import SEGMENTS

from ..payload import FieldIndex
from .build import SegmentBuilder

log = logging.getLogger("lamina.engine")

#: a segment with more than this fraction of dead rows is rewritten without them
COMPACT_DEAD_FRACTION = 0.2


class Compaction(SegmentBuilder):
    """The compaction / merge job."""

    def _rewrite_step(self) -> bool:
        """Pick segments to rewrite (caller holds the lock): one with many dead rows, or
        two neighbours that fit in one segment together, with as many following neighbours
        as still fit. Returns whether it did one."""
        segments, size = self._segments, self.config.segment_rows
        first = next(
            (
                i
                for i, seg in enumerate(segments)
                if seg.dead > COMPACT_DEAD_FRACTION * seg.size or seg.live_count == 0
            ),
            None,
        )
        if first is None:
            first = next(
                (i for i, (a, b) in enumerate(pairwise(segments)) if a.live_count + b.live_count <= size),
                None,
            )
        if first is None:
            return False
        group = [segments[first]]
        live_rows = group[0].live_count
        for seg in segments[first + 1 :]:  # take in the neighbours whose live rows still fit
            if live_rows + seg.live_count > size:
                break
            group.append(seg)
            live_rows += seg.live_count
        lives = [seg.live.copy() for seg in group]
        schema = dict(self.config.payload_index)
        log.info("compacting %d segment(s) of %r", len(group), self.name)
        self._lock.release()
        try:
            rows = np.concatenate([seg.rows[lv] for seg, lv in zip(group, lives, strict=True)])
            segment = None
            if rows.size:
                vectors = np.concatenate([seg.vectors[lv] for seg, lv in zip(group, lives, strict=True)])
                maps, offset = [], 0
                for seg, lv in zip(group, lives, strict=True):
                    mapping = np.full(seg.size, -1, dtype=np.int64)
                    mapping[lv] = np.arange(offset, offset + int(lv.sum()))
                    offset += int(lv.sum())
                    maps.append(mapping)
                payload = {  # carried over by renumbering; a field some segment lacks is built later
                    name: FieldIndex.merge([seg.payload[name] for seg in group], maps)
                    for name in schema
                    if all(name in seg.payload for seg in group)
                }
                segment = self._build(rows, vectors, payload)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        at = self._segments.index(group[0])
        replaced = self._segments[:at] + ([segment] if segment else []) + self._segments[at + len(group) :]
        gone = np.concatenate([seg.rows[~lv] for seg, lv in zip(group, lives, strict=True)])
        self._store.put_meta({SEGMENTS: orjson.dumps([s.name for s in replaced])}, [int(r) for r in gone])
        if segment is not None:
            for seg, lv in zip(group, lives, strict=True):
                segment.kill(seg.rows[lv & ~seg.live])  # deleted while it was rebuilt
        self._segments = replaced
        for seg in group:
            shutil.rmtree(seg.folder, ignore_errors=True)
        log.info(
            "rewrote %d segment(s) of %r into %s", len(group), self.name, segment.name if segment else "-"
        )
        return True
