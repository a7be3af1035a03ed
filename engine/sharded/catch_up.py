"""Catching a replica up: at start, after it died for good (a new actor over its data
directory) or when it answers that it is behind, it copies a current peer's points
while writes to its shard wait, then carries on from the peer's write number."""

from __future__ import annotations

import logging
from typing import Any

from lamina.errors import Unavailable
from lamina.types import CollectionInfo

from .shards import START_WAIT, Shards, Slot

log = logging.getLogger("lamina.sharded")


class CatchUp(Shards):
    """Bringing replicas to their shard's last write."""

    def _open_shards(self) -> None:
        """Learn each shard's last write from its replicas (waiting up to ``START_WAIT`` for
        them to start) and catch up the replicas behind it."""
        for shard, slots in enumerate(self._slots):
            try:
                applied = [
                    a for a, _ in self._ray.get([s.handle.status.remote() for s in slots], timeout=START_WAIT)
                ]
            except self._ray.exceptions.GetTimeoutError:
                self.close()
                raise Unavailable(
                    f"collection {self.name!r} shard {shard}: its replicas did not start within {START_WAIT:.0f} s "
                    "(no room on the Ray cluster?)"
                ) from None
            self._next[shard] = self._acked[shard] = max(applied)
            best = slots[applied.index(max(applied))]
            self._fields.update(self._ray.get(best.handle.fields.remote()))
            for j, have in enumerate(applied):
                if have < self._acked[shard]:
                    log.info(
                        "%s shard %d replica %d is behind (%d < %d)", self.name, shard, j, have, max(applied)
                    )
                    self._catch_up(shard, j)

    def _catch_up(self, shard: int, j: int, dead: Any = None) -> None:
        """Bring replica ``j`` of ``shard`` to the shard's last write, copying a current
        peer; ``dead``: its actor is gone for good and is replaced first. Writes to the
        shard wait meanwhile."""
        ray = self._ray
        with self._locks[shard]:
            slot = self._slots[shard][j]
            if dead is not None and slot.handle is dead:
                log.warning(
                    "%s shard %d replica %d is gone: starting a new one over %s",
                    self.name,
                    shard,
                    j,
                    slot.path,
                )
                self._slots[shard][j] = slot = self._start(slot.path)
            upto = self._next[shard]
            try:
                if self._applied(slot, shard) >= upto:
                    return
            except ray.exceptions.ActorDiedError:  # gone for good (a restarting one is waited for)
                self._slots[shard][j] = slot = self._start(slot.path)
                if self._applied(slot, shard) >= upto:
                    return
            for k, peer in enumerate(self._slots[shard]):
                if k == j:
                    continue
                try:  # the peer finishes the writes already sent to it; no more are sent
                    have = ray.get(peer.handle.wait_applied.remote(upto, 60.0))
                except ray.exceptions.RayActorError:
                    continue
                if have >= upto:
                    log.info(
                        "%s shard %d replica %d catches up from replica %d (write %d)",
                        self.name,
                        shard,
                        j,
                        k,
                        upto,
                    )
                    ray.get(slot.handle.copy_from.remote(peer.handle, self._config_now(peer), upto))
                    return
            raise Unavailable(
                f"collection {self.name!r} shard {shard}: no replica holds write {upto}; "
                "bring back the replica's data directory or restore a snapshot"
            )

    def _applied(self, slot: Slot, shard: int) -> int:
        """The last write a replica applied, waiting up to ``START_WAIT`` for it to (re)start."""
        try:
            return int(self._ray.get(slot.handle.status.remote(), timeout=START_WAIT)[0])
        except self._ray.exceptions.GetTimeoutError:
            raise Unavailable(
                f"collection {self.name!r} shard {shard}: a replica did not start within {START_WAIT:.0f} s "
                "(no room on the Ray cluster?); writes to this shard wait for it, retry later"
            ) from None

    def _config_now(self, slot: Slot) -> dict[str, Any]:
        """A replica's config as it is now (payload indexes may have been added since creation)."""
        info: CollectionInfo = self._ray.get(slot.handle.read.remote(0, "info", (), {}))
        return info.config.to_dict()
