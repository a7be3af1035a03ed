"""The scrub: the first job after a collection opens. Opening checks each segment's
manifest, file sizes and every file's checksum but the memory-mapped vectors (see
engine/segments.py); the scrub reads those in the background, one segment per step, and
a segment that fails makes the collection degraded (searches refused, see engine/state.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..manifest import META
from ..state import CollectionState

log = logging.getLogger("lamina.engine")


class Scrub(CollectionState):
    """The scrub job."""

    def _scrub_step(self) -> bool:
        """Verify the files of one segment opened but not yet checked in full (caller holds
        the lock; the reading runs without it). Returns whether it did one."""
        segment = next((s for s in self._segments if not s.verified), None)
        if segment is None:
            return False
        self._lock.release()
        try:
            manifest = _manifest_of(segment.folder)
            problems = segment.scrub()
        finally:
            self._lock.acquire()
        if problems and _manifest_of(segment.folder) != manifest:
            # a payload index came or went while the files were read (its manifest is rewritten
            # under the lock): what was seen may be half old, half new; read it again next step
            segment.verified = False
            return True
        if problems and segment in self._segments:
            self._segments = [s for s in self._segments if s is not segment]
            self._damaged[segment.name] = "; ".join(problems)
            log.error(
                "%s: collection %r is degraded until repaired (lamina check --repair)", problems[0], self.name
            )
        return True


def _manifest_of(folder: Path) -> bytes | None:
    """The bytes of a segment's manifest now (None: unreadable): a change tells that its
    files changed."""
    try:
        return (folder / META).read_bytes()
    except OSError:
        return None
