"""Payload indexes added after a segment was sealed are built over it here, from the
stored payloads (filters stay exact meanwhile)."""

from __future__ import annotations

import logging
import time

from ..state import CollectionState

log = logging.getLogger("lamina.engine")


class PayloadIndexing(CollectionState):
    """The payload-index build job."""

    def _index_step(self) -> bool:
        """Build one payload index a sealed segment lacks (the field's index was added after
        the segment was sealed) from the stored payloads; caller holds the lock. Returns
        whether it did one."""
        todo = next(
            (
                (seg, name, kind)
                for seg in self._segments
                for name, kind in self.config.payload_index.items()
                if name not in seg.payload
            ),
            None,
        )
        if todo is None:
            return False
        segment, name, kind = todo
        self._lock.release()
        try:
            started = time.perf_counter()
            index = self._index_segment(segment, name, kind)
        finally:
            self._lock.acquire()
        if self._closed:
            return False
        if segment in self._segments and self.config.payload_index.get(name) == kind:
            segment.add_payload_index(name, index)
            log.info(
                "built %s index of %r over segment %s of %r in %.1f s",
                kind,
                name,
                segment.name,
                self.name,
                time.perf_counter() - started,
            )
        return True
