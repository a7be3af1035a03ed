"""Followers: read replicas of a data directory that one writer process owns, for
``lamina serve --processes N`` (docs/architecture.md, "Serving on every core").

The writer is an ordinary ``Database`` with a ``Journal``: after every durable write of a
collection it appends the rows the write dropped, then an end mark (``-2 - seq``, where
``seq`` is RocksDB's sequence number once the write is applied), to that collection's journal file in the run directory (a folder of the supervisor's, on local
disk). It appends to a catalog file when a collection is created, dropped or restored.

A ``Follower`` opens every collection as a RocksDB *secondary* instance (it never writes,
never takes the directory lock and never runs the optimizer), opens the sealed segments
of the manifest (their vectors are memory-mapped, so the page cache holds them once for
every process) and rebuilds the mutable segment and tombstones from RocksDB. Before
answering, it compares the size of the collection's journal with what it has applied:
one ``stat``. When the journal has grown, it catches RocksDB up with the primary, places
the rows written since, kills the rows the journal lists, and re-reads the manifest when
the writer sealed or merged (keeping the segments it already has open; a folder that the
writer has meanwhile replaced and unlinked makes it catch up and read the manifest again).
Because the writer appends to the journal before it acknowledges a write, a read that
starts after the acknowledgement sees the write, whichever process answers it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
from rocksdict import AccessType, Rdict

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.collection import Collection
from lamina.engine.database import _TMP_PREFIX, _TRASH_PREFIX, Database
from lamina.engine.payload import MutableIndexes
from lamina.engine.segments import Segment
from lamina.engine.tenants import TenantFields, Tenants
from lamina.errors import FailedPrecondition, LaminaError, NotFound, Unavailable
from lamina.storage.faults import storage_errors
from lamina.storage.keys import row_from_key, tenant_of_key
from lamina.storage.rocks import (
    _COLUMN_FAMILIES,
    CONFIG,
    FIELDS,
    MUTABLE_START,
    NEXT_ROW,
    SEGMENTS,
    TENANT_FIELDS,
    TENANTS,
    CollectionStore,
    _options,
)
from lamina.types import CollectionConfig

from .manifest import DamagedSegment
from .state import MIN_CAPACITY

log = logging.getLogger("lamina.engine")
#: how long a follower tries to see in RocksDB a write that the journal lists: a secondary
#: instance's catch-up can miss the newest log records while the writer switches logs (a
#: memtable flush), and a later catch-up sees them
CATCH_UP_SECONDS = 5.0


def end_mark(seq: int) -> int:
    """The journal's mark ending the record of one write, applied at RocksDB sequence ``seq``
    (rows are >= 0, marks < 0)."""
    return -2 - seq


def mark_seq(marks: np.ndarray) -> int:
    """The highest sequence number that the end marks ``marks`` promise."""
    return int((-2 - marks).max()) if marks.size else 0


CATALOG = "catalog"  # the run directory's file that grows when collections come or go
#: how many times a follower reads the manifest again when a segment folder it names vanished
MANIFEST_ATTEMPTS = 20


def journal_path(run: Path, folder: Path) -> Path:
    """The journal of the collection stored in ``folder``: named by the folder's inode, so a
    collection dropped and created again under the same name has a journal of its own."""
    return run / f"journal-{os.stat(folder).st_ino}"


class Journal:
    """The writer's side: tells followers of each durable write (see the module's doc)."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self._files: dict[int, int] = {}  # id(store) -> open journal fd
        self._lock = threading.Lock()

    def attach(self, collection: Collection) -> None:
        """Journal every write of ``collection`` from now on."""
        store = collection._store
        fd = os.open(journal_path(self.run, store.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with self._lock:
            self._files[id(store)] = fd

        def wrote(rows: Sequence[int]) -> None:
            mark = end_mark(store.sequence())
            os.write(fd, np.asarray([*rows, mark], dtype="<i8").tobytes())

        store.after_write = wrote

    def detach(self, collection: Collection) -> None:
        with self._lock:
            fd = self._files.pop(id(collection._store), None)
        collection._store.after_write = None
        if fd is not None:
            os.close(fd)

    def catalog_changed(self) -> None:
        """A collection was created, dropped or restored."""
        with open(self.run / CATALOG, "ab") as fh:
            fh.write(b"+")

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


class JournaledDatabase(Database):
    """The writer of ``lamina serve --processes N``: a Database whose writes are journaled
    for its followers."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        run: Path,
        *,
        sync_writes: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.journal = Journal(run)
        super().__init__(path, sync_writes=sync_writes, limits=limits)
        for collection in self._collections.values():
            self.journal.attach(collection)
        self.journal.catalog_changed()

    def create_collection(self, name: str, config: CollectionConfig) -> Collection:
        collection = super().create_collection(name, config)
        self.journal.attach(collection)
        self.journal.catalog_changed()
        return collection

    def delete_collection(self, name: str) -> None:
        collection = self.get_collection(name)
        super().delete_collection(name)
        self.journal.detach(collection)
        self.journal.catalog_changed()

    def restore_snapshot(self, path: str | os.PathLike[str], name: str | None = None) -> Collection:
        collection = super().restore_snapshot(path, name)
        self.journal.attach(collection)
        self.journal.catalog_changed()
        return collection

    def close(self) -> None:
        super().close()
        self.journal.close()


def newest_log(path: Path) -> int:
    """The number of the newest write-ahead log file of the RocksDB at ``path``."""
    return max((int(e.name[:-4]) for e in os.scandir(path) if e.name.endswith(".log")), default=0)


class SecondaryStore(CollectionStore):
    """A collection's RocksDB opened as a secondary instance: it reads what the primary (the
    writer) wrote up to its last ``catch_up``, and refuses writes as a read-only store.

    A secondary's catch-up is exact while the primary appends to one write-ahead log. Across
    a log switch (a memtable flush: at a seal, or when a memtable fills) it can miss records
    the flush moved into a table file, or keep values the flush superseded (rocksdb issues
    #14444 and #15051). So when the newest log is not the one this instance last saw, it opens
    a fresh instance instead of catching up, and it repeats until no switch happened while it
    read."""

    _wal: int  # the newest log when this instance was opened

    def _open(self, read_only: bool) -> None:
        self._secondary = Path(tempfile.mkdtemp(prefix="lamina-follower-"))
        self._wal = newest_log(self.path)
        families = {cf: _options() for cf in _COLUMN_FAMILIES}
        with storage_errors(self.path):
            self._db = Rdict(
                str(self.path),
                _options(db=True),
                column_families=families,
                access_type=AccessType.secondary(str(self._secondary)),
            )
        self._cf = {cf: self._db.get_column_family(cf) for cf in _COLUMN_FAMILIES}
        self._handle = {cf: self._db.get_column_family_handle(cf) for cf in _COLUMN_FAMILIES}

    def _reopen(self) -> None:
        """A fresh secondary instance in place of this one. Reads in flight keep the old one
        (they hold its column families) until they finish; it closes when they drop it."""
        old = self._secondary
        with self._swap:
            self._open(True)
        shutil.rmtree(old, ignore_errors=True)

    def catch_up(self, seq: int = 0) -> None:
        """Read what the primary has written since the last call (its write-ahead log and
        flushed tables), at least up to its sequence number ``seq`` (caller serialises calls)."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        with storage_errors(self.path):
            for attempt in range(1, 1_000_000):
                if newest_log(self.path) != self._wal:
                    self._reopen()
                self._db.try_catch_up_with_primary()
                if newest_log(self.path) == self._wal and self._db.latest_sequence_number() >= seq:
                    if attempt > 1:
                        log.info("follower of %s: caught up at try %d", self.path, attempt)
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001 * min(attempt, 10))
        raise Unavailable(
            f"{self.path}: the follower could not catch up with the writer's journal (sequence "
            f"{self._db.latest_sequence_number()} of {seq}) in {CATCH_UP_SECONDS:.0f} s; retry the request"
        )

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._secondary, ignore_errors=True)


