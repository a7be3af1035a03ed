"""The set of collections in one data directory.

Layout::

    <data>/LOCK                       held (flock) by the one process that opens it
    <data>/collections/<name>/        one RocksDB per collection
    <data>/snapshots/<name>/<snap>/   snapshots of a collection (snapshot.json + a
                                      RocksDB checkpoint and segment files)

Creating writes the new collection under a temporary name and renames it into
place; dropping renames it away before removing it. Snapshots and restores are
written the same way. A crash at any moment leaves either the whole collection (or
snapshot) or none of it; leftovers are swept at the next open.

A database opened ``read_only`` (``lamina serve --read-only``, or a data directory on a
read-only file system, found at start) writes nothing: it shares the directory lock with
other readers, opens every RocksDB read-only and refuses every write with ``ReadOnly``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any

import orjson

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.collection import Collection
from lamina.engine.embedding import complete_config
from lamina.engine.optimizer.build import build_threads_setting
from lamina.engine.protocol import DatabaseProtocol
from lamina.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ReadOnly
from lamina.index.graphview import graph_memory
from lamina.storage.faults import read_only_reason, storage_errors
from lamina.storage.vectorfile import atomic_folder, fsync_path, fsync_tree
from lamina.types import COLLECTION_NAME_RE, CollectionConfig, SnapshotInfo
from lamina.validation import check_collection_name

log = logging.getLogger("lamina.engine")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
SNAPSHOT_FILE = "snapshot.json"


def read_snapshot(folder: Path) -> SnapshotInfo:
    """The description of the snapshot in ``folder``; NotFound if it holds none."""
    try:
        meta = orjson.loads((folder / SNAPSHOT_FILE).read_bytes())
        return SnapshotInfo(
            **{f.name: meta[f.name] for f in fields(SnapshotInfo) if f.name != "path"}, path=str(folder)
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        raise NotFound(f"{folder} is not a Lamina snapshot (no readable {SNAPSHOT_FILE})") from None


def write_snapshot(folder: Path, info: SnapshotInfo, config: CollectionConfig, **extra: Any) -> None:
    """Describe a snapshot in ``folder``: what ``read_snapshot`` reads back, the collection's
    settings, and ``extra`` (a sharded snapshot: where each shard's part is)."""
    meta = {k: v for k, v in asdict(info).items() if k != "path"}  # the folder may move
    (folder / SNAPSHOT_FILE).write_bytes(orjson.dumps({**meta, "config": config.to_dict(), **extra}))


def snapshot_tmp(final: Path) -> Path:
    """Where a snapshot is written before it is renamed to ``final``: a dotted name that no
    snapshot name can refer to and that listings skip."""
    return final.with_name(f"{_TMP_PREFIX}{final.name}")


def snapshot_name(collection: str, created: float) -> str:
    """A new snapshot's name: the collection, the UTC time and a random tail."""
    return f"{collection}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created))}-{uuid.uuid4().hex[:6]}"


def _existing_name(folder: Path, name: str) -> str:
    """``name`` if it is a valid collection name, or the exact name of an entry of
    ``folder`` (left by an older version that accepted names such as ``"x\\n"``, so that
    its snapshots can still be deleted); InvalidArgument otherwise. Never a path."""
    try:
        return check_collection_name(name)
    except InvalidArgument:
        if (
            isinstance(name, str)
            and "/" not in name
            and name not in (".", "..")
            and folder.is_dir()
            and name in {entry.name for entry in folder.iterdir()}
        ):
            return name
        raise


def list_snapshots(folder: Path, name: str | None = None) -> list[SnapshotInfo]:
    """The snapshots under ``folder/<collection>/`` (of collection ``name``, or of all), oldest first."""
    if name is not None:
        check_collection_name(name)
    folders = [folder / name] if name is not None else sorted(folder.glob("*"))
    found = [
        read_snapshot(entry)
        for sub in folders
        if sub.is_dir()
        for entry in sub.iterdir()
        if not entry.name.startswith(_TMP_PREFIX) and (entry / SNAPSHOT_FILE).is_file()
    ]
    return sorted(found, key=lambda s: (s.created, s.name))


def lock_data_directory(path: Path, *, shared: bool = False) -> IO[str] | None:
    """Create ``path/collections`` and hold ``path/LOCK`` (flock) for this process: the open
    lock file, to close when done; FailedPrecondition when another process holds it.
    ``shared`` (a read-only database): create nothing, share the lock with other readers
    (None when the directory has no lock file to share)."""
    if shared:
        if not (path / "collections").is_dir():
            raise FailedPrecondition(
                f"{path} is not a Lamina data directory (no collections/ folder): a read-only server "
                "serves an existing one"
            )
        if not (path / "LOCK").exists():
            return None
    try:
        if not shared:
            (path / "collections").mkdir(parents=True, exist_ok=True)
        lock = open(path / "LOCK", "r" if shared else "a+")  # noqa: SIM115 - held open while the database is
    except OSError as exc:
        raise FailedPrecondition(f"cannot use {path} as a data directory: {exc.strerror}") from None
    try:
        fcntl.flock(lock.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        if holder == str(os.getpid()):
            raise FailedPrecondition(
                f"data directory {path} is already open in this process (pid {holder}): use that "
                "client, or lamina.connect(path), which shares it"
            ) from None
        raise FailedPrecondition(
            f"data directory {path} is in use by another Lamina process "
            f"({f'pid {holder}' if holder else 'a read-only server, or a process whose pid is unknown'}); "
            "stop it or use another directory"
        ) from None
    if not shared:  # a read-only holder opened the file read-only: only the writer is named
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))  # named in the error another process gets
        lock.flush()
    return lock


