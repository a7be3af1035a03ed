"""Which shard owns a point, and what travels between the front end and the replicas:
the parts of a write, a write sent to a shard, and the errors a replica answers with."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lamina.errors import FailedPrecondition, LaminaError
from lamina.types import PointId

#: one shard's part of a write: ids, vectors, payloads
Part = tuple[list[PointId], np.ndarray, list[Any] | None]
#: a write sent to a shard: (shard, its number, (replica, actor, Ray ref) per replica)
Sent = tuple[int, int, list[tuple[int, Any, Any]]]


def shard_of(point_id: PointId, shards: int) -> int:
    """The shard owning ``point_id``: CRC-32 of its canonical bytes, so every process (and
    every restart) agrees, unlike Python's salted ``hash``."""
    raw = point_id.to_bytes(8, "big") if isinstance(point_id, int) else b"s" + point_id.encode("utf-8")
    return zlib.crc32(raw) % shards


def split_by_shard(ids: Sequence[PointId], shards: int) -> dict[int, list[int]]:
    """Positions of ``ids`` per shard."""
    parts: dict[int, list[int]] = {}
    for pos, pid in enumerate(ids):
        parts.setdefault(shard_of(pid, shards), []).append(pos)
    return parts


class Behind(FailedPrecondition):
    """A replica has not applied writes a request needs (it is catching up)."""


def lamina_error_of(exc: BaseException) -> BaseException:
    """The Lamina error a replica raised, without Ray's wrapping (its message is the user's)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, LaminaError) else exc
