"""A collection: durable points in RocksDB, searched through segments.

Writes go to RocksDB first (one WriteBatch per request) and then to the mutable
segment, an in-memory float32 matrix searched exactly; a rejected request raises
before anything is written. Every write gives points fresh rows, so an upsert
that replaces a point leaves a dead row behind (a tombstone).

When the mutable segment holds ``segment_rows`` rows, a background optimizer seals
them into a ``Segment`` (vectors memory-mapped from a file, index tier in memory),
commits it to the manifest in RocksDB and drops those rows from the heap. It also
rewrites segments with many tombstones (compaction) and merges small neighbours.
Searches take a snapshot of the segment list and the mutable segment and merge the
top-k of each; readers never wait for a build.
"""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from lamina.config import Limits
from lamina.errors import FailedPrecondition
from lamina.storage.rocks import CONFIG, FORMAT, FORMAT_VERSION, CollectionStore
from lamina.types import CollectionConfig

from .admin import Admin
from .hybrid import Hybrid
from .optimizer.scheduler import Scheduler
from .protocol import CollectionProtocol
from .writes import Writes


class Collection(Writes, Hybrid, Admin, Scheduler, CollectionProtocol):
    """Engine-side collection: the parts wired together. Thread-safe: writers are
    serialised by a lock; searches copy a snapshot under the lock and then scan without it.

    - state (engine/state.py): the store, sealed segments, mutable segment, lock, snapshots
    - writes (engine/writes.py): upsert, delete, delete_tenant
    - reads (engine/reads.py, planner.py, tenancy.py, topk.py): count, get, scroll, search
    - hybrid (engine/hybrid.py): query (dense + BM25)
    - admin (engine/admin.py): payload indexes, info, snapshot
    - optimizer (engine/optimizer/): seal, compaction, payload-index and tenant-graph builds
    """

    def __init__(self, name: str, store: CollectionStore, config: CollectionConfig, limits: Limits) -> None:
        super().__init__(name, store, config, limits)
        self._start_optimizer()

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls, name: str, path: Path, config: CollectionConfig, limits: Limits, *, sync: bool
    ) -> Collection:
        store = CollectionStore(path, sync=sync)
        store.put_meta({FORMAT: FORMAT_VERSION, CONFIG: orjson.dumps(config.to_dict())})
        return cls(name, store, config, limits)

    @classmethod
    def open(cls, name: str, path: Path, limits: Limits, *, sync: bool) -> Collection:
        if not (path / "CURRENT").exists():  # not a RocksDB: do not create one in a stranger's folder
            raise FailedPrecondition(f"{path} holds no Lamina collection: move it out of the data directory")
        store = CollectionStore(path, sync=sync)
        raw = store.get_meta(CONFIG)
        if raw is None:
            store.close()
            raise FailedPrecondition(
                f"{path} holds no Lamina collection config: move it out of the data directory"
            )
        return cls(name, store, CollectionConfig.from_dict(orjson.loads(raw)), limits)

    def close(self) -> None:
        """Stop the optimizer (a build in progress ends within a chunk of rows; its rows stay
        in the write-ahead log and are sealed again at the next open) and close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._optimizer is not threading.current_thread():
            self._optimizer.join()
        self._store.close()
