"""The sharded database: the catalog of sharded collections (``sharded.json``), their
creation and deletion, and snapshots of them (a manifest naming each shard's snapshot)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.errors import AlreadyExists, FailedPrecondition, NotFound
from lamina.storage.vectorfile import atomic_folder
from lamina.types import CollectionConfig, SnapshotInfo
from lamina.validation import check_collection_name

from ..database import (
    SNAPSHOT_FILE,
    list_snapshots,
    lock_data_directory,
    read_snapshot,
    release_data_directory,
    snapshot_name,
    snapshot_tmp,
    write_snapshot,
)
from ..embedding import complete_config
from ..protocol import DatabaseProtocol
from .catch_up import CatchUp
from .collection import ShardedCollection

CATALOG = "sharded.json"

log = logging.getLogger("lamina.sharded")


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise FailedPrecondition('sharded collections need Ray: pip install "laminadb[ray]"') from None
    if not ray.is_initialized():
        raise FailedPrecondition("call ray.init(...) first (a local Ray or a cluster address)")
    return ray


class ShardedDatabase(DatabaseProtocol):
    """The collections of one sharded data root, served by replica actors on Ray; the
    interface of the engine's ``Database`` (what the server and the embedded SDK call).
    ``ray.init(...)`` must have run in this process."""

    def __init__(
        self, path: str | os.PathLike[str], *, sync_writes: bool = True, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        """``sync_writes``: every replica fsyncs its write-ahead log on every write."""
        self.ray = ray_module()
        self.path = Path(path)
        self.limits = limits
        self.sync_writes = sync_writes
        self._lock_file: IO[str] | None = lock_data_directory(self.path)
        self._lock = threading.RLock()
        self._collections: dict[str, ShardedCollection] = {}
        self._repairs: set[tuple[str, int, int]] = set()
        self._creating: set[str] = set()  # names whose actors are starting
        self._snapshots = self.path / "snapshots"
        catalog = self._catalog()
        for entry in (self.path / "collections").iterdir():
            if entry.name not in catalog:  # created or dropped halfway
                shutil.rmtree(entry, ignore_errors=True)
        for name, config in sorted(catalog.items()):
            log.info(
                "opening sharded collection %r (%d shards x %d replicas)",
                name,
                config["shards"],
                config["replicas"],
            )
            self._collections[name] = ShardedCollection(self, name, CollectionConfig.from_dict(config))

    def _catalog(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(orjson.loads((self.path / CATALOG).read_bytes()))
        except FileNotFoundError:
            return {}

    def save_catalog(self) -> None:
        """Write every collection's settings to the catalog, durably (replaced whole)."""
        with self._lock:
            data = {n: c.config.to_dict() for n, c in self._collections.items()}
            tmp = self.path / f"{CATALOG}.tmp"
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / CATALOG)

    def create_collection(self, name: str, config: CollectionConfig) -> ShardedCollection:
        check_collection_name(name)
        config = complete_config(config)  # a model gives the dimension and indexes `document`
        with self._lock:
            self._check_open()
            if name in self._collections or name in self._creating:
                raise AlreadyExists(
                    f"collection {name!r} already exists: pick another name or delete it first"
                )
            self._creating.add(name)
        try:  # starting the actors takes seconds: requests for other collections go on meanwhile
            shutil.rmtree(self.path / "collections" / name, ignore_errors=True)
            col = ShardedCollection(self, name, config)
            with self._lock:
                if self._lock_file is None:  # closed meanwhile
                    col.close()
                    self._check_open()
                self._collections[name] = col
                self.save_catalog()
        finally:
            with self._lock:
                self._creating.discard(name)
        log.info("created collection %r: %d shards x %d replicas", name, config.shards, config.replicas)
        return col

    def get_collection(self, name: str) -> ShardedCollection:
        with self._lock:
            self._check_open()
            col = self._collections.get(name)
        if col is None:
            raise NotFound(f"collection {name!r} does not exist; create it first")
        return col

    def list_collections(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._collections)

    def delete_collection(self, name: str) -> None:
        with self._lock:
            col = self.get_collection(name)
            del self._collections[name]
            self.save_catalog()
        col.close()
        shutil.rmtree(self.path / "collections" / name, ignore_errors=True)
        log.info("dropped collection %r", name)

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """A snapshot of every shard at one cut (writes wait meanwhile): each shard's engine
        snapshot stays in its replica's data directory, and ``<data>/snapshots/<name>/<snap>/``
        holds the manifest saying where they are. Restore with ``restore_snapshot``."""
        col = self.get_collection(name)
        created = time.time()
        snap = snapshot_name(name, created)
        parts = col.snapshot_shards()
        info = SnapshotInfo(
            name,
            snap,
            str(self._snapshots / name / snap),
            created,
            sum(p["points"] for p in parts),
            sum(p["size_bytes"] for p in parts),
        )
        folder = Path(info.path)
        with atomic_folder(folder, tmp=snapshot_tmp(folder)) as tmp:
            write_snapshot(tmp, info, col.config, shards=parts)
        log.info("snapshot %s of %r: %d points over %d shards", snap, name, info.points, len(parts))
        return info

    def list_snapshots(self, name: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one collection (or of all), oldest first."""
        self._check_open()
        return list_snapshots(self._snapshots, name)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        """Remove a snapshot: every shard's part and the manifest; NotFound if there is none."""
        check_collection_name(name)
        check_collection_name(snapshot)  # same alphabet: no path tricks
        folder = self._snapshots / name / snapshot
        if not (folder / SNAPSHOT_FILE).is_file():
            raise NotFound(f"collection {name!r} has no snapshot {snapshot!r}; list_snapshots() shows them")
        parts = orjson.loads((folder / SNAPSHOT_FILE).read_bytes()).get("shards", [])
        with self._lock:
            col = self._collections.get(name)
        if col is not None:
            col.delete_shard_snapshots(parts)
        else:
            for part in parts:
                shutil.rmtree(part["path"], ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("deleted snapshot %s of %r", snapshot, name)

    def restore_snapshot(self, path: str | os.PathLike[str], name: str | None = None) -> ShardedCollection:
        """Restore a sharded snapshot (its manifest folder) as collection ``name`` (default: the
        one it was taken of), with the shards and replicas it had; AlreadyExists if the name is taken."""
        source = Path(path)
        info = read_snapshot(source)
        meta = orjson.loads((source / SNAPSHOT_FILE).read_bytes())
        if "shards" not in meta:
            raise FailedPrecondition(
                f"{source} is a snapshot of a collection on one node: restore it with `lamina restore` "
                "into a data directory, without --ray"
            )
        col = self.create_collection(name or info.collection, CollectionConfig.from_dict(meta["config"]))
        try:
            col.restore_shards(meta["shards"])
        except BaseException:
            self.delete_collection(col.name)
            raise
        log.info("restored %r from snapshot %s (%d points)", col.name, info.name, info.points)
        return col

    def repair_later(self, col: CatchUp, shard: int, j: int, dead: Any) -> None:
        """Catch a replica up in the background (one repair per replica at a time)."""
        key = (col.name, shard, j)
        with self._lock:
            if key in self._repairs:
                return
            self._repairs.add(key)

        def run() -> None:
            try:
                col._catch_up(shard, j, dead)
            except Exception:
                log.exception("catching up %s shard %d replica %d failed", col.name, shard, j)
            finally:
                with self._lock:
                    self._repairs.discard(key)

        threading.Thread(target=run, name=f"lamina-repair-{col.name}-{shard}-{j}", daemon=True).start()

    def _check_open(self) -> None:
        if self._lock_file is None:
            raise FailedPrecondition(f"database at {self.path} is closed")

    def close(self) -> None:
        with self._lock:
            if self._lock_file is None:
                return
            for col in self._collections.values():
                col.close()
            release_data_directory(self._lock_file)
            self._lock_file = None
