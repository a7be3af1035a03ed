"""Snapshots of a sharded collection: one engine snapshot per shard at one cut (writes
wait while they are taken), removed and restored shard by shard."""

from __future__ import annotations

import shutil
from typing import Any

from lamina.errors import Unavailable
from lamina.types import SnapshotInfo

from .shards import Shards


class ShardSnapshots(Shards):
    """Shard snapshots of a sharded collection."""

    def snapshot_shards(self) -> list[dict[str, Any]]:
        """Snapshot one replica of every shard at one cut: writes to every shard wait while
        each shard's snapshot is taken (an engine snapshot: a RocksDB checkpoint and hard
        links, quick). Returns where each shard's snapshot is."""
        ray = self._ray
        for lock in self._locks:
            lock.acquire()
        try:
            parts = []
            for shard, slots in enumerate(self._slots):
                upto = self._next[shard]
                for j, slot in enumerate(slots):
                    try:
                        if ray.get(slot.handle.wait_applied.remote(upto, 60.0)) < upto:
                            continue
                        info: SnapshotInfo = ray.get(slot.handle.snapshot.remote())
                    except ray.exceptions.RayActorError:
                        continue
                    parts.append(
                        {
                            "shard": shard,
                            "replica": j,
                            "snapshot": info.name,
                            "path": info.path,
                            "write": upto,
                            "points": info.points,
                            "size_bytes": info.size_bytes,
                        }
                    )
                    break
                else:
                    raise Unavailable(
                        f"collection {self.name!r} shard {shard}: no replica can take a snapshot now"
                    )
            return parts
        finally:
            for lock in reversed(self._locks):
                lock.release()

    def delete_shard_snapshots(self, parts: list[dict[str, Any]]) -> None:
        """Remove the shards' snapshots of a sharded snapshot."""
        for part in parts:
            slot = self._slots[part["shard"]][part["replica"]]
            try:
                self._ray.get(slot.handle.delete_snapshot.remote(part["snapshot"]))
            except Exception:
                shutil.rmtree(part["path"], ignore_errors=True)

    def restore_shards(self, parts: list[dict[str, Any]]) -> None:
        """Make every replica of every shard a copy of that shard's snapshot (a new, empty
        collection; the snapshot folders must be readable where the replicas run)."""
        ray = self._ray
        for part in parts:
            shard = part["shard"]
            with self._locks[shard]:
                ray.get([s.handle.restore.remote(part["path"], part["write"]) for s in self._slots[shard]])
                self._next[shard] = part["write"]
                self._ack(shard, part["write"])