class FollowerCollection(Collection):
    """A collection served by a follower: the writer's state, caught up from RocksDB and the
    journal before each request (``follow``). Never writes, never optimizes."""

    journal: Path  # the writer's journal of this collection
    _applied: int  # bytes of it applied
    _config_raw: bytes  # the settings it was opened with

    @classmethod
    def follow_folder(cls, name: str, folder: Path, run: Path, limits: Limits) -> FollowerCollection:
        """Open the collection in ``folder`` as a follower of the journal in ``run``."""
        journal = journal_path(run, folder)
        applied = journal.stat().st_size if journal.exists() else 0  # what is on disk now is read below
        store = SecondaryStore(folder, read_only=True)
        raw = store.get_meta(CONFIG)
        if raw is None:
            store.close()
            raise FailedPrecondition(f"{folder} holds no Lamina collection config (yet)")
        collection = cls(name, store, CollectionConfig.from_dict(orjson.loads(raw)), limits)
        collection.journal = journal
        collection._applied = applied - applied % 8
        collection._config_raw = raw
        return collection

    def _start_optimizer(self) -> None:
        """A follower never seals, merges or builds: the writer does, and it follows."""
        self._replaced_folders = []
        self._optimizer = threading.current_thread()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._store.close()

    def behind(self) -> bool:
        """Whether the writer has journaled writes this follower has not applied."""
        try:
            return os.stat(self.journal).st_size >= self._applied + 8
        except FileNotFoundError:
            return False

    def follow(self) -> bool:
        """Apply what the writer journaled since the last call; False when the collection's
        settings changed (a payload index came or went): the caller opens it again."""
        if not self.behind():
            return True
        # _sealing as a seal holds it: a vector read sees RocksDB before the catch-up (the
        # sealed rows' vectors still there) or the segments after it, never the gap between
        with self._sealing, self._lock:
            self._check_open()
            if not self.behind():  # another request caught up meanwhile
                return True
            with open(self.journal, "rb") as fh:
                fh.seek(self._applied)
                raw = fh.read()
            raw = raw[: len(raw) - len(raw) % 8]
            store = self._store
            assert isinstance(store, SecondaryStore)
            entries = np.frombuffer(raw, dtype="<i8")
            killed = entries[entries >= 0]
            if killed.size:  # points moved or went: counted before RocksDB forgets
                # their old rows, so a search that sees either runs again (as Writes.upsert does)
                self._replaced += 1
            store.catch_up(mark_seq(entries[entries < 0]))
            if store.get_meta(CONFIG) != self._config_raw:
                return False
            self._applied += len(raw)
            self._refresh_meta()
            self._follow_segments()
            self._follow_rows(killed)
        return True

    def _refresh_meta(self) -> None:
        store = self._store
        raw = store.get_meta(FIELDS)
        self._fields = set(orjson.loads(raw)) if raw else set()
        if self._multi:
            self._tenants = Tenants(store.get_meta(TENANTS))
            raw = store.get_meta(TENANT_FIELDS)
            if raw is not None:  # else what the constructor learned from the payloads
                self._tenant_fields = TenantFields(raw)

    def _follow_segments(self) -> None:
        """Take up the writer's manifest when it changed: segments already open are kept,
        new ones opened (with the tombstones RocksDB holds for them), and the mutable
        segment rebuilt when a seal moved its start (caller holds the lock)."""
        store = self._store
        assert isinstance(store, SecondaryStore)
        for attempt in range(MANIFEST_ATTEMPTS):
            raw = store.get_meta(SEGMENTS)
            names: list[str] = orjson.loads(raw) if raw else []
            raw_start = store.get_meta(MUTABLE_START)
            start = row_from_key(raw_start) if raw_start else 0
            if names == [s.name for s in self._segments] and start == self._mut_start:
                return
            have = {s.name: s for s in self._segments}
            try:
                fresh = {
                    name: Segment.load(self._segment_dir / name, self.config, self._metric)
                    for name in names
                    if name not in have
                }
            except DamagedSegment:
                # the writer replaced a segment of that manifest and unlinked its folder: the
                # manifest naming its replacement is written; read it again
                time.sleep(0.005 * attempt)
                store.catch_up()
                continue
            if fresh:
                dead = store.dead_rows()
                for segment in fresh.values():
                    segment.kill(dead)
            self._segments = [have.get(name) or fresh[name] for name in names]
            self._damaged = {}
            if start != self._mut_start:
                self._mut_start = start
                self._rebuild_mutable()
            log.debug("follower of %r: %d segment(s), mutable from row %d", self.name, len(names), start)
            return
        raise FailedPrecondition(
            f"collection {self.name!r}: the manifest kept naming segment folders that are gone "
            f"after {MANIFEST_ATTEMPTS} reads; is another process writing the data directory?"
        )

    def _rebuild_mutable(self) -> None:
        """The mutable segment from RocksDB, from ``_mut_start`` (caller holds the lock)."""
        raw = self._store.get_meta(NEXT_ROW)
        self._next_row = row_from_key(raw) if raw else 0
        self._empty_mutable(max(MIN_CAPACITY, self._next_row - self._mut_start))
        self._mut_pidx = MutableIndexes()
        self._replaced += 1  # searches in flight read the old one: they are run again
        self._load_mutable()

    def _follow_rows(self, killed: np.ndarray) -> None:
        """Place the rows written since the last call and kill the rows the journal says
        were dropped (caller holds the lock)."""
        raw = self._store.get_meta(NEXT_ROW)
        next_row = row_from_key(raw) if raw else 0
        if next_row > self._next_row:
            rows: list[int] = []
            vecs: list[bytes] = []
            for row, vec in self._store.scan_vectors(self._next_row):
                if row >= next_row:
                    break
                rows.append(row)
                vecs.append(vec)
            self._next_row = next_row
            self._ensure_capacity(next_row - self._mut_start)
            if rows:
                arr = np.asarray(rows, dtype=np.int64)
                matrix = np.frombuffer(b"".join(vecs), dtype="<f4").reshape(-1, self.config.dim)
                self._place(arr, self._prepare(matrix))
                if self._multi:
                    keys = self._store.id_keys_of(rows)
                    self._tcodes[arr - self._mut_start] = [tenant_of_key(k or b"") for k in keys]
                if self.config.payload_index:
                    blobs = self._store.payloads_of(rows)
                    payloads = [orjson.loads(b) if b is not None else None for b in blobs]
                    self._mut_pidx.add(self.config.payload_index, rows, payloads)
        killed = killed[killed < self._next_row]
        if killed.size:
            self._kill(killed.tolist())
        if self._multi:
            self._count_tenants()

    def _count_tenants(self) -> None:
        n = self._next_row - self._mut_start
        parts = [s.tenant_codes_live() for s in self._segments] + [self._tcodes[:n][self._live[:n]]]
        codes, sizes = np.unique(np.concatenate(parts), return_counts=True)
        self._tenant_live = {
            int(c): int(z) for c, z in zip(codes.tolist(), sizes.tolist(), strict=True) if c >= 0
        }


