"""Sealed segments: immutable sets of rows with their vectors memory-mapped from a
file and an index tier in memory.

A segment folder holds ``rows.npy`` (the global row numbers it covers, ascending),
``vectors.f32`` (their prepared float32 vectors, memory-mapped), the point ids of
its rows (``ids.npy`` when all are integers, else ``keys.bin`` + ``keys.off.npy``;
memory-mapped, so that a search answers ids without a RocksDB read), ``segment.json``
(tier kind and note) and the tier's own files. Deletes after sealing only clear a
bit in the in-memory ``live`` mask (and are recorded durably in RocksDB, which
re-applies them at start); compaction rewrites a segment without its dead rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from lamina.index.flat import exact_topk
from lamina.index.tiers import Knobs, Tier, TopK, build_tier, load_tier
from lamina.storage.keys import id_from_key
from lamina.storage.vectorfile import atomic_folder, map_matrix, write_matrix
from lamina.types import CollectionConfig, FloatMatrix, PointId

_META = "segment.json"


class Segment:
    """One sealed segment. ``live`` changes under the collection's writer lock; searches
    read it without a lock (a row killed during a search may still be returned by it,
    which is the order the two calls raced in)."""

    def __init__(
        self, folder: Path, rows: np.ndarray, vectors: FloatMatrix, tier: Tier, note: str, ids: _Ids
    ) -> None:
        self.folder = folder
        self._ids = ids
        self.name = folder.name
        self.rows = rows
        self.vectors = vectors
        self.tier = tier
        self.note = note
        self.live = np.ones(rows.shape[0], dtype=np.bool_)
        self.dead = 0

    @property
    def lo(self) -> int:
        return int(self.rows[0])

    @property
    def hi(self) -> int:
        return int(self.rows[-1]) + 1

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def live_count(self) -> int:
        return self.size - self.dead

    @classmethod
    def build(
        cls,
        folder: Path,
        rows: np.ndarray,
        keys: list[bytes],
        vectors: FloatMatrix,
        config: CollectionConfig,
        metric: int,
        threads: int,
    ) -> Segment:
        """Build the tier over ``vectors`` (prepared, one per row; ``keys`` are the rows'
        id keys) and write the segment folder durably; the caller commits it to the
        collection manifest."""
        tier, note = build_tier(config, vectors, metric, threads)
        with atomic_folder(folder) as tmp:
            np.save(tmp / "rows.npy", rows.astype(np.int64))
            write_matrix(tmp / "vectors.f32", vectors)
            _write_ids(tmp, keys)
            tier.save(tmp)
            (tmp / _META).write_bytes(orjson.dumps({"tier": tier.kind, "note": note, "rows": int(rows.size)}))
        vecs = map_matrix(folder / "vectors.f32", config.dim)
        return cls(folder, rows.astype(np.int64), vecs, tier, note, _read_ids(folder))

    @classmethod
    def load(cls, folder: Path, config: CollectionConfig, metric: int) -> Segment:
        meta: dict[str, Any] = orjson.loads((folder / _META).read_bytes())
        tier = load_tier(meta["tier"], folder, config, metric)
        rows = np.load(folder / "rows.npy")
        vecs = map_matrix(folder / "vectors.f32", config.dim)
        return cls(folder, rows, vecs, tier, meta.get("note", ""), _read_ids(folder))

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

    def search(self, queries: FloatMatrix, k: int, knobs: Knobs, exact: bool, metric: int) -> TopK:
        """Top-k with global row numbers (-1 padded), best first per query."""
        k = min(k, self.size)
        if exact:
            scores, local, counts = exact_topk(self.vectors, self.live, queries, k, metric)
        else:
            scores, local, counts = self.tier.search(self.vectors, self.live, queries, k, knobs)
        rows = self.rows.take(local, mode="clip")
        unused = local < 0
        if unused.any():
            rows[unused] = -1
        return scores, rows, counts

    def ids_at(self, rows: np.ndarray) -> list[PointId]:
        """Point ids of global ``rows`` of this segment."""
        local = np.searchsorted(self.rows, rows)
        if isinstance(self._ids, np.ndarray):
            return cast(list[PointId], self._ids[local].tolist())
        blob, offsets = self._ids
        return [id_from_key(bytes(blob[offsets[i] : offsets[i + 1]])) for i in local.tolist()]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, FloatMatrix]:
        """(global rows, vectors) of those live ``rows`` that belong to this segment."""
        local = self.locate(rows)
        local = local[self.live[local]]
        return self.rows[local], np.asarray(self.vectors[local])

    def index_bytes(self) -> int:
        """Bytes the tier holds in memory (its files' sizes) plus the live mask."""
        return sum((self.folder / f).stat().st_size for f in self.tier.files()) + self.live.nbytes


_Ids = np.ndarray | tuple[np.ndarray, np.ndarray]


def _write_ids(folder: Path, keys: list[bytes]) -> None:
    if all(len(k) == 9 and k[:1] == b"\x00" for k in keys):
        ints = np.frombuffer(b"".join(k[1:] for k in keys), dtype=">u8").astype(np.uint64)
        np.save(folder / "ids.npy", ints)
        return
    (folder / "keys.bin").write_bytes(b"".join(keys))
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    np.save(folder / "keys.off.npy", offsets)


def _read_ids(folder: Path) -> _Ids:
    if (folder / "ids.npy").exists():
        return np.asarray(np.load(folder / "ids.npy", mmap_mode="r"))  # a plain view: cheaper to index
    blob = (
        np.memmap(folder / "keys.bin", dtype=np.uint8, mode="r")
        if (folder / "keys.bin").stat().st_size
        else np.zeros(0, np.uint8)
    )
    return blob, np.load(folder / "keys.off.npy", mmap_mode="r")
