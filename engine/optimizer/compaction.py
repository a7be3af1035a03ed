"""Compaction and merging: a segment with many dead rows is rewritten without them
(vacuum); sealed segments merge like the levels of an LSM tree (see build.py): the rows
after a segment join it once they are ``MERGE_FRACTION`` of its live rows and fit in
``max_segment_rows``. An HNSW segment grows by inserting them into its graph; other
tiers are rebuilt over the group. Payload indexes are carried over by renumbering."""

from __future__ import annotations

import logging

import numpy as np
import orjson

from lamina.storage.rocks import SEGMENTS

from ..payload import FieldIndex
from ..segments import Segment, discard_unless_committed
from .build import SegmentBuilder

log = logging.getLogger("lamina.engine")

#: a segment with more than this fraction of dead rows is rewritten without them
COMPACT_DEAD_FRACTION = 0.2


class Compaction(SegmentBuilder):
    """The compaction / merge job."""

    def _rewrite_step(self) -> bool:
        """Pick segments to rewrite (caller holds the lock): one with many dead rows, or a
        segment and the neighbours after it that are enough to join it (see the module's
        doc). Returns whether it did one."""
        segments = self._segments
        vacuum = next(
            (seg for seg in segments if seg.dead > COMPACT_DEAD_FRACTION * seg.size or seg.live_count == 0),
            None,
        )
        if vacuum is not None:
            return self._rebuild([vacuum])
        for at, seg in enumerate(segments[:-1]):
            group, rows = [seg], 0
            limit = self.config.max_segment_rows - (seg.size if self._growable(seg) else seg.live_count)
            for after in segments[at + 1 :]:  # the neighbours whose live rows still fit
                if rows + after.live_count > limit:
                    break
                group.append(after)
                rows += after.live_count
            if len(group) > 1 and self._joins(seg, rows):
                return self._grow_step(seg, group[1:]) if self._growable(seg) else self._rebuild(group)
        return False

    def _rebuild(self, group: list[Segment]) -> bool:
        """Rewrite neighbouring segments into one new segment of their live rows (caller
        holds the lock; the build runs without it)."""
        lives = [seg.live.copy() for seg in group]
        schema = dict(self.config.payload_index)
        log.info("compacting %d segment(s) of %r", len(group), self.name)
        self._lock.release()
        try:
            rows = np.concatenate([seg.rows[lv] for seg, lv in zip(group, lives, strict=True)])
            segment = None
            if rows.size:
                vectors = np.concatenate([seg.vectors[lv] for seg, lv in zip(group, lives, strict=True)])
                scales = _scales(group, lives)
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
                segment = self._build(rows, vectors, payload, scales)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        at = self._segments.index(group[0])
        replaced = self._segments[:at] + ([segment] if segment else []) + self._segments[at + len(group) :]
        gone = np.concatenate([seg.rows[~lv] for seg, lv in zip(group, lives, strict=True)])
        with discard_unless_committed(segment):
            self._store.put_meta({SEGMENTS: orjson.dumps([s.name for s in replaced])}, [int(r) for r in gone])
        if segment is not None:
            for seg, lv in zip(group, lives, strict=True):
                segment.kill(seg.rows[lv & ~seg.live])  # deleted while it was rebuilt
        self._segments = replaced
        for seg in group:
            self._discard(seg.folder)
        log.info(
            "rewrote %d segment(s) of %r into %s", len(group), self.name, segment.name if segment else "-"
        )
        return True

    def _grow_step(self, base: Segment, group: list[Segment]) -> bool:
        """Grow HNSW segment ``base`` by the live rows of the segments after it (caller
        holds the lock; the build runs without it). Rows deleted meanwhile are killed in the
        grown segment; the old segments stay in force until the manifest names the new one."""
        lives = [seg.live.copy() for seg in group]
        schema = dict(self.config.payload_index)
        log.info("merging %d segment(s) of %r into segment %s", len(group), self.name, base.name)
        self._lock.release()
        try:
            rows = np.concatenate([seg.rows[lv] for seg, lv in zip(group, lives, strict=True)])
            vectors = np.concatenate([seg.vectors[lv] for seg, lv in zip(group, lives, strict=True)])
            scales = _scales(group, lives)
            maps, offset = [np.arange(base.size)], base.size
            for seg, lv in zip(group, lives, strict=True):
                mapping = np.full(seg.size, -1, dtype=np.int64)
                mapping[lv] = np.arange(offset, offset + int(lv.sum()))
                offset += int(lv.sum())
                maps.append(mapping)
            parts = [base, *group]
            payload = {  # carried over by renumbering; a field some segment lacks is built later
                name: FieldIndex.merge([seg.payload[name] for seg in parts], maps)
                for name in schema
                if all(name in seg.payload for seg in parts)
            }
            segment = self._grow(base, rows, vectors, payload, scales)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        at = self._segments.index(base)
        replaced = [*self._segments[:at], segment, *self._segments[at + 1 + len(group) :]]
        gone = np.concatenate([seg.rows[~lv] for seg, lv in zip(group, lives, strict=True)])
        with discard_unless_committed(segment):
            self._store.put_meta({SEGMENTS: orjson.dumps([s.name for s in replaced])}, [int(r) for r in gone])
        segment.kill(base.rows[~base.live])  # deleted while it grew
        for seg, lv in zip(group, lives, strict=True):
            segment.kill(seg.rows[lv & ~seg.live])
        self._drop_stale_indexes(segment)
        self._segments = replaced
        for seg in parts:
            self._discard(seg.folder)
        log.info(
            "merged %d segment(s) of %r into %s (%d rows)", len(group), self.name, segment.name, segment.size
        )
        return True


def _scales(group: list[Segment], lives: list[np.ndarray]) -> np.ndarray | None:
    """The scales of the live rows of ``group`` (see segments.restoring_scales); None when
    no segment has any (not cosine). A segment sealed before vectors were stored once has
    none: RocksDB still holds its rows' vectors, which readers ask first, so its rows get 1."""
    if all(seg.scales is None for seg in group):
        return None
    return np.concatenate(
        [
            seg.scales[lv] if seg.scales is not None else np.ones(int(lv.sum()), np.float32)
            for seg, lv in zip(group, lives, strict=True)
        ]
    )