class Follower(Database):
    """A read replica of the data directory ``path`` that a ``JournaledDatabase`` writes,
    following the journals in ``run``. Writes are refused (``ReadOnly``); the server of a
    follower forwards them to the writer (server/processes.py)."""

    def __init__(self, path: str | os.PathLike[str], run: Path, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.run = run
        self.limits = limits
        self.sync_writes = False
        self._root = self.path / "collections"
        self._snapshots = self.path / "snapshots"
        self.read_only = "a follower process of lamina serve --processes (writes go to the writer)"
        self._closed = False
        self._lock_file = None
        self._lock = threading.RLock()
        self._collections: dict[str, Collection] = {}
        self._inodes: dict[str, int] = {}
        self._catalog = -1
        if not self._root.is_dir():
            raise FailedPrecondition(f"{self.path} is not a Lamina data directory (no collections/ folder)")
        self._follow_catalog()
        log.info("following %s with %d collection(s)", self.path, len(self._collections))

    def _follow_catalog(self) -> None:
        """Open the collections the writer created since the last call and close those it
        dropped (caller holds the lock, or is the constructor)."""
        try:
            size = os.stat(self.run / CATALOG).st_size
        except FileNotFoundError:
            size = 0
        if size == self._catalog:
            return
        self._catalog = size
        present: dict[str, int] = {}
        for entry in os.scandir(self._root):
            if entry.is_dir() and not entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                present[entry.name] = entry.inode()
        for name in list(self._collections):
            if present.get(name) != self._inodes.get(name):
                self._collections.pop(name).close()
                self._inodes.pop(name, None)
        for name, inode in present.items():
            if name not in self._collections:
                self._open(name, inode)

    def _open(self, name: str, inode: int) -> FollowerCollection | None:
        try:
            collection = FollowerCollection.follow_folder(name, self._root / name, self.run, self.limits)
        except (LaminaError, FileNotFoundError) as exc:  # dropped meanwhile, or being created
            log.info("follower: collection %r not opened (%s)", name, exc)
            self._catalog = -1  # look again at the next request
            return None
        self._collections[name] = collection
        self._inodes[name] = inode
        return collection

    def get_collection(self, name: str) -> Collection:
        """The collection called ``name``, caught up with every write the writer has
        acknowledged; NotFound if there is none."""
        with self._lock:
            self._follow_catalog()
        collection = super().get_collection(name)
        assert isinstance(collection, FollowerCollection)
        if collection.behind() and not collection.follow():
            with self._lock:  # its settings changed: open it again
                if self._collections.get(name) is collection:
                    self._collections.pop(name).close()
                    inode = self._inodes.pop(name)
                    reopened = self._open(name, inode)
                    if reopened is None:
                        raise NotFound(f"collection {name!r} does not exist; create it first")
                    return reopened
            return super().get_collection(name)
        return collection

    def list_collections(self) -> list[str]:
        with self._lock:
            self._follow_catalog()
        return super().list_collections()
