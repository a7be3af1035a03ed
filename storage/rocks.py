"""One RocksDB database per collection, through rocksdict.

Column families:

=========  ======================  =====================================
``meta``   name                    value
``ids``    id key (storage.keys)   row (8-byte big-endian)
``rows``   row                     id key
``vecs``   row                     float32 little-endian vector bytes (unsealed rows;
                                   sealed rows' vectors live in their segment, see
                                   engine/segments.py)
``pays``   row                     payload JSON bytes
``dead``   row                     (empty): rows deleted after they were
                                   sealed into a segment, re-applied to the
                                   segment's live mask at start
=========  ======================  =====================================

Every request is applied whole or not at all: one ``WriteBatch``, or, for a large upsert,
its new rows' vectors and payloads in chunks past the row counter and then one batch that
makes them points (``apply``; rows a crash left past the counter are swept at open). The
write-ahead log makes an acknowledged batch survive ``kill -9`` of the process, and
``sync=True`` fsyncs the log on each write for power-loss safety.

A batch that fails (disk full, file system turned read-only) is not applied, and
RocksDB refuses every later write until it is reopened: the store keeps serving reads
from the open database and, at the next write once the disk can take it again,
reopens it (``stall`` says why writes are refused meanwhile). A read-only store
(``read_only=True``) opens RocksDB read-only through a folder of links beside it,
since rocksdict writes a file of its own into the folder it opens.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from rocksdict import (
    AccessType,
    Checkpoint,
    DBRecoveryMode,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from lamina.errors import LaminaError, ReadOnly
from lamina.storage.faults import storage_errors, writable
from lamina.storage.keys import row_from_key, row_key

log = logging.getLogger("lamina.storage")
T = TypeVar("T")

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
#: write-ahead log kept by one collection: past it RocksDB flushes the column families that
#: hold the oldest log (the small ids / rows / payload memtables would otherwise keep every log
#: of a bulk load, with every vector in it, long after a seal dropped those vectors)
MAX_WAL = 2 * MEMTABLE_BUDGET
#: an upsert whose vectors and payloads take more than this is written in chunks of about
#: this size (see ``CollectionStore.apply``): rocksdict holds the GIL for a whole batch, so
#: one batch of 1,000 384-d rows (1.6 MB) stopped every other thread of the process, the
#: searches among them, for 20-30 ms; a 256 KiB chunk holds it ~1-2 ms
CHUNK_BYTES = 256 << 10
#: past every row key (8 bytes): the end of a range delete of all rows from one on
_PAST_ROWS = b"\xff" * 9


def _options(*, db: bool = False) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(MEMTABLE_BUDGET // 4)
    if db:
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET)
        opts.set_max_total_wal_size(MAX_WAL)
    return opts


class CollectionStore:
    """The durable state of one collection. Not thread-safe for writes: the engine
    serialises writers; reads may run concurrently."""

    def __init__(
        self, path: Path, *, sync: bool = False, read_only: bool = False, paranoid: bool = False
    ) -> None:
        self.path = path
        self._paranoid = paranoid  # lamina check: refuse a write-ahead log damaged before its tail
        self.read_only = read_only
        #: why writes are refused now ("" when they are not): a full disk, a read-only file system
        self.stall = ""
        self._failed = False  # a write failed: RocksDB refuses writes until it is reopened
        self._raised = False  # an operation raised: tracebacks may hold column families
        self._swap = threading.Lock()  # held while the database is reopened
        self._shadow: Path | None = None
        self._sync = sync
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync
        self._chunk_opts = WriteOptions()  # chunks of a large write: synced by its last batch
        self._chunk_opts.sync = False
        #: called with the rows a write dropped once it is durable (``lamina serve --processes``:
        #: the writer's journal tells its followers; see engine/follower.py)
        self.after_write: Callable[[Sequence[int]], None] | None = None
        #: called between the chunks of a large write (``apply``), before its last batch; the
        #: crash tests kill the process or raise there
        self.between_chunks: Callable[[], None] | None = None
        #: called after each chunk of a large write: the engine lets searches of this process
        #: take the GIL there (engine/state.py ``_yield_to_searches``)
        self.yield_gil: Callable[[], object] | None = None
        self._open(read_only)

    def _open(self, read_only: bool) -> None:
        families = {cf: _options() for cf in _COLUMN_FAMILIES}
        with storage_errors(self.path):
            if read_only:
                self._shadow = _shadow_of(self.path)
                opts = _options(db=True)
                if self._paranoid:
                    opts.set_paranoid_checks(True)
                    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
                self._db = Rdict(
                    str(self._shadow),
                    opts,
                    column_families=families,
                    access_type=AccessType.read_only(False),
                )
            else:
                self._db = Rdict(str(self.path), _options(db=True), column_families=families)
        # replaced whole (never cleared) on reopen: a reader holding the old one retries
        self._cf = {cf: self._db.get_column_family(cf) for cf in _COLUMN_FAMILIES}
        self._handle = {cf: self._db.get_column_family_handle(cf) for cf in _COLUMN_FAMILIES}

    # ----------------------------------------------------------------- faults
    def check_writable(self) -> None:
        """Raise the error a write would meet now (read-only store, full disk, read-only
        file system); after a failed write, reopen RocksDB once the disk can take writes."""
        if self.read_only:
            raise ReadOnly(
                f"{self.path} is open read-only (lamina serve --read-only, or its file system was "
                "read-only at start): writes are refused, reads are served"
            )
        if not self._failed:
            return
        problem = writable(self.path)
        if problem is not None:
            self.stall = str(problem)
            raise problem
        with self._swap:
            self._release()
            try:
                self._open(False)
            except LaminaError as exc:  # still cannot write: keep serving reads
                self.stall = str(exc)
                self._open(True)
                self.read_only = False  # not by choice: retried at the next write
                raise
        self._failed = False
        self.stall = ""
        log.info("%s takes writes again: RocksDB reopened", self.path)

    def write_stall(self, fault: LaminaError | None = None) -> str:
        """Why writes are refused now ("" when they are not): read-only, a full or read-only
        disk met by a write (or by the optimizer: ``fault``)."""
        if self.read_only:
            return f"read-only: {self.path} is served read-only"
        return self.stall or (str(fault) if fault is not None else "")

    def sequence(self) -> int:
        """RocksDB's last applied sequence number (every write applied so far is at or below it)."""
        return int(self._db.latest_sequence_number())

    def _write(self, batch: WriteBatch, opts: WriteOptions | None = None) -> None:
        """Apply one batch whole, or raise the typed error and apply none of it."""
        self.check_writable()
        try:
            with storage_errors(self.path):
                self._db.write(batch, self._write_opts if opts is None else opts)
        except LaminaError as exc:
            self._failed = self._raised = True
            self.stall = str(exc)
            log.warning("write to %s refused: %s", self.path, str(exc))  # not exc: its frames hold RocksDB
            raise

    def _reading(self, read: Callable[[dict[str, Rdict]], T]) -> T:
        """``read(column families)``; repeated once if the database was reopened meanwhile."""
        cfs = self._cf
        try:
            with storage_errors(self.path):
                return read(cfs)
        except Exception:
            self._raised = True
            if cfs is self._cf and not self._swap.locked():
                raise
        with self._swap, storage_errors(self.path):
            return read(self._cf)

    # ----------------------------------------------------------------- meta
    def get_meta(self, key: bytes) -> bytes | None:
        value = self._reading(lambda cfs: cfs["meta"].get(key))
        return None if value is None else bytes(value)

    def put_meta(
        self,
        items: dict[bytes, bytes],
        forget_dead: Sequence[int] = (),
        add_dead: Sequence[int] = (),
        sealed: tuple[int, int] | None = None,
        kept: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Write meta keys in one batch, dropping ``forget_dead`` rows from the dead list
        (rows that a rewritten segment no longer holds) and adding ``add_dead`` (rows
        deleted while the segment that now holds them was being built). ``sealed``: rows
        [lo, hi) that a segment now holds, whose vectors are dropped in the same batch
        (the segment's file is their one copy) but for the (row, vector) pairs ``kept``
        (vectors the segment cannot give back bit for bit)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key, value, self._handle["meta"])
        for row in forget_dead:
            batch.delete(row_key(row), self._handle["dead"])
        for row in add_dead:
            batch.put(row_key(row), b"", self._handle["dead"])
        if sealed is not None:
            batch.delete_range(row_key(sealed[0]), row_key(sealed[1]), self._handle["vecs"])
            for row, vector in kept:  # later in the batch than the range delete: they stay
                batch.put(row_key(row), vector, self._handle["vecs"])
        self._write(batch)
        if self.after_write is not None:
            self.after_write(add_dead)

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

        A write of more than ``CHUNK_BYTES`` puts its rows' vectors and payloads first, in
        unsynced chunks (rocksdict holds the GIL while it applies a batch, so each chunk stops
        the process's other threads only briefly), syncs the log without the GIL, and then
        writes one synced batch with the rest: the id <-> row mappings, the dead rows'
        removal, the counter and ``meta``. Until that batch is applied nothing of the write
        is a point: no id maps to its rows, every scan of rows stops at the counter, and a
        replaced point keeps its old row. A crash before it leaves rows past the counter,
        which ``sweep`` drops at the next open.
        """
        n = len(id_keys)
        # one bytes object per row, made by numpy rather than by a Python slice each
        row_keys: list[bytes] = np.arange(first_row, first_row + n, dtype=">u8").view("V8").tolist()
        rows_vectors: list[bytes] = (
            np.frombuffer(vectors, f"V{len(vectors) // n}").tolist() if n and vectors else []
        )
        ids_cf, rows_cf, vecs_cf, pays_cf = (self._handle[c] for c in ("ids", "rows", "vecs", "pays"))
        batch = WriteBatch(raw_mode=True)
        chunked = len(vectors) + sum(map(len, payloads)) > CHUNK_BYTES
        if chunked:
            held = 0
            for i, (rk, vector, payload) in enumerate(zip(row_keys, rows_vectors, payloads, strict=True)):
                batch.put(rk, vector, vecs_cf)
                batch.put(rk, payload, pays_cf)
                held += len(vector) + len(payload)
                if held >= CHUNK_BYTES or i == n - 1:
                    self._write(batch, self._chunk_opts)
                    batch, held = WriteBatch(raw_mode=True), 0
                    if self.yield_gil is not None:
                        self.yield_gil()
                    if self.between_chunks is not None:
                        self.between_chunks()
            if self._sync:  # the chunks' log, fsynced without the GIL: the last batch's own sync is short
                self._sync_log()
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
        for key, rk in zip(id_keys, row_keys, strict=True):
            batch.put(key, rk, ids_cf)
            batch.put(rk, key, rows_cf)
        if not chunked:
            for rk, vector, payload in zip(row_keys, rows_vectors, payloads, strict=True):
                batch.put(rk, vector, vecs_cf)
                batch.put(rk, payload, pays_cf)
        batch.put(NEXT_ROW, row_key(first_row + n), self._handle["meta"])
        for key, value in (meta or {}).items():
            batch.put(key, value, self._handle["meta"])
        del ids_cf, rows_cf, vecs_cf, pays_cf  # no frame of a failed write may hold the database
        self._write(batch)
        if self.after_write is not None:
            self.after_write([row for _, row in dead])

    def _sync_log(self) -> None:
        """fsync the write-ahead log (rocksdict releases the GIL for it, not for a synced write)."""
        try:
            with storage_errors(self.path):
                self._db.flush_wal(True)
        except LaminaError as exc:
            self._failed = self._raised = True
            self.stall = str(exc)
            log.warning("syncing the log of %s failed: %s", self.path, str(exc))
            raise

    def sweep(self, next_row: int) -> int:
        """Drop every row at or past ``next_row`` (the row counter): the vectors and payloads
        of a chunked write (``apply``) that a crash cut off before its last batch. Returns
        how many rows there were (0 and no write, usually)."""
        start = row_key(next_row)
        leftover = {row for row, _ in self.scan_vectors(next_row)} | {
            row for row, _ in self.scan_payloads(next_row)
        }
        if leftover:
            batch = WriteBatch(raw_mode=True)
            for cf in ("vecs", "pays"):
                batch.delete_range(start, _PAST_ROWS, self._handle[cf])
            self._write(batch)
        return len(leftover)

    # ----------------------------------------------------------------- reads
    def rows_of(self, id_keys: Sequence[bytes]) -> list[int | None]:
        if not id_keys:
            return []
        found = cast(list[bytes | None], self._reading(lambda cfs: cfs["ids"].get(list(id_keys))))
        return [None if v is None else row_from_key(v) for v in found]

    def _multi_get(self, cf: str, rows: Sequence[int]) -> list[bytes | None]:
        if not rows:
            return []
        keys: list[Any] = [row_key(r) for r in rows]
        return cast(list[bytes | None], self._reading(lambda cfs: cfs[cf].get(keys)))

    def id_keys_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("rows", rows)

    def vectors_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("vecs", rows)

    def payloads_of(self, rows: Sequence[int]) -> list[bytes | None]:
        return self._multi_get("pays", rows)

    def _scan(self, cf: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        with storage_errors(self.path):
            it = self._cf[cf].iter(ReadOptions())
            if start is None:
                it.seek_to_first()
            else:
                it.seek(start)
            while it.valid():
                yield it.key(), it.value()
                it.next()
            it.status()  # a scan cut short by a damaged block raises, never ends quietly

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

    def scan_rows(self, start_row: int = 0) -> Iterator[tuple[int, bytes]]:
        """(row, id key) of every live row from ``start_row``, in row order."""
        for key, value in self._scan("rows", row_key(start_row)):
            yield row_from_key(key), value

    def verify_family(self, cf: str) -> int:
        """Read every block of a column family with RocksDB's checksums verified (not through
        the block cache); returns its entries, raises DataLoss on a mismatch."""
        opts = ReadOptions()
        opts.set_verify_checksums(True)
        with storage_errors(self.path):
            it = self._cf[cf].iter(opts)
            it.seek_to_first()
            n = 0
            while it.valid():
                n += 1
                it.next()
            it.status()
        return n

    def table_files(self) -> set[str]:
        """Names of the table (.sst) files RocksDB's MANIFEST says are live."""
        with storage_errors(self.path):
            return {str(f["name"]).lstrip("/") for f in self._db.live_files()}

    def scan_ids(self, start: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """(id key, row) in id order, from ``start`` (inclusive)."""
        for key, value in self._scan("ids", start):
            yield key, row_from_key(value)

    # ----------------------------------------------------------------- lifecycle
    def checkpoint(self, dest: Path) -> None:
        """Write a consistent copy of the database into the new folder ``dest`` (SST files
        are hard-linked, the rest copied): it opens as a RocksDB of its own."""
        with storage_errors(dest):
            Checkpoint(self._db).create_checkpoint(str(dest))

    def compact_vectors(self, lo: int, hi: int) -> None:
        """Compact the vectors of rows [lo, hi) (dropped by a seal: see ``put_meta``) out of
        RocksDB's files and flush the memtables, so that the disk they held (table files and
        write-ahead logs) is freed now."""
        with storage_errors(self.path):
            self._cf["vecs"].compact_range(row_key(lo), row_key(hi))
            for family in self._cf.values():  # the logs still holding those vectors can then go
                family.flush(True)

    def flush(self) -> None:
        with storage_errors(self.path):
            self._db.flush_wal(True)

    def _release(self) -> None:
        """Close RocksDB and drop every reference to it (the column families keep it open)."""
        for handle in (*self._cf.values(), self._db):
            try:
                handle.close()
            except Exception as exc:  # a failed write or flush repeats its error here: the log holds the rest
                log.warning(
                    "closing %s: RocksDB reported %s (after a failed write; nothing acknowledged is lost)",
                    self.path,
                    exc,
                )
        self._cf = {}
        self._handle = {}
        del self._db
        if self._raised:  # frames kept by a failed call's traceback hold column families, hence the
            self._raised = False  # database; a full collection costs ~0.1-1 s in a large process
            gc.collect()

    def close(self) -> None:
        self._release()
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _shadow_of(path: Path) -> Path:
    """A temporary folder of symbolic links to the files of the RocksDB at ``path`` (and a
    copy of rocksdict's own config file, which rocksdict rewrites at every open), so that it
    opens read-only from a folder that cannot be written."""
    shadow = Path(tempfile.mkdtemp(prefix="lamina-ro-"))
    for entry in os.scandir(path):
        if entry.name == "LOCK" or entry.name.startswith("LOG") or entry.is_dir():
            continue
        if entry.name == "rocksdict-config.json":
            shutil.copyfile(entry.path, shadow / entry.name)
        else:
            os.symlink(os.path.abspath(entry.path), shadow / entry.name)
    return shadow
