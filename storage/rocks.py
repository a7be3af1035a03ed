"""One RocksDB database per collection, through rocksdict.

Column families:

=========  ======================  =====================================
``meta``   name                    value
``ids``    id key (storage.keys)   row (8-byte big-endian)
``rows``   row                     id key
``vecs``   row                     float32 little-endian vector bytes
``pays``   row                     payload JSON bytes
``dead``   row                     (empty): rows deleted after they were
                                   sealed into a segment, re-applied to the
                                   segment's live mask at start
=========  ======================  =====================================

Every request becomes one ``WriteBatch``, so it is applied whole or not at all;
the write-ahead log makes an acknowledged batch survive ``kill -9`` of the
process, and ``sync=True`` fsyncs the log on each batch for power-loss safety.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
from rocksdict import Checkpoint, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from lamina.storage.keys import row_from_key, row_key

_COLUMN_FAMILIES = ("meta", "ids", "rows", "vecs", "pays", "dead")
NEXT_ROW = b"next_row"
CONFIG = b"config"
FORMAT = b"format"
FORMAT_VERSION = b"1"
SEGMENTS = b"segments"
MUTABLE_START = b"mutable_start"
FIELDS = b"fields"  # JSON list of the top-level payload keys ever written
TENANTS = b"tenants"  # multi-tenant collections: {"names": {tenant: code}, "next": code}
TENANT_FIELDS = b"tenant_fields"  # multi-tenant collections: {code: top-level payload keys of its points}


#: memtable memory of one collection (all column families together); RocksDB's default is
#: 64 MiB per column family, up to 768 MiB for our six, per collection
MEMTABLE_BUDGET = 16 << 20


def _options(*, db: bool = False) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(MEMTABLE_BUDGET // 4)
    if db:
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET)
    return opts


class CollectionStore:
    """The durable state of one collection. Not thread-safe for writes: the engine
    serialises writers; reads may run concurrently."""

    def __init__(self, path: Path, *, sync: bool = False) -> None:
        self.path = path
        self._db = Rdict(
            str(path), _options(db=True), column_families={cf: _options() for cf in _COLUMN_FAMILIES}
        )
        self._cf = {cf: self._db.get_column_family(cf) for cf in _COLUMN_FAMILIES}
        self._handle = {cf: self._db.get_column_family_handle(cf) for cf in _COLUMN_FAMILIES}
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync

    # ----------------------------------------------------------------- meta
    def get_meta(self, key: bytes) -> bytes | None:
        value = self._cf["meta"].get(key)
        return None if value is None else bytes(value)

    def put_meta(
        self, items: dict[bytes, bytes], forget_dead: Sequence[int] = (), add_dead: Sequence[int] = ()
    ) -> None:
        """Write meta keys in one batch, dropping ``forget_dead`` rows from the dead list
        (rows that a rewritten segment no longer holds) and adding ``add_dead`` (rows
        deleted while the segment that now holds them was being built)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key, value, self._handle["meta"])
        for row in forget_dead:
            batch.delete(row_key(row), self._handle["dead"])
        for row in add_dead:
            batch.put(row_key(row), b"", self._handle["dead"])
        self._db.write(batch, self._write_opts)

    # ----------------------------------------------------------------- writes
    def apply(
        self,
        id_keys: Sequence[bytes],
        first_row: int,
        vectors: bytes,
        payloads: Sequence[bytes],
        dead: Sequence[tuple[bytes, int]],
        sealed_below: int = 0,
        meta: dict[bytes, bytes] | None = None,
    ) -> None:
        """Atomically write points at rows ``first_row, first_row + 1, ...`` and drop rows.

        ``vectors`` holds the float32 rows back to back (one per id key). ``dead``
        lists (id key, row) of rows to remove; an id key that is also written keeps
        its new mapping (an upsert replacing a point). Dead rows below
        ``sealed_below`` (those in sealed segments) are recorded in the ``dead``
        column family. The row counter moves past the new rows in the same batch,
        with any ``meta`` keys.
        """
        batch = WriteBatch(raw_mode=True)
        ids_cf, rows_cf, vecs_cf, pays_cf = (self._handle[c] for c in ("ids", "rows", "vecs", "pays"))
        live_keys = set(id_keys)
        for key, row in dead:
            rk = row_key(row)
            if key not in live_keys:
                batch.delete(key, ids_cf)
            batch.delete(rk, rows_cf)
            batch.delete(rk, vecs_cf)
            batch.delete(rk, pays_cf)
            if row < sealed_below:
                batch.put(rk, b"", self._handle["dead"])
        n = len(id_keys)
        stride = len(vectors) // n if n else 0
        row_keys = np.arange(first_row, first_row + n, dtype=">u8").tobytes()
        for i, key in enumerate(id_keys):
            rk = row_keys[8 * i : 8 * i + 8]
            batch.put(key, rk, ids_cf)
            batch.put(rk, key, rows_cf)
            batch.put(rk, vectors[stride * i : stride * (i + 1)], vecs_cf)
            batch.put(rk, payloads[i], pays_cf)
        batch.put(NEXT_ROW, row_key(first_row + n), self._handle["meta"])
        for key, value in (meta or {}).items():
            batch.put(key, value, self._handle["meta"])
        self._db.write(batch, self._write_opts)

    # ----------------------------------------------------------------- reads
    def rows_of(self, id_keys: Sequence[bytes]) -> list[int | None]:
        if not id_keys:
            return []
        found = cast(list[bytes | None], self._cf["ids"].get(list(id_keys)))
        return [None if v is None else row_from_key(v) for v in found]

    def _multi_get(self, cf: str, rows: Sequence[int]) -> list[bytes | None]:
        if not rows:
            return []
        return cast(list[bytes | None], self._cf[cf].get([row_key(r) for r in rows]))

    def id_keys_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("rows", rows)

    def vectors_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("vecs", rows)

    def payloads_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("pays", rows)

    def _scan(self, cf: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self._cf[cf].iter(ReadOptions())
        if start is None:
            it.seek_to_first()
        else:
            it.seek(start)
        while it.valid():
            yield it.key(), it.value()
            it.next()

    def scan_vectors(self, start_row: int = 0) -> Iterator[tuple[int, bytes]]:
        """(row, vector bytes) of every stored row from ``start_row``, in row order."""
        for key, value in self._scan("vecs", row_key(start_row)):
            yield row_from_key(key), value

    def dead_rows(self) -> np.ndarray:
        """Rows deleted after sealing, ascending."""
        return np.array([row_from_key(key) for key, _ in self._scan("dead")], dtype=np.int64)

    def scan_payloads(self, start_row: int = 0) -> Iterator[tuple[int, bytes]]:
        """(row, payload JSON) of every stored row from ``start_row``, in row order."""
        for key, value in self._scan("pays", row_key(start_row)):
            yield row_from_key(key), value

    def scan_ids(self, start: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """(id key, row) in id order, from ``start`` (inclusive)."""
        for key, value in self._scan("ids", start):
            yield key, row_from_key(value)

    # ----------------------------------------------------------------- lifecycle
    def checkpoint(self, dest: Path) -> None:
        """Write a consistent copy of the database into the new folder ``dest`` (SST files
        are hard-linked, the rest copied): it opens as a RocksDB of its own."""
        Checkpoint(self._db).create_checkpoint(str(dest))

    def flush(self) -> None:
        self._db.flush_wal(True)

    def close(self) -> None:
        for cf in self._cf.values():
            cf.close()
        self._cf.clear()
        self._handle.clear()
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
