"""Sealed segments: immutable sets of rows with their vectors memory-mapped from a
file and an index tier in memory.

A segment folder holds ``rows.npy`` (the global row numbers it covers, ascending),
their prepared float32 vectors, memory-mapped (``vectors.f32``; an HNSW segment keeps
them only in its graph file, whose records are in row order: see index/graphfile.py,
so that every sealed vector is stored once), the point ids of
its rows (``ids.npy`` when all are integers, else ``keys.bin`` + ``keys.off.npy``;
memory-mapped, so that a search answers ids without a RocksDB read), ``segment.json``
(tier kind and note), the tier's own files, the payload column (``payloads.bin``: each
row's stored payload JSON, exactly the bytes RocksDB holds, back to back, and
``payloads.off.npy``: uint64 offsets, one more than rows; memory-mapped, so that a search
reads a hit's payload as one slice; RocksDB keeps every payload too, as the truth that
get, scroll, filters, payload indexes and repair read; segments written before the
column have none and their hits' payloads come from RocksDB) and, in a multi-tenant collection,
``tenants.npy`` (each row's tenant code; see engine/tenants.py). Deletes after sealing only clear a
bit in the in-memory ``live`` mask (and are recorded durably in RocksDB, which
re-applies them at start); compaction rewrites a segment without its dead rows.

``segment.json`` is the segment's manifest (engine/manifest.py: its file list with sizes and
CRC-32s, checked at open, and the segment's verification).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np

from lamina.engine.payload import FieldIndex
from lamina.index.tiers import (
    GRAPH,
    BinaryTier,
    ExactTier,
    HnswTier,
    Knobs,
    Stop,
    Threads,
    Tier,
    build_tier,
    load_tier,
)
from lamina.storage import faults
from lamina.storage.keys import id_from_key, tenant_of_key
from lamina.storage.vectorfile import atomic_folder, fsync_path, write_matrix
from lamina.types import CollectionConfig, FloatMatrix, PointId

from .manifest import (
    MAPPED,
    META,
    DamagedSegment,
    read_meta,
    verify_segment,
    write_meta,
)
from .segment_files import (
    SCALES,
    Column,
    Ids,
    map_vectors,
    read_ids,
    read_payloads,
    write_ids,
    write_payloads,
)
from .segment_search import SegmentSearch, reads_disk

#: walk a plain search's graphs in one call from this many on (``nearest_all``): below it the
#: loop costs less (bench graphview --segments, 32-element graphs, CPU per query: one call
#: 64 / 81 / 105 us at 1 / 2 / 4 graphs against the loop's 30 / 59 / 130 us)
ONE_CALL_FROM = 3


log = logging.getLogger("lamina.engine")


def open_segments(
    folder: Path, names: list[str], config: CollectionConfig, metric: int
) -> tuple[list[Segment], dict[str, str]]:
    """The segments of a manifest, opened from ``folder``, and those that could not be
    (name -> why): the collection then opens degraded."""
    segments: list[Segment] = []
    damaged: dict[str, str] = {}
    for name in names:
        try:
            segments.append(Segment.load(folder / name, config, metric))
        except DamagedSegment as exc:
            damaged[name] = str(exc)
            log.error(
                "%s. The collection opens degraded: searches are refused until it is repaired; run "
                "`lamina check --data DIR --repair` (it rebuilds the segment from the vectors RocksDB holds)",
                exc,
            )
    return segments, damaged


@contextmanager
def discard_unless_committed(segment: Segment | None) -> Iterator[None]:
    """Commit a newly built ``segment`` to the manifest in the block; if that fails
    (disk full), remove its folder so that nothing of the build is left behind."""
    try:
        yield
    except BaseException:
        if segment is not None:
            shutil.rmtree(segment.folder, ignore_errors=True)
        raise


def payload_file(field: str, kind: str) -> str:
    """File name of a field's payload index in a segment folder."""
    return f"pidx-{hashlib.sha1(field.encode()).hexdigest()[:16]}-{kind}.npz"


