"""Building a sealed segment (vectors file, id file, index tier, payload indexes) from
rows of the collection; every optimizer job that writes a segment goes through it."""

from __future__ import annotations

import logging
import os
import time
import uuid

import numpy as np

from lamina.types import FloatMatrix

from ..payload import FieldIndex
from ..segments import Segment
from ..state import CollectionState

log = logging.getLogger("lamina.engine")


def build_threads() -> int:
    """Threads an index build may use: LAMINA_BUILD_THREADS, or every core."""
    return max(1, int(os.environ.get("LAMINA_BUILD_THREADS", "0")) or (os.cpu_count() or 1))


class SegmentBuilder(CollectionState):
    """Segment builds of a collection."""

    def _keys_for_build(self, rows: np.ndarray) -> list[bytes]:
        """Id keys of ``rows`` from RocksDB; a row deleted meanwhile gets an empty key
        (it is killed in the new segment before the segment is used)."""
        keys: list[bytes] = []
        for lo in range(0, rows.size, 65_536):
            found = self._store.id_keys_of([int(r) for r in rows[lo : lo + 65_536]])
            keys.extend(k if k is not None else b"" for k in found)
        return keys

    def _build(self, rows: np.ndarray, vectors: FloatMatrix, payload: dict[str, FieldIndex]) -> Segment:
        folder = self._segment_dir / f"{int(rows[0]):012d}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        keys = self._keys_for_build(rows)
        segment = Segment.build(
            folder,
            rows,
            keys,
            vectors,
            self.config,
            self._metric,
            build_threads(),
            payload,
            stop=lambda: self._closed,  # closing does not wait for a whole build
        )
        log.info(
            "built %s segment of %d rows for %r in %.1f s",
            segment.tier.kind,
            rows.size,
            self.name,
            time.perf_counter() - started,
        )
        return segment