def release_data_directory(lock: IO[str]) -> None:
    """Let go of ``path/LOCK`` taken by ``lock_data_directory``. The writer clears its pid
    first, so that a process refused later (while read-only servers share the lock) is not
    told of a holder that has gone."""
    if lock.writable():
        try:
            lock.seek(0)
            lock.truncate()
            lock.flush()
        except OSError:  # a file system turned read-only: the lock goes all the same
            pass
    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    lock.close()


class _Shared:
    """A Database opened by ``open_shared`` and the number of clients using it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = 1


_shared: dict[Path, _Shared] = {}
_shared_lock = threading.Lock()


def open_shared(
    path: str | os.PathLike[str], *, sync_writes: bool = True, limits: Limits = DEFAULT_LIMITS
) -> Database:
    """The Database over ``path`` for one more client in this process: opened by the first,
    shared by the next ones (a notebook that runs ``lamina.connect(path)`` twice), closed
    by ``release_shared`` when its last client lets go. FailedPrecondition when a client
    already holds it with other settings, or another process holds it."""
    key = Path(path).resolve()
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None and entry.db._lock_file is not None:
            db = entry.db
            if db.sync_writes != sync_writes or db.limits != limits:
                raise FailedPrecondition(
                    f"data directory {path} is already open in this process with other settings "
                    f"(sync_writes={db.sync_writes}, limits); connect with the same ones, or close it first"
                )
            entry.users += 1
            return db
        db = Database(path, sync_writes=sync_writes, limits=limits)
        _shared[key] = _Shared(db)
        return db


def release_shared(db: Database) -> None:
    """One client of an ``open_shared`` Database is done; the last one closes it."""
    with _shared_lock:
        key = db.path.resolve()
        entry = _shared.get(key)
        if entry is None or entry.db is not db:
            db.close()
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del _shared[key]
    db.close()


class Database(DatabaseProtocol):
    """All collections of one data directory, opened in-process.

    >>> import tempfile
    >>> db = Database(tempfile.mkdtemp())
    >>> db.create_collection("docs", CollectionConfig(dim=3)).name
    'docs'
    >>> db.close()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_writes: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        read_only: bool = False,
    ) -> None:
        build_threads_setting()  # a bad LAMINA_BUILD_THREADS fails here, not in a background build
        graph_memory()  # the same for LAMINA_GRAPH_MEMORY, not at the first sealed segment opened
        self.path = Path(path)
        self.limits = limits
        self.sync_writes = sync_writes
        self._root = self.path / "collections"
        self._snapshots = self.path / "snapshots"
        found = read_only_reason(self.path) if self.path.exists() else ""
        if found and not read_only:
            log.warning("%s: opening it read-only (writes will be refused)", found)
        #: why this database refuses writes ("" when it takes them)
        self.read_only = "served with --read-only" if read_only else found
        self._closed = False
        self._lock_file: IO[str] | None = lock_data_directory(self.path, shared=bool(self.read_only))
        self._lock = threading.RLock()
        self._collections: dict[str, Collection] = {}
        try:
            for entry in sorted(self._root.iterdir()):
                if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                    if not self.read_only:
                        shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir():
                    if not COLLECTION_NAME_RE.fullmatch(entry.name):
                        log.warning(
                            "collection folder %r has a name that is no longer valid (made by an older "
                            "version): export it, or delete it (delete_collection accepts the name)",
                            entry.name,
                        )
                    self._collections[entry.name] = Collection.open(
                        entry.name, entry, limits, sync=sync_writes, read_only=bool(self.read_only)
                    )
            if self._snapshots.is_dir() and not self.read_only:
                for entry in self._snapshots.glob(f"*/{_TMP_PREFIX}*"):  # interrupted snapshots
                    shutil.rmtree(entry, ignore_errors=True)
        except BaseException:
            self.close()  # release what was opened, and the directory lock
            raise
        log.info("opened %s with %d collection(s)", self.path, len(self._collections))

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the database is closed")

    def _check_writable(self) -> None:
        """ReadOnly when this database writes nothing."""
        self._check_open()
        if self.read_only:
            raise ReadOnly(
                f"data directory {self.path} is read-only ({self.read_only}): collections, snapshots "
                "and points cannot be created, changed or deleted; reads are served"
            )

    def create_collection(self, name: str, config: CollectionConfig) -> Collection:
        """Create a collection; AlreadyExists if the name is taken."""
        check_collection_name(name)
        config = complete_config(config)  # a model gives the dimension and indexes `document`
        if not 1 <= config.dim <= self.limits.max_dim:
            raise InvalidArgument(f"dim must be in 1..{self.limits.max_dim}, got {config.dim}")
        if config.shards > 1 or config.replicas > 1:
            raise FailedPrecondition(
                f"shards={config.shards}, replicas={config.replicas} need a sharded Lamina: start the "
                "server with `lamina serve --ray`, or open it with lamina.distributed.connect(...)"
            )
        with self._lock:
            self._check_writable()
            if name in self._collections:
                raise AlreadyExists(
                    f"collection {name!r} already exists: pick another name or delete it first"
                )
            tmp = self._root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                with storage_errors(self._root):
                    Collection.create(name, tmp, config, self.limits, sync=self.sync_writes).close()
                    final = self._root / name
                    tmp.rename(final)
                    fsync_path(self._root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            collection = Collection.open(name, final, self.limits, sync=self.sync_writes)
            self._collections[name] = collection
            log.info("created collection %r (dim=%d, metric=%s)", name, config.dim, config.metric)
            return collection

    def get_collection(self, name: str) -> Collection:
        """The collection called ``name``; NotFound if there is none."""
        if not isinstance(name, str):
            raise InvalidArgument(f"collection name must be a string, got {type(name).__name__}")
        with self._lock:
            self._check_open()
            try:
                return self._collections[name]
            except KeyError:
                raise NotFound(f"collection {name!r} does not exist; create it first") from None

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._lock:
            self._check_open()
            return sorted(self._collections)

    def delete_collection(self, name: str) -> None:
        """Drop a collection and all its data; NotFound if there is none."""
        with self._lock:
            self._check_writable()
            collection = self.get_collection(name)
            del self._collections[name]
            collection.close()
            trash = self._root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            (self._root / name).rename(trash)
            fsync_path(self._root)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("deleted collection %r", name)

    # ------------------------------------------------------------ snapshots
    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Snapshot a collection while it keeps serving reads and writes; the snapshot
        holds every write acknowledged before it was taken."""
        self._check_writable()
        collection = self.get_collection(name)
        created = time.time()
        snap = snapshot_name(name, created)
        folder = self._snapshots / name
        with storage_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
        log.info("taking snapshot %s of %r", snap, name)
        with atomic_folder(folder / snap, tmp=snapshot_tmp(folder / snap)) as tmp:
            points = collection.snapshot(tmp / "collection")
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            info = SnapshotInfo(name, snap, str(folder / snap), created, points, size)
            write_snapshot(tmp, info, collection.config)
        log.info("snapshot %s of %r: %d points, %.1f MB", snap, name, points, size / 1e6)
        return info

    def list_snapshots(self, name: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one collection (or of all), oldest first."""
        self._check_open()
        return list_snapshots(self._snapshots, name)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        """Remove one snapshot of collection ``name``; NotFound if there is none."""
        self._check_writable()
        folder = self._snapshots / _existing_name(self._snapshots, name) / snapshot
        check_collection_name(snapshot)  # same alphabet: no path tricks
        if not (folder / SNAPSHOT_FILE).is_file():
            raise NotFound(f"collection {name!r} has no snapshot {snapshot!r}; list_snapshots() shows them")
        trash = folder.with_name(f"{_TMP_PREFIX}{snapshot}")
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted snapshot %s of %r", snapshot, name)

    def restore_snapshot(self, path: str | os.PathLike[str], name: str | None = None) -> Collection:
        """Restore the snapshot folder ``path`` as collection ``name`` (default: the name it
        was taken from); AlreadyExists if that name is taken."""
        source = Path(path)
        info = read_snapshot(source)
        if "shards" in orjson.loads((source / SNAPSHOT_FILE).read_bytes()):
            raise FailedPrecondition(
                f"{source} is a snapshot of a sharded collection: restore it with `lamina restore --ray`"
            )
        name = check_collection_name(name or info.collection)
        with self._lock:
            self._check_writable()
            if name in self._collections:
                raise AlreadyExists(
                    f"collection {name!r} already exists: restore under another name or delete it first"
                )
            tmp = self._root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                shutil.copytree(source / "collection", tmp)
                fsync_tree(tmp)
                Collection.open(name, tmp, self.limits, sync=self.sync_writes).close()  # it must open
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            final = self._root / name
            tmp.rename(final)
            fsync_path(self._root)
            collection = Collection.open(name, final, self.limits, sync=self.sync_writes)
            self._collections[name] = collection
        log.info("restored %r from snapshot %s (%d points)", name, info.name, info.points)
        return collection

    def close(self) -> None:
        """Close every collection and release the data directory."""
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
            self._closed = True
            if self._lock_file is not None:
                release_data_directory(self._lock_file)
                self._lock_file = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