class Segment(SegmentSearch):
    """One sealed segment. ``live`` changes under the collection's writer lock; searches
    read it without a lock (a row killed during a search may still be returned by it,
    which is the order the two calls raced in; ``Collection._read`` repeats a search
    during which a point was replaced, so that it is not missed)."""

    def __init__(
        self,
        folder: Path,
        rows: np.ndarray,
        vectors: FloatMatrix,
        tier: Tier,
        note: str,
        ids: Ids,
        payload: dict[str, FieldIndex],
        tenants: np.ndarray | None = None,
        scales: np.ndarray | None = None,
        payloads: Column | None = None,
    ) -> None:
        self.folder = folder
        #: the payload column (blob, offsets), None for a segment written before it (RocksDB has them)
        self.payload_column = payloads
        #: cosine: each row's vector as stored is its unit vector times its scale (see restoring_scales)
        self.scales = scales
        # the file the vectors are mapped from, which _reads_disk checks (made once: a
        # path join per read is not free): vectors.f32, or an HNSW segment's graph
        in_graph = isinstance(tier, HnswTier) and not (folder / MAPPED).exists()
        self._mapped = folder / (GRAPH if in_graph else MAPPED)
        self.payload = payload
        self._ids = ids
        self.name = folder.name
        self.rows = rows
        self.vectors = vectors
        self.tier = tier
        self.note = note
        # the tier's files never change; read their sizes now, while the folder surely exists
        # (a compaction may remove it while a reader still holds this segment)
        self._tier_bytes = sum((folder / f).stat().st_size for f in tier.files())
        self.live = np.ones(rows.shape[0], dtype=np.bool_)
        # multi-tenant segments: a descriptor of the vector file for gather() (an open file
        # outlives a compaction's unlink); other segments never gather, and open nothing
        path = folder / "vectors.f32"
        self._fd = (
            os.open(path, os.O_RDONLY) if tenants is not None and rows.shape[0] and path.exists() else -1
        )
        if self._fd >= 0:
            weakref.finalize(self, os.close, self._fd)
        self.dead = 0
        self.verified = True  # its files' checksums were checked (see scrub)
        self._matches: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # filter key -> rows matching
        self._cache_lock = threading.Lock()
        # tenant membership: local rows sorted by tenant code (stable, so ascending per tenant)
        codes = tenants if tenants is not None else np.zeros(0, np.int32)
        self._tenant_order = np.argsort(codes, kind="stable").astype(np.int32)
        self._tenant_sorted = codes[self._tenant_order]
        present, starts = np.unique(self._tenant_sorted, return_index=True)
        ends = np.append(starts[1:], codes.size)[: starts.size]
        # tenant code -> (start, end) in _tenant_order: one dict lookup per query
        self._tenant_span = dict(
            zip(present.tolist(), zip(starts.tolist(), ends.tolist(), strict=True), strict=True)
        )

    @reads_disk
    def stored_vectors(self, local: np.ndarray, cosine: bool) -> FloatMatrix | None:
        """The vectors of ``local`` rows as they were stored (a cosine collection's: the unit
        vector times the row's scale, bit for bit what was written; see restoring_scales);
        None for a segment sealed before vectors were stored once (RocksDB still has them)."""
        if local.size and self.scales is None and cosine:
            return None
        found = np.asarray(self.vectors[local], dtype=np.float32)
        if self.scales is not None:
            found = found * self.scales[local][:, None]
        return found

    @classmethod
    def build(
        cls,
        folder: Path,
        rows: np.ndarray,
        keys: list[bytes],
        vectors: FloatMatrix,
        config: CollectionConfig,
        metric: int,
        threads: Threads,
        payload: dict[str, FieldIndex],
        stop: Stop = None,
        scales: np.ndarray | None = None,
        payloads: Sequence[bytes] | None = None,
    ) -> Segment:
        """Build the tier over ``vectors`` (prepared, one per row; ``keys`` are the rows'
        id keys; ``scales`` give back the stored vectors of a cosine collection) and write
        the segment folder durably with its payload indexes (in the segment's row
        positions) and its payload column (``payloads``: each row's stored payload JSON,
        empty for a row deleted meanwhile; None: no column); the caller commits it to the
        collection manifest."""
        # a multi-tenant collection answers from tenant partitions, never from a shared graph
        tier, note = (
            (ExactTier(metric), "")
            if config.multi_tenant
            else build_tier(config, vectors, metric, threads, stop)
        )
        tenants = np.array([tenant_of_key(k) for k in keys], np.int32) if config.multi_tenant else None
        return cls._write(
            folder,
            rows.astype(np.int64),
            [vectors],
            keys,
            None,
            tier,
            note,
            payload,
            config,
            tenants,
            scales,
            (None, payloads) if payloads is not None else None,
        )

    @classmethod
    def _write(
        cls,
        folder: Path,
        rows: np.ndarray,
        vectors: list[FloatMatrix],
        keys: list[bytes],
        before: Ids | None,
        tier: Tier,
        note: str,
        payload: dict[str, FieldIndex],
        config: CollectionConfig,
        tenants: np.ndarray | None = None,
        scales: np.ndarray | None = None,
        payloads: tuple[Column | None, Sequence[bytes]] | None = None,
    ) -> Segment:
        """Write a segment folder durably (see ``atomic_folder``) and open it: ``vectors``
        are written one part after another, ids are ``before``'s (if any) then ``keys``,
        the payload column (if ``payloads``) a column's rows (if any) then stored payloads."""
        in_graph = isinstance(tier, HnswTier)  # the graph's file holds the vectors: no second copy
        with atomic_folder(folder) as tmp:
            np.save(tmp / "rows.npy", rows)
            if not in_graph:
                write_matrix(tmp / MAPPED, *vectors)
            write_ids(tmp, keys, before)
            if tenants is not None:
                np.save(tmp / "tenants.npy", tenants)
            if scales is not None:
                np.save(tmp / SCALES, scales.astype(np.float32))
            if payloads is not None:
                write_payloads(tmp, *payloads)
            tier.save(tmp)
            for name, index in payload.items():
                index.save(tmp / payload_file(name, index.kind))
            write_meta(tmp, {"tier": tier.kind, "note": note, "rows": int(rows.size)})
        if in_graph:  # searched through a view of the file written, like after a restart; hnswlib's copy goes
            tier = HnswTier.load(folder, config, cast(HnswTier, tier).metric)
        elif isinstance(tier, BinaryTier):  # its codes mapped, as other processes and a restart map them
            tier.codes = BinaryTier.mapped_codes(folder)
        vecs = map_vectors(folder, tier, config.dim)
        return cls(
            folder,
            rows,
            vecs,
            tier,
            note,
            read_ids(folder),
            dict(payload),
            tenants,
            scales,
            read_payloads(folder, rows.size),
        )

    @classmethod
    def grow(
        cls,
        folder: Path,
        base: Segment,
        rows: np.ndarray,
        keys: list[bytes],
        vectors: FloatMatrix,
        config: CollectionConfig,
        metric: int,
        threads: Threads,
        payload: dict[str, FieldIndex],
        stop: Stop = None,
        scales: np.ndarray | None = None,
        payloads: Sequence[bytes] | None = None,
        base_payloads: Sequence[bytes] | None = None,
    ) -> Segment:
        """A new segment in ``folder`` holding every row of ``base`` (an HNSW segment; its
        dead rows stay, marked deleted, at the same positions) and then ``rows`` (all past
        ``base``'s, with their id ``keys`` and prepared ``vectors``): base's graph is loaded
        and grown by inserting the new points (each point of a merge is inserted once, not
        the whole segment again). ``payload`` holds the indexes in the new segment's
        positions. Its payload column is ``base``'s (or, for a base without one,
        ``base_payloads``: those of its rows) then ``payloads`` (see ``build``).
        Written durably like ``build``; the caller commits it to the manifest."""
        dead = np.flatnonzero(~base.live)
        tier = HnswTier.grow(base.folder, config, metric, dead, vectors, threads, stop)
        all_rows = np.concatenate([base.rows, rows.astype(np.int64)])
        both = scales
        if scales is not None:  # a base sealed before vectors were stored once: RocksDB has its rows'
            before = base.scales if base.scales is not None else np.ones(base.size, np.float32)
            both = np.concatenate([before, scales])
        column: tuple[Column | None, Sequence[bytes]] | None = None
        if payloads is not None and base.payload_column is not None:
            column = (base.payload_column, payloads)
        elif payloads is not None and base_payloads is not None:
            column = (None, [*base_payloads, *payloads])
        segment = cls._write(
            folder,
            all_rows,
            [base.vectors, vectors],
            keys,
            base._ids,
            tier,
            "",
            payload,
            config,
            None,
            both,
            column,
        )
        segment.kill(base.rows[dead])  # the graph has them marked already; the live mask learns them
        return segment

    @classmethod
    def load(cls, folder: Path, config: CollectionConfig, metric: int) -> Segment:
        """Open the segment in ``folder``; DamagedSegment when its files do not match its
        manifest (see the module's doc)."""
        problems = verify_segment(folder, deep=False)
        if problems:
            raise DamagedSegment("; ".join(problems))
        meta = read_meta(folder)
        try:
            return cls._load(folder, meta, config, metric)
        except (OSError, ValueError, RuntimeError) as exc:  # an old segment without checksums
            raise DamagedSegment(f"segment {folder.name} cannot be opened: {exc}") from exc

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any], config: CollectionConfig, metric: int) -> Segment:
        # a graph saved before vectors were stored once (beside a vectors.f32) is not in label order
        tier = load_tier(meta["tier"], folder, config, metric, labelled=not (folder / MAPPED).exists())
        rows = np.load(folder / "rows.npy")
        vecs = map_vectors(folder, tier, config.dim)
        payload = {
            name: FieldIndex.load(folder / payload_file(name, kind))
            for name, kind in config.payload_index.items()
            if (folder / payload_file(name, kind)).exists()
        }
        tenants = np.load(folder / "tenants.npy") if (folder / "tenants.npy").exists() else None
        scales = np.load(folder / SCALES) if (folder / SCALES).exists() else None
        segment = cls(
            folder,
            rows,
            vecs,
            tier,
            meta.get("note", ""),
            read_ids(folder),
            payload,
            tenants,
            scales,
            read_payloads(folder, rows.size),
        )
        segment.verified = "files" not in meta  # written before checksums: nothing to verify
        return segment

    def scrub(self) -> list[str]:
        """Verify every file of the segment against its manifest, the memory-mapped vector
        file included (what opening leaves out); returns the problems found."""
        problems = verify_segment(self.folder, deep=True)
        self.verified = True
        return problems

    def add_payload_index(self, name: str, index: FieldIndex) -> None:
        """Write a payload index built after sealing (atomically) and start using it."""
        path = self.folder / payload_file(name, index.kind)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with faults.storage_errors(self.folder):
                index.save(tmp)
                fsync_path(tmp)
                os.replace(tmp, path)
                self._rewrite_meta()
                fsync_path(self.folder)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed build leaves nothing behind
            raise
        self.payload = {**self.payload, name: index}  # copy on write: searches iterate it unlocked
        self._matches = OrderedDict()

    def drop_payload_index(self, name: str) -> None:
        index = self.payload.get(name)
        if index is not None:
            self.payload = {k: v for k, v in self.payload.items() if k != name}
            self._matches = OrderedDict()
            # the manifest first: a crash between the two leaves a stray file, not a
            # manifest naming a file that is gone (which would make the segment damaged)
            self._rewrite_meta(leave_out=payload_file(name, index.kind))
            (self.folder / payload_file(name, index.kind)).unlink(missing_ok=True)

    def _rewrite_meta(self, leave_out: str = "") -> None:
        """Rewrite the manifest after a payload index came or went (atomically: beside it,
        fsynced, renamed over it)."""
        path = self.folder / META
        try:
            meta = read_meta(self.folder)
        except DamagedSegment:
            return  # reported by check; a new manifest would hide the damage
        tmp = self.folder / (META + ".tmp")
        try:
            write_meta(self.folder, meta, tmp, leave_out)
            fsync_path(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Local positions of those global ``rows`` that belong to this segment."""
        rows = rows[(rows >= self.lo) & (rows < self.hi)]
        pos = np.searchsorted(self.rows, rows)
        return pos[self.rows[pos] == rows]

    def kill(self, rows: np.ndarray) -> None:
        """Mark global ``rows`` dead (those not in this segment are ignored)."""
        local = self.locate(rows)
        local = local[self.live[local]]
        if local.size:
            self.live[local] = False
            self.dead += int(local.size)
            self.tier.kill(local)

    @reads_disk
    def ids_at(self, rows: np.ndarray) -> list[PointId]:
        """Point ids of global ``rows`` of this segment."""
        return self._ids_local(np.searchsorted(self.rows, rows))

    def _ids_local(self, local: np.ndarray) -> list[PointId]:
        """Point ids of local rows ``local``."""
        if isinstance(self._ids, np.ndarray):
            return cast(list[PointId], self._ids[local].tolist())
        blob, offsets = self._ids
        starts, ends = offsets[local].tolist(), offsets[local + 1].tolist()
        return [id_from_key(bytes(blob[a:b])) for a, b in zip(starts, ends, strict=True)]

    @reads_disk
    def payloads_local(self, local: np.ndarray) -> list[bytes | None]:
        """The stored payload JSON of local rows ``local`` from the payload column, one slice
        each (None: a row deleted before the segment was written; the caller checks that the
        segment has a column)."""
        assert self.payload_column is not None
        blob, offsets = self.payload_column
        return [
            blob[a:b] or None
            for a, b in zip(offsets[local].tolist(), offsets[local + 1].tolist(), strict=True)
        ]

    @reads_disk
    def nearest(
        self,
        query: FloatMatrix,
        k: int,
        knobs: Knobs,
        walked: bool = False,
        found: tuple[FloatMatrix, np.ndarray] | None = None,
    ) -> tuple[FloatMatrix, np.ndarray, list[PointId]]:
        """The plain search's step in this segment (engine/plain.py ``PlainSearch._plain``): the
        tier's top-k of one prepared (1, dim) query among live rows, as kernel scores, local
        rows and point ids, without padding and without global row numbers (the graph's
        labels are local rows, and ids are read at them). ``walked``: ``found`` is the graph's
        answer (scores, local rows; None: fewer than k reached), walked with other segments'
        (``nearest_all``)."""
        k = min(k, self.size)
        tier = self.tier
        if not walked:
            found = tier.nearest(query, k, knobs.ef, self.live) if type(tier) is HnswTier else None
        if found is None:  # other tiers, or a graph with fewer than k live rows reachable
            scores, local, counts = tier.search(self.vectors, self.live, query, k, knobs)
            n = int(counts[0])
            found = scores[0, :n], local[0, :n]
        return found[0], found[1], self._ids_local(found[1])

    def index_bytes(self) -> int:
        """Bytes the tier holds in memory (its files' sizes), the live mask and tenant membership."""
        return self._tier_bytes + self.live.nbytes + self._tenant_order.nbytes + self._tenant_sorted.nbytes


def nearest_all(
    segments: Sequence[Segment], query: FloatMatrix, k: int, knobs: Knobs
) -> list[tuple[FloatMatrix, np.ndarray, list[PointId]]]:
    """``Segment.nearest`` of each segment, in order. The graphs of those opened as views
    (index/graphview.py) are walked in one GIL-released call (``HnswTier.nearest_views``)
    instead of one Python round trip each; the others answer one by one."""
    if len(segments) < ONE_CALL_FROM:  # the common case, one segment: no list of walks to make
        return [segment.nearest(query, k, knobs) for segment in segments]
    walk = [
        i for i, s in enumerate(segments) if type(s.tier) is HnswTier and s.tier.view is not None and s.size
    ]
    if len(walk) < ONE_CALL_FROM:
        return [segment.nearest(query, k, knobs) for segment in segments]
    tiers = [cast(HnswTier, segments[i].tier) for i in walk]
    answers = dict(
        zip(
            walk,
            HnswTier.nearest_views(tiers, query, k, knobs.ef, [segments[i].live for i in walk]),
            strict=True,
        )
    )
    return [
        segment.nearest(query, k, knobs, True, answers[i])
        if i in answers
        else segment.nearest(query, k, knobs)
        for i, segment in enumerate(segments)
    ]
