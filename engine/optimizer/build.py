"""Building a sealed segment (vectors file, id file, index tier, payload indexes, payload
column) from rows of the collection, or growing an HNSW segment by more rows; every optimizer job
that writes a segment goes through it.

The segment lifecycle: the mutable segment is sealed at ``seal_rows`` (a few tens of
thousands of rows, bounded in bytes too) and indexed at once. Segments then grow
like the levels of an LSM tree, up to ``max_segment_rows``: rows sealed after an HNSW
segment, once they are at least ``MERGE_FRACTION`` of its live rows, are inserted into
its graph (``Segment.grow``: hnswlib loads the graph, resizes it and adds the points;
each point of a merge is inserted once). A collection of N points is so searched
through a few graphs whose sizes fall geometrically: one or two at any N below
``max_segment_rows``. Tiers that cannot grow (flat, quantized, multi-tenant) are merged
by rebuilding the neighbours (see compaction)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from lamina.cores import niced, usable_cores
from lamina.errors import InvalidArgument
from lamina.index.tiers import HnswTier
from lamina.types import FloatMatrix

from ..payload import FieldIndex
from ..segment_files import restoring_scales
from ..segments import Segment
from ..state import CollectionState

log = logging.getLogger("lamina.engine")

#: rows sealed or merged after a segment join it once they are this fraction of its live
#: rows: the next level of the tree is at most 1 / MERGE_FRACTION times smaller, so a
#: segment's rows are rewritten about 1 / MERGE_FRACTION times while it grows (I/O), and
#: the small segments beside the largest stay few
MERGE_FRACTION = 0.25
#: rows per RocksDB multi-get of a build (each holds the GIL for a few milliseconds)
READ_CHUNK = 2_048


#: the environment variable fixing the threads of every index build (0 or unset: the cores)
BUILD_THREADS_ENV = "LAMINA_BUILD_THREADS"


def build_threads_setting() -> int:
    """``LAMINA_BUILD_THREADS`` as a number of threads (0: unset, every usable core);
    InvalidArgument naming the variable when it is not a whole number >= 0. Checked when a
    database opens (engine/database.py), so a typo fails there, not in a background build."""
    raw = os.environ.get(BUILD_THREADS_ENV, "").strip() or "0"
    try:
        chosen = int(raw)
    except ValueError:
        chosen = -1
    if chosen < 0:
        raise InvalidArgument(
            f"{BUILD_THREADS_ENV} must be a whole number of threads (0 or unset: every core), not {raw!r}"
        )
    return chosen


def build_threads(serving: bool = False) -> int:
    """Threads an index build may use: LAMINA_BUILD_THREADS, or every usable core (lamina/cores.py), one fewer while
    searches are being ``serving`` (a graph insert on every core leaves a search waiting for
    one: the p99 of searches during an ingest)."""
    chosen = build_threads_setting()
    if chosen > 0:
        return chosen
    cores = usable_cores()
    return max(1, cores - 1) if serving else cores


class SegmentBuilder(CollectionState):
    """Segment builds of a collection."""

    #: folders of segments a committed seal or merge replaced, removed by the optimizer
    #: thread once it let go of the lock (unlinking a large segment's files takes long
    #: enough to show in the p99 of searches waiting for the lock); a crash first leaves
    #: them to the sweep at open, as the manifest no longer names them
    _replaced_folders: list[Path]

    def _discard(self, folder: Path) -> None:
        """Remove ``folder`` (a replaced segment's) after the current step (caller holds the lock)."""
        self._replaced_folders.append(folder)

    #: row spans whose vectors a seal dropped from RocksDB, compacted away after the step
    _dropped_vectors: list[tuple[int, int]]

    def _remove_replaced(self) -> None:
        """Remove the folders of replaced segments, and compact the vectors sealed rows left
        in RocksDB's files (a range delete frees no disk until its range is compacted;
        RocksDB compacts with the GIL released) (without the lock)."""
        while self._replaced_folders:
            shutil.rmtree(self._replaced_folders.pop(), ignore_errors=True)
        while self._dropped_vectors:
            lo, hi = self._dropped_vectors.pop()
            try:
                self._store.compact_vectors(lo, hi)
            except Exception as exc:  # only disk space is at stake: RocksDB compacts them later anyway
                log.warning("compacting the sealed vectors of %r (rows %d..%d): %s", self.name, lo, hi, exc)

    def _keys_for_build(self, rows: np.ndarray) -> list[bytes]:
        """Id keys of ``rows`` from RocksDB; a row deleted meanwhile gets an empty key
        (it is killed in the new segment before the segment is used)."""
        keys: list[bytes] = []
        for lo in range(0, rows.size, 65_536):
            found = self._store.id_keys_of([int(r) for r in rows[lo : lo + 65_536]])
            keys.extend(k if k is not None else b"" for k in found)
        return keys

    def _payloads_for_build(self, rows: np.ndarray) -> list[bytes]:
        """Stored payload JSON of ``rows`` from RocksDB, for a segment's payload column; a row
        deleted meanwhile gets an empty one (it is killed in the new segment before use)."""
        blobs: list[bytes] = []
        for lo in range(0, rows.size, READ_CHUNK):  # RocksDB reads hold the GIL: searches get turns between
            found = self._store.payloads_of([int(r) for r in rows[lo : lo + READ_CHUNK]])
            blobs.extend(b if b is not None else b"" for b in found)
        return blobs

    def _restoring(
        self, rows: np.ndarray, prepared: FloatMatrix
    ) -> tuple[np.ndarray | None, list[tuple[int, bytes]]]:
        """How a segment of ``rows`` (with their ``prepared`` vectors) gives back the stored
        vectors once RocksDB drops them at the seal: a cosine collection's per-row scales
        (see ``restoring_scales``) and the (row, stored vector) of the rows no scale gives
        back exactly, which RocksDB keeps. Other metrics store the vectors as they came."""
        if self.config.metric != "cosine":
            return None, []
        blobs: list[bytes | None] = []
        for lo in range(0, rows.size, READ_CHUNK):  # RocksDB reads hold the GIL: searches get turns between
            blobs.extend(self._store.vectors_of([int(r) for r in rows[lo : lo + READ_CHUNK]]))
        zero = bytes(4 * self.config.dim)  # a row deleted meanwhile: killed in the segment anyway
        raw = np.frombuffer(b"".join(b if b is not None else zero for b in blobs), "<f4")
        scales, exact = restoring_scales(raw.reshape(-1, self.config.dim), prepared)
        kept = [
            (int(rows[i]), blob) for i in np.flatnonzero(~exact).tolist() if (blob := blobs[i]) is not None
        ]
        return scales, kept

    def _build(
        self,
        rows: np.ndarray,
        vectors: FloatMatrix,
        payload: dict[str, FieldIndex],
        scales: np.ndarray | None = None,
    ) -> Segment:
        folder = self._segment_dir / f"{int(rows[0]):012d}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        segment = niced(  # the build yields the CPU to searches and writes (lamina/cores.py)
            self._nice,
            lambda: Segment.build(
                folder,
                rows,
                self._keys_for_build(rows),
                vectors,
                self.config,
                self._metric,
                self._build_threads,
                payload,
                stop=lambda: self._closed,  # closing does not wait for a whole build
                scales=scales,
                payloads=self._payloads_for_build(rows),
            ),
        )
        log.info(
            "built %s segment of %d rows for %r in %.1f s",
            segment.tier.kind,
            rows.size,
            self.name,
            time.perf_counter() - started,
        )
        return segment

    def _build_threads(self) -> int:
        """Threads for the next chunk of a build (asked before each): one core fewer while
        searches are being served."""
        return build_threads(self._serving())

    def _growable(self, segment: Segment) -> bool:
        """Whether merges grow ``segment``'s graph instead of rebuilding: a float HNSW
        segment (multi-tenant segments are searched through tenant partitions)."""
        return isinstance(segment.tier, HnswTier) and not self.config.multi_tenant

    def _joins(self, segment: Segment, rows: int) -> bool:
        """Whether ``rows`` new rows are enough to grow ``segment`` by, and fit in it."""
        kept = segment.size if self._growable(segment) else segment.live_count  # a rebuild drops the dead
        return rows >= MERGE_FRACTION * segment.live_count and kept + rows <= self.config.max_segment_rows

    def _grow(
        self,
        base: Segment,
        rows: np.ndarray,
        vectors: FloatMatrix,
        payload: dict[str, FieldIndex],
        scales: np.ndarray | None = None,
    ) -> Segment:
        """A new segment: ``base`` grown by ``rows`` (see ``Segment.grow``)."""
        folder = self._segment_dir / f"{base.lo:012d}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        segment = niced(  # as _build
            self._nice,
            lambda: Segment.grow(
                folder,
                base,
                rows,
                self._keys_for_build(rows),
                vectors,
                self.config,
                self._metric,
                self._build_threads,
                payload,
                stop=lambda: self._closed,
                scales=scales,
                payloads=self._payloads_for_build(rows),
                # a base written before payload columns gets one now, from RocksDB
                base_payloads=self._payloads_for_build(base.rows) if base.payload_column is None else None,
            ),
        )
        log.info(
            "grew segment %s of %d rows by %d rows for %r in %.1f s",
            base.name,
            base.size,
            rows.size,
            self.name,
            time.perf_counter() - started,
        )
        return segment

    def _drop_stale_indexes(self, segment: Segment) -> None:
        """Drop the payload indexes of fields dropped while ``segment`` was built from
        indexes taken before (caller holds the lock)."""
        for name in set(segment.payload) - set(self.config.payload_index):
            segment.drop_payload_index(name)
