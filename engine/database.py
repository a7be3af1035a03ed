"""The set of collections in one data directory.

Layout::

    <data>/LOCK                       held (flock) by the one process that opens it
    <data>/collections/<name>/        one RocksDB per collection

Creating writes the new collection under a temporary name and renames it into
place; dropping renames it away before removing it. A crash at any moment leaves
either the whole collection or none of it; leftovers are swept at the next open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import IO

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.collection import Collection
from lamina.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from lamina.storage.vectorfile import fsync_path
from lamina.types import CollectionConfig
from lamina.validation import check_collection_name

log = logging.getLogger("lamina.engine")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class Database:
    """All collections of one data directory, opened in-process.

    >>> import tempfile
    >>> db = Database(tempfile.mkdtemp())
    >>> db.create_collection("docs", CollectionConfig(dim=3)).name
    'docs'
    >>> db.close()
    """

    def __init__(
        self, path: str | os.PathLike[str], *, sync_writes: bool = False, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.path = Path(path)
        self.limits = limits
        self.sync_writes = sync_writes
        self._root = self.path / "collections"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FailedPrecondition(f"cannot use {self.path} as a data directory: {exc.strerror}") from None
        self._lock_file: IO[str] | None = open(self.path / "LOCK", "a+")  # noqa: SIM115 - held open while the database is
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data directory {self.path} is in use by another Lamina process; stop it or use another directory"
            ) from None
        self._lock = threading.RLock()
        self._collections: dict[str, Collection] = {}
        try:
            for entry in sorted(self._root.iterdir()):
                if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir():
                    self._collections[entry.name] = Collection.open(
                        entry.name, entry, limits, sync=sync_writes
                    )
        except BaseException:
            self.close()  # release what was opened, and the directory lock
            raise
        log.info("opened %s with %d collection(s)", self.path, len(self._collections))

    def _check_open(self) -> None:
        if self._lock_file is None:
            raise FailedPrecondition("the database is closed")

    def create_collection(self, name: str, config: CollectionConfig) -> Collection:
        """Create a collection; AlreadyExists if the name is taken."""
        check_collection_name(name)
        if not 1 <= config.dim <= self.limits.max_dim:
            raise InvalidArgument(f"dim must be in 1..{self.limits.max_dim}, got {config.dim}")
        with self._lock:
            self._check_open()
            if name in self._collections:
                raise AlreadyExists(
                    f"collection {name!r} already exists: pick another name or delete it first"
                )
            tmp = self._root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            Collection.create(name, tmp, config, self.limits, sync=self.sync_writes).close()
            final = self._root / name
            tmp.rename(final)
            fsync_path(self._root)
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
            collection = self.get_collection(name)
            del self._collections[name]
            collection.close()
            trash = self._root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            (self._root / name).rename(trash)
            fsync_path(self._root)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("deleted collection %r", name)

    def close(self) -> None:
        """Close every collection and release the data directory."""
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
            if self._lock_file is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
