"""One replica of one shard, a Ray actor: an engine ``Database`` over its own data
directory that applies numbered writes in order, refuses reads while it is behind,
exports pages of points to a peer catching up, and takes and restores snapshots."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lamina.errors import InvalidArgument, LaminaError
from lamina.types import CollectionConfig, Payload, PointId, SnapshotInfo

from .. import bounds
from ..collection import Collection
from ..database import Database
from .routing import Behind, Part

log = logging.getLogger("lamina.sharded")


APPLIED = "applied"
#: how long a replica waits for the writes before one that arrived early
REORDER_WAIT = 5.0
#: points per page when a replica copies its peer
COPY_PAGE = 2_000
#: replica calls that change data (numbered), and those that read
WRITES = frozenset(
    {
        "upsert",
        "upsert_chunks",
        "learn_fields",
        "delete",
        "delete_tenant",
        "create_payload_index",
        "drop_payload_index",
    }
)
READS = frozenset(
    {
        "search_batch",
        "search_explained",
        "query",
        "get",
        "count",
        "scroll",
        "list_tenants",
        "info",
        "optimize",
    }
)


class Replica:
    """One replica of one shard: an engine Database over its own directory (a Ray actor).

    Calls run on a few threads (the engine is thread-safe; numba kernels release the
    GIL), so a long write does not hold searches back; numbered writes are applied in
    order whatever order they arrive in."""

    def __init__(self, path: str, name: str, config: dict[str, Any], sync: bool = True) -> None:
        if not logging.getLogger().handlers:  # a fresh Ray worker: its log reaches the server's
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.path = Path(path)
        self.name = name
        self.sync = sync
        self.db = Database(path, sync_writes=sync)
        if name not in self.db.list_collections():
            self.db.create_collection(name, CollectionConfig.from_dict(config))
        self.col = self.db.get_collection(name)
        try:
            self.applied = int((self.path / APPLIED).read_text())
        except (OSError, ValueError):
            self.applied = 0
        self._turn = threading.Condition()

    def _mark(self, seq: int) -> None:
        """Record that write ``seq`` is applied (after its data is durable)."""
        tmp = self.path / f"{APPLIED}.tmp"
        with open(tmp, "w") as f:
            f.write(str(seq))
            if self.sync:  # with synced writes the number must not outlive a power loss either
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path / APPLIED)
        self.applied = seq
        self._turn.notify_all()

    def status(self) -> tuple[int, int]:
        """(last write applied, live points; -1 when multi-tenant or while it is replaced)."""
        try:
            return self.applied, -1 if self.col.config.multi_tenant else self.col.count(None)
        except LaminaError:
            return self.applied, -1

    def write(self, seq: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Apply write ``seq`` once, after ``seq - 1``; a rejected write is numbered too
        (every replica rejects it the same way). None when it was applied before."""
        if method not in WRITES:
            raise InvalidArgument(f"{method} is not a replica write")
        target = self if method == "upsert_chunks" else self.col
        with self._turn:
            if not self._turn.wait_for(lambda: self.applied >= seq - 1, REORDER_WAIT):
                raise Behind(f"replica {self.path} has applied write {self.applied}, not {seq - 1}")
            if seq <= self.applied:
                return None  # sent again after a restart: already applied
            try:
                result = getattr(target, method)(*args, **kwargs)
            except LaminaError:
                self._mark(seq)  # refused: by every replica alike, nothing changed
                raise
            # any other failure (a disk error) leaves the write unapplied: this replica falls
            # behind and catches up from its peer
            self._mark(seq)
            return result

    def upsert_part(self, seq: int, part: Part | None, tenant: str | None) -> int:
        """Write ``seq`` of a bulk load: one shard's part of a block, a Ray object made by a
        reading task and fetched here without passing through the front end (None: the
        block had no point of this shard, the number is used all the same)."""
        return int(self.write(seq, "upsert_chunks", part or ([], None, None), {"tenant": tenant}) or 0)

    def upsert_chunks(
        self, ids: list[PointId], vectors: np.ndarray | None, payloads: list[Any] | None, tenant: str | None
    ) -> int:
        """Upsert a bulk part in requests of at most ``max_batch`` points."""
        step = self.db.limits.max_batch
        return sum(
            self.col.upsert(
                ids[lo : lo + step],
                vectors[lo : lo + step] if vectors is not None else None,
                payloads[lo : lo + step] if payloads is not None else None,
                tenant=tenant,
            )
            for lo in range(0, len(ids), step)
        )

    def wait_applied(self, seq: int, timeout: float) -> int:
        """The last write applied, once it is ``seq`` or after ``timeout`` seconds."""
        with self._turn:
            self._turn.wait_for(lambda: self.applied >= seq, timeout)
            return self.applied

    def read(
        self,
        need: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        budget: float | None = None,
    ) -> Any:
        """A read, refused while this replica is behind write ``need``; with ``budget``
        (seconds left of its request's deadline) its work stops when that runs out."""
        if method not in READS:
            raise InvalidArgument(f"{method} is not a replica read")
        if self.applied < need:
            raise Behind(f"replica {self.path} has applied write {self.applied}, the read needs {need}")
        try:
            if budget is not None:
                with bounds.running(bounds.Deadline(budget)):
                    return getattr(self.col, method)(*args, **kwargs)
            return getattr(self.col, method)(*args, **kwargs)
        except LaminaError:
            if self.applied < need:  # its collection was replaced by a copy meanwhile
                raise Behind(f"replica {self.path} started catching up during the read") from None
            raise

    def export(
        self, tenant: str | None, offset: PointId | None
    ) -> tuple[list[PointId], np.ndarray, list[Payload | None], PointId | None]:
        """One page of points (ids, vectors, payloads, next offset) for a peer catching up."""
        points, nxt = self.col.scroll(COPY_PAGE, offset, None, True, True, tenant=tenant)
        rows = [p.vector for p in points if p.vector is not None]
        vectors = np.stack(rows) if rows else np.zeros((0, self.col.config.dim), "<f4")
        return [p.id for p in points], vectors, [p.payload for p in points], nxt

    def fields(self) -> list[str]:
        """The payload keys this replica has seen."""
        return sorted(self.col.payload_fields)

    def tenants(self) -> list[str | None]:
        return [t.name for t in self.col.list_tenants()] if self.col.config.multi_tenant else [None]

    def _replace(self, make: Callable[[], Collection]) -> None:
        """Drop this replica's collection for ``make()``'s; reads are refused from the start
        (also after a crash in the middle: it then counts as empty and catches up)."""
        with self._turn:
            self._mark(0)
        self.db.delete_collection(self.name)
        self.col = make()

    def copy_from(self, source: Any, config: dict[str, Any], upto: int) -> int:
        """Replace this replica's points by those of ``source`` (a peer at write ``upto``,
        which takes no writes meanwhile), then carry on from ``upto``."""
        import ray

        started = time.perf_counter()
        self._replace(lambda: self.db.create_collection(self.name, CollectionConfig.from_dict(config)))
        copied = 0
        for tenant in ray.get(source.tenants.remote()):
            offset: PointId | None = None
            while True:
                ids, vectors, payloads, offset = ray.get(source.export.remote(tenant, offset))
                if ids:
                    copied += self.col.upsert(ids, vectors, payloads, tenant=tenant)
                if offset is None:
                    break
        self.col.learn_fields(ray.get(source.fields.remote()))  # keys known without a point here too
        with self._turn:
            self._mark(upto)
        log.info("%s caught up: %d points copied in %.1f s", self.path, copied, time.perf_counter() - started)
        return copied

    def snapshot(self) -> SnapshotInfo:
        """An engine snapshot of this replica's collection (in its data directory)."""
        return self.db.create_snapshot(self.name)

    def delete_snapshot(self, snapshot: str) -> None:
        self.db.delete_snapshot(self.name, snapshot)

    def restore(self, path: str, seq: int) -> int:
        """Replace this replica's collection by the snapshot at ``path`` (taken at write ``seq``)."""
        self._replace(lambda: self.db.restore_snapshot(path, self.name))
        with self._turn:
            self._mark(seq)
        return self.col.count(None) if not self.col.config.multi_tenant else -1

    def pid(self) -> int:
        """This actor's process id (for memory figures)."""
        return os.getpid()

    def close(self) -> None:
        self.db.close()
