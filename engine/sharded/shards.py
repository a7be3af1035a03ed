"""The front end's hold on a sharded collection: its replica actors by shard (slots),
the last write numbered and acknowledged on each shard, the payload keys the shards
know; starting actors, health and closing."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import FailedPrecondition
from lamina.types import CollectionConfig, Filter
from lamina.validation import check_tenant_use

from ..filters import compile_filter
from .replica import Replica

if TYPE_CHECKING:
    from .database import ShardedDatabase

#: how long catching up waits for a replica actor to start (Ray may have no room for it)
START_WAIT = 120.0


class Slot:
    """One replica's place: its data directory and the actor serving it now."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle


class Shards:
    """The replicas of a sharded collection and the write numbers of each shard."""

    def __init__(self, db: ShardedDatabase, name: str, config: CollectionConfig) -> None:
        self._db = db
        self.name = name
        self.config = config
        self._ray = db.ray
        self._inner = replace(config, shards=1, replicas=1).to_dict()  # each replica's own config
        self._folder = db.path / "collections" / name
        self._slots = [
            [self._start(self._folder / f"shard-{i}" / f"replica-{j}") for j in range(config.replicas)]
            for i in range(config.shards)
        ]
        self._locks = [threading.Lock() for _ in range(config.shards)]  # numbering and catch-up
        self._next = [0] * config.shards  # the last write numbered on each shard
        self._acked = [0] * config.shards  # the highest write acknowledged on each shard
        self._ack_lock = threading.Lock()
        self._fields: set[str] = set()  # payload keys some shard has seen; every shard knows them all
        self._turn = 0  # round robin of reads over replicas
        self._closed = False

    def _start(self, path: Path) -> Slot:
        path.mkdir(parents=True, exist_ok=True)
        actor = self._ray.remote(
            max_restarts=-1, max_task_retries=-1, max_concurrency=8, scheduling_strategy="SPREAD"
        )(Replica)
        return Slot(path, actor.remote(str(path), self.name, self._inner, self._db.sync_writes))

    def _ack(self, shard: int, seq: int) -> None:
        with self._ack_lock:
            self._acked[shard] = max(self._acked[shard], seq)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")

    def _check_tenant(self, tenant: str | None, write: bool = False) -> None:
        """The engine's tenant rule, checked before anything is sent."""
        check_tenant_use(self.name, self.config.multi_tenant, tenant, write=write)

    def _check_filter(self, flt: Filter | None) -> None:
        compile_filter(flt, self._db.limits.max_filter_depth, self.config.payload_index or None)

    def health(self, timeout: float = 2.0) -> list[tuple[int, int, bool, int]]:
        """(shard, replica, answering, writes behind the last acknowledged one) of every replica,
        each asked at once and given ``timeout`` seconds (for metrics)."""
        ray = self._ray
        asked = [
            (i, j, s.handle.status.remote())
            for i, slots in enumerate(self._slots)
            for j, s in enumerate(slots)
        ]
        out = []
        deadline = time.monotonic() + timeout
        for i, j, ref in asked:
            try:
                applied = ray.get(ref, timeout=max(0.01, deadline - time.monotonic()))[0]
                out.append((i, j, True, max(0, self._acked[i] - applied)))
            except Exception:
                out.append((i, j, False, 0))
        return out

    def replicas(self) -> list[list[tuple[int, int]]]:
        """(last write applied, live points) of every replica, by shard; points -1 when multi-tenant."""
        return [self._ray.get([s.handle.status.remote() for s in slots]) for slots in self._slots]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        handles = [s.handle for slots in self._slots for s in slots]
        for h in handles:
            with contextlib.suppress(Exception):
                ray.get(h.close.remote())
            ray.kill(h, no_restart=True)
