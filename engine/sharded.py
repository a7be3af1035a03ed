"""Sharded, replicated collections on Ray, behind the same interface as ``Database``.

A collection created with ``shards=N, replicas=R`` is split by id hash (``shard_of``)
into N shards; each shard is kept by R Ray actors (``_Replica``), each an engine
``Database`` over its own data directory::

    <root>/sharded.json                                  the catalog: name -> config
    <root>/collections/<name>/shard-<i>/replica-<j>/     one replica's data directory
        applied                                          the last write it applied

This process (the front end: ``lamina serve --ray`` or ``lamina.distributed.connect``)
routes writes by id, scatters searches to one replica of every shard and merges their
top-k. Ray places the actors, restarts a crashed one and re-sends its pending calls;
there is no protocol of our own between actors.

Consistency. The front end numbers each shard's writes (1, 2, 3, ...); a replica
applies write ``s`` only after ``s - 1`` and records ``s`` in ``applied`` after the
data is durable, so replicas apply the same writes in the same order and a write sent
again after a restart is applied once. A write is acknowledged when every replica of
its shard applied it. A read carries the highest sequence acknowledged on its shard and
a replica behind it refuses (``Behind``): the front end reads from another replica, so
every read sees every acknowledged write. A replica that comes back behind (its data
directory lost, or an actor replaced on another node) catches up: writes to that shard
wait while it copies its peer's points page by page (actor to actor, through Ray's
object store), then it carries on from the peer's sequence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.collection import Collection, check_directions, check_points, check_tenant_use
from lamina.engine.database import (
    SNAPSHOT_FILE,
    Database,
    list_snapshots,
    lock_data_directory,
    read_snapshot,
    snapshot_name,
    snapshot_tmp,
    write_snapshot,
)
from lamina.engine.embedding import complete_config
from lamina.engine.filters import compile_filter
from lamina.engine.text import fuse, fusion_depth
from lamina.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LaminaError,
    NotFound,
    Unavailable,
)
from lamina.storage.keys import id_key
from lamina.storage.vectorfile import atomic_folder
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    Filter,
    Hit,
    IndexStatus,
    Payload,
    Point,
    PointId,
    QueryPlan,
    SearchParams,
    SnapshotInfo,
    TenantInfo,
)
from lamina.validation import (
    as_matrix,
    as_query,
    check_collection_name,
    check_ids,
    check_k,
)

log = logging.getLogger("lamina.sharded")

#: one shard's part of a write: ids, vectors, payloads
Part = tuple[list[PointId], np.ndarray, list[Any] | None]
#: a write sent to a shard: (shard, its number, (replica, actor, Ray ref) per replica)
Sent = tuple[int, int, list[tuple[int, Any, Any]]]

CATALOG = "sharded.json"
APPLIED = "applied"
#: how long a replica waits for the writes before one that arrived early
REORDER_WAIT = 5.0
#: how long catching up waits for a replica actor to start (Ray may have no room for it)
START_WAIT = 120.0
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


def shard_of(point_id: PointId, shards: int) -> int:
    """The shard owning ``point_id``: CRC-32 of its canonical bytes, so every process (and
    every restart) agrees, unlike Python's salted ``hash``."""
    raw = point_id.to_bytes(8, "big") if isinstance(point_id, int) else b"s" + point_id.encode("utf-8")
    return zlib.crc32(raw) % shards


class Behind(FailedPrecondition):
    """A replica has not applied writes a request needs (it is catching up)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FailedPrecondition('sharded collections need Ray: pip install "laminadb[ray]"') from None
    if not ray.is_initialized():
        raise FailedPrecondition("call ray.init(...) first (a local Ray or a cluster address)")
    return ray


def lamina_error_of(exc: BaseException) -> BaseException:
    """The Lamina error a replica raised, without Ray's wrapping (its message is the user's)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, LaminaError) else exc


class _Replica:
    """One replica of one shard: an engine Database over its own directory (a Ray actor).

    Calls run on a few threads (the engine is thread-safe; numba kernels release the
    GIL), so a long write does not hold searches back; numbered writes are applied in
    order whatever order they arrive in."""

    def __init__(self, path: str, name: str, config: dict[str, Any], sync: bool = False) -> None:
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

    def read(self, need: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A read, refused while this replica is behind write ``need``."""
        if method not in READS:
            raise InvalidArgument(f"{method} is not a replica read")
        if self.applied < need:
            raise Behind(f"replica {self.path} has applied write {self.applied}, the read needs {need}")
        try:
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


class _Slot:
    """One replica's place: its data directory and the actor serving it now."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle


class ShardedCollection:
    """A collection split over shards of replica actors; the methods of the engine's
    ``Collection`` that the server and the SDK call, with the same arguments."""

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
        self._turn = 0
        self._closed = False
        for shard, slots in enumerate(self._slots):
            try:
                applied = [
                    a for a, _ in self._ray.get([s.handle.status.remote() for s in slots], timeout=START_WAIT)
                ]
            except self._ray.exceptions.GetTimeoutError:
                self.close()
                raise Unavailable(
                    f"collection {name!r} shard {shard}: its replicas did not start within {START_WAIT:.0f} s "
                    "(no room on the Ray cluster?)"
                ) from None
            self._next[shard] = self._acked[shard] = max(applied)
            best = slots[applied.index(max(applied))]
            self._fields.update(self._ray.get(best.handle.fields.remote()))
            for j, have in enumerate(applied):
                if have < self._acked[shard]:
                    log.info("%s shard %d replica %d is behind (%d < %d)", name, shard, j, have, max(applied))
                    self._catch_up(shard, j)

    # ------------------------------------------------------------ actors
    def _start(self, path: Path) -> _Slot:
        path.mkdir(parents=True, exist_ok=True)
        actor = self._ray.remote(
            max_restarts=-1, max_task_retries=-1, max_concurrency=8, scheduling_strategy="SPREAD"
        )(_Replica)
        return _Slot(path, actor.remote(str(path), self.name, self._inner, self._db.sync_writes))

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

    def _applied(self, slot: _Slot, shard: int) -> int:
        """The last write a replica applied, waiting up to ``START_WAIT`` for it to (re)start."""
        try:
            return int(self._ray.get(slot.handle.status.remote(), timeout=START_WAIT)[0])
        except self._ray.exceptions.GetTimeoutError:
            raise Unavailable(
                f"collection {self.name!r} shard {shard}: a replica did not start within {START_WAIT:.0f} s "
                "(no room on the Ray cluster?); writes to this shard wait for it, retry later"
            ) from None

    def _config_now(self, slot: _Slot) -> dict[str, Any]:
        """A replica's config as it is now (payload indexes may have been added since creation)."""
        info: CollectionInfo = self._ray.get(slot.handle.read.remote(0, "info", (), {}))
        return info.config.to_dict()

    # ------------------------------------------------------------ writes and reads
    def _write(self, parts: dict[int, tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Apply one write per shard on every replica; the answers (one per shard, in the
        order of ``parts``) once every replica applied its part."""
        sent = [
            self._send(shard, "write", method, args, kwargs)
            for shard, (method, args, kwargs) in parts.items()
        ]
        return [self._settle(*one) for one in sent]

    def _send(self, shard: int, method: str, *args: Any) -> Sent:
        """Number the next write of ``shard`` and send it to every replica as
        ``method(number, *args)``; under the shard's lock, so replicas receive writes in
        the order of their numbers."""
        self._check_open()
        with self._locks[shard]:
            self._next[shard] += 1
            seq = self._next[shard]
            refs = [
                (j, s.handle, getattr(s.handle, method).remote(seq, *args))
                for j, s in enumerate(self._slots[shard])
            ]
        return shard, seq, refs

    def write_parts(self, parts: Sequence[Any], tenant: str | None) -> list[Sent]:
        """Send the parts of one block of a bulk load (Ray object refs, one per shard, made
        by a reading task) to their shards as numbered upserts; ``settle`` each answer."""
        self._check_tenant(tenant, write=True)
        return [self._send(shard, "upsert_part", ref, tenant) for shard, ref in enumerate(parts)]

    def learn(self, names: Sequence[str]) -> None:
        """Tell every shard of payload keys it may not have seen (numbered writes), so that
        every shard checks filters against the same keys as one node would."""
        new = sorted(set(names) - self._fields)
        if new:
            self._write({s: ("learn_fields", (new,), {}) for s in range(self.config.shards)})
            self._fields.update(new)

    def settle(self, sent: Sent) -> int:
        """Points a sent bulk write wrote, once every replica of its shard applied it."""
        return int(self._settle(*sent) or 0)

    def _settle(self, shard: int, seq: int, refs: list[tuple[int, Any, Any]]) -> Any:
        """Wait for write ``seq`` on every replica of ``shard``: a replica that died for good
        or fell behind is caught up from a peer that applied it."""
        ray = self._ray
        answers: list[Any] = []
        error: BaseException | None = None
        for j, handle, ref in refs:
            try:
                answers.append(ray.get(ref))
            except ray.exceptions.ActorDiedError:
                self._catch_up(shard, j, dead=handle)
            except ray.exceptions.RayActorError:  # restarting: it is waited for
                self._catch_up(shard, j)
            except Exception as exc:
                cause = lamina_error_of(exc)
                if isinstance(cause, Behind):
                    self._catch_up(shard, j)
                elif isinstance(cause, LaminaError):
                    error = cause  # rejected, the same way on every replica
                else:
                    raise
        self._ack(shard, seq)  # a rejected write is numbered and done too
        if error is not None:
            raise error
        return next((a for a in answers if a is not None), 0)

    def _ack(self, shard: int, seq: int) -> None:
        with self._ack_lock:
            self._acked[shard] = max(self._acked[shard], seq)

    def _read(self, method: str, calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Send each (shard, args, kwargs) read to one replica of its shard, taking turns, all
        at once; a read whose replica is dead or behind goes to the next replica."""
        self._check_open()
        ray = self._ray
        self._turn += 1

        def send(
            shard: int, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int
        ) -> tuple[int, Any, Any]:
            slots = self._slots[shard]
            j = (self._turn + attempt) % len(slots)
            handle = slots[j].handle
            # no retry on this replica: another one answers now
            return (
                j,
                handle,
                handle.read.options(max_task_retries=0).remote(self._acked[shard], method, args, kwargs),
            )

        answers = []
        pending = [send(s, a, kw, 0) for s, a, kw in calls]
        for (shard, args, kwargs), (j, handle, ref) in zip(calls, pending, strict=True):
            attempt = 0
            while True:
                try:
                    answers.append(ray.get(ref))
                    break
                except Exception as exc:
                    cause = lamina_error_of(exc)
                    unreachable = isinstance(exc, ray.exceptions.RayActorError)  # dead, or Ray restarts it
                    if not unreachable and not isinstance(cause, Behind):
                        raise cause from None
                    if isinstance(exc, ray.exceptions.ActorDiedError):  # gone for good: replace it
                        self._db.repair_later(self, shard, j, handle)
                    elif not unreachable:  # behind: catch it up
                        self._db.repair_later(self, shard, j, None)
                    attempt += 1
                    if attempt == len(self._slots[shard]):
                        raise Unavailable(
                            f"collection {self.name!r} shard {shard}: no replica can answer now ({cause}); retry"
                        ) from None
                    j, handle, ref = send(shard, args, kwargs, attempt)
        return answers

    def _every(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._read(method, [(s, args, kwargs) for s in range(self.config.shards)])

    def _split(self, ids: Sequence[PointId]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard."""
        parts: dict[int, list[int]] = {}
        n = self.config.shards
        for pos, pid in enumerate(ids):
            parts.setdefault(shard_of(pid, n), []).append(pos)
        return parts

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")

    def _check_tenant(self, tenant: str | None, write: bool = False) -> None:
        """The engine's tenant rule, checked before anything is sent."""
        check_tenant_use(self.name, self.config.multi_tenant, tenant, write=write)

    def _check_filter(self, flt: Filter | None) -> None:
        compile_filter(flt, self._db.limits.max_filter_depth, self.config.payload_index or None)

    # ------------------------------------------------------------ the Collection interface
    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: object,
        payloads: Sequence[Payload | None] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Insert or replace points, each on its shard. Everything is checked before any shard
        is written; each shard's part is atomic and on every replica when this returns."""
        self._check_tenant(tenant, write=True)
        id_list, matrix, _ = check_points(ids, vectors, payloads, self.config.dim, self._db.limits)
        if self.config.metric == "cosine":
            check_directions(np.einsum("ij,ij->i", matrix, matrix))
        if payloads is not None:
            self.learn([key for p in payloads if isinstance(p, dict) for key in p])
        parts = {
            shard: (
                "upsert",
                (
                    [id_list[p] for p in pos],
                    matrix[pos],
                    [payloads[p] for p in pos] if payloads is not None else None,
                ),
                {"tenant": tenant},
            )
            for shard, pos in self._split(id_list).items()
        }
        return int(sum(self._write(parts)))

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Any = None, tenant: str | None = None
    ) -> int:
        """Delete by ids (each on its shard) or by filter (on every shard); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        self._check_tenant(tenant, write=True)
        parts: dict[int, tuple[str, tuple[Any, ...], dict[str, Any]]]
        if ids is not None:
            id_list = check_ids(ids, self._db.limits, unique=False)
            parts = {
                s: ("delete", ([id_list[p] for p in pos],), {"tenant": tenant})
                for s, pos in self._split(id_list).items()
            }
        else:
            self._check_filter(filter)
            parts = {
                s: ("delete", (), {"filter": filter, "tenant": tenant}) for s in range(self.config.shards)
            }
        return int(sum(self._write(parts)))

    def delete_tenant(self, tenant: str) -> int:
        """Delete a tenant on every shard; NotFound when no shard has it."""
        self._check_tenant(tenant, write=True)
        owners = {
            s for s, names in enumerate(self._every("list_tenants")) if any(t.name == tenant for t in names)
        }
        if not owners:
            raise NotFound(f"tenant {tenant!r} of collection {self.name!r} does not exist")
        return int(sum(self._write({s: ("delete_tenant", (tenant,), {}) for s in sorted(owners)})))

    def create_payload_index(self, field: str, kind: str) -> bool:
        changed = self._write(
            {s: ("create_payload_index", (field, kind), {}) for s in range(self.config.shards)}
        )
        self.config = replace(self.config, payload_index={**self.config.payload_index, field: kind})
        self._db.save_catalog()
        return any(changed)

    def drop_payload_index(self, field: str) -> bool:
        changed = self._write({s: ("drop_payload_index", (field,), {}) for s in range(self.config.shards)})
        self.config = replace(
            self.config, payload_index={f: k for f, k in self.config.payload_index.items() if f != field}
        )
        self._db.save_catalog()
        return any(changed)

    def count(self, filter: Any = None, tenant: str | None = None) -> int:
        self._check_tenant(tenant)
        return int(sum(self._every("count", filter, tenant=tenant)))

    def get(
        self,
        ids: Sequence[PointId],
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> list[Point]:
        """Points for ``ids`` in the order asked; missing ids are left out."""
        self._check_tenant(tenant)
        id_list = check_ids(ids, self._db.limits, unique=False)
        parts = self._split(id_list)
        kwargs = {"with_payload": with_payload, "with_vector": with_vector, "tenant": tenant}
        found = self._read("get", [(s, ([id_list[p] for p in pos],), kwargs) for s, pos in parts.items()])
        by_id = {p.id: p for points in found for p in points}
        return [by_id[i] for i in id_list if i in by_id]

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> tuple[list[Point], PointId | None]:
        """One page in id order, merged from every shard's page from ``offset``."""
        self._check_tenant(tenant)
        pages = self._every("scroll", limit, offset, filter, with_payload, with_vector, tenant=tenant)
        merged = sorted(((id_key(p.id), p) for points, _ in pages for p in points), key=lambda kp: kp[0])
        rest = [nxt for _, nxt in pages if nxt is not None]
        points = [p for _, p in merged[:limit]]
        if len(merged) > limit:
            return points, merged[limit][1].id
        # every shard's page fit: the next offset is the lowest id a shard has after its page
        return points, min(rest, key=id_key) if rest else None

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant with its points summed over the shards."""
        if not self.config.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant: it has no tenants")
        points: dict[str, int] = {}
        indexed: dict[str, bool] = {}
        for names in self._every("list_tenants"):
            for t in names:
                points[t.name] = points.get(t.name, 0) + t.points
                indexed[t.name] = indexed.get(t.name, False) or t.indexed
        return [TenantInfo(n, points[n], indexed[n]) for n in sorted(points)]

    def _merge(self, per_shard: list[list[Hit]], k: int) -> list[Hit]:
        hits = [h for shard_hits in per_shard for h in shard_hits]
        hits.sort(key=lambda h: h.score, reverse=self.config.metric != "l2")  # l2 scores are distances
        return hits[:k]

    def search(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """The global top ``k``: each shard's top ``k``, merged."""
        query = as_query(vector, self.config.dim)
        return self.search_batch(query[None, :], k, filter, with_payload, with_vector, params, None, tenant)[
            0
        ]

    def search_batch(
        self,
        vectors: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        alive: Callable[[], None] | None = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """Each shard answers its top ``k`` per query (all shards at once); the merge keeps
        the best ``k``. ``alive`` is checked before the scatter and before the merge."""
        self._check_tenant(tenant)
        queries = as_matrix(vectors, self.config.dim, "query vectors")
        k = check_k(k, self._db.limits)
        self._check_filter(filter)
        if alive is not None:
            alive()
        parts = self._every(
            "search_batch", queries, k, filter, with_payload, with_vector, params, tenant=tenant
        )
        if alive is not None:
            alive()
        return [self._merge(list(per_query), k) for per_query in zip(*parts, strict=True)]

    def search_explained(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> tuple[list[Hit], QueryPlan]:
        """``search`` with every shard's plan: their segment plans one after another."""
        self._check_tenant(tenant)
        answers = self._every(
            "search_explained", vector, k, filter, with_payload, with_vector, params, tenant=tenant
        )
        hits = self._merge([h for h, _ in answers], check_k(k, self._db.limits))
        plans = [p for _, p in answers]
        return hits, QueryPlan(
            segments=[s for p in plans for s in p.segments],
            indexed_fields=plans[0].indexed_fields,
            unindexed_fields=plans[0].unindexed_fields,
            hits=len(hits),
            seconds=max(p.seconds for p in plans),
        )

    def explain(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> QueryPlan:
        return self.search_explained(vector, k, filter, False, False, params, tenant)[1]

    def query(
        self,
        vector: object = None,
        text: str | None = None,
        k: int = 10,
        filter: Any = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        text_field: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """Hybrid search: the dense and the BM25 rankings are each merged over the shards
        and then fused here, as one node fuses them. BM25 weighs terms by each shard's own
        document frequencies (as most distributed engines do by default)."""
        self._check_tenant(tenant)
        if vector is None or text is None:  # one ranking: merged by score
            per_shard = self._every(
                "query",
                vector,
                text,
                k,
                filter,
                fusion,
                weights,
                text_field,
                with_payload,
                with_vector,
                params,
                tenant=tenant,
            )
            if vector is None:
                hits = [h for hs in per_shard for h in hs]
                hits.sort(key=lambda h: h.score, reverse=True)  # BM25: higher is better
                return hits[: check_k(k, self._db.limits)]
            return self._merge(per_shard, check_k(k, self._db.limits))
        k = check_k(k, self._db.limits)
        depth = fusion_depth(k, self._db.limits.max_k)
        dense = self.query(
            vector,
            None,
            depth,
            filter,
            fusion,
            weights,
            text_field,
            with_payload,
            with_vector,
            params,
            tenant,
        )
        sparse = self.query(
            None, text, depth, filter, fusion, weights, text_field, with_payload, with_vector, params, tenant
        )
        w = (1.0, 1.0) if weights is None else tuple(weights)
        by_id = {id_key(h.id): h for h in (*dense, *sparse)}
        keys = sorted(by_id)
        pos = {key: i for i, key in enumerate(keys)}
        sign = -1.0 if self.config.metric == "l2" else 1.0  # fuse expects higher-is-better scores
        rankings = [
            (
                np.array([pos[id_key(h.id)] for h in hits], np.int64),
                np.array([sign * h.score if hits is dense else h.score for h in hits], np.float32),
            )
            for hits in (dense, sparse)
        ]
        rows, scores = fuse(rankings, fusion, w, k)
        return [
            replace(by_id[keys[r]], score=float(s))
            for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def info(self) -> CollectionInfo:
        """Counts and index status summed over one replica of every shard."""
        infos: list[CollectionInfo] = self._every("info")
        st = [i.status for i in infos]
        tenants = len(self.list_tenants()) if self.config.multi_tenant else 0
        status = IndexStatus(
            segments=sum(s.segments for s in st),
            indexed_points=sum(s.indexed_points for s in st),
            mutable_points=sum(s.mutable_points for s in st),
            index_bytes=sum(s.index_bytes for s in st),
            note="; ".join(sorted({s.note for s in st if s.note})),
            optimizing=any(s.optimizing for s in st),
            tenants=tenants,
            tenant_partitions=sum(s.tenant_partitions for s in st),
        )
        return CollectionInfo(self.name, self.config, sum(i.count for i in infos), status)

    def optimize(self, timeout: float | None = None) -> bool:
        """Seal and index pending points on every replica of every shard."""
        self._check_open()
        ray = self._ray
        refs = [s.handle.read.remote(0, "optimize", (timeout,), {}) for slots in self._slots for s in slots]
        return all(ray.get(refs))

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


class ShardedDatabase:
    """The collections of one sharded data root, served by replica actors on Ray; the
    interface of the engine's ``Database`` (what the server and the embedded SDK call).
    ``ray.init(...)`` must have run in this process."""

    def __init__(
        self, path: str | os.PathLike[str], *, sync_writes: bool = False, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        """``sync_writes``: every replica fsyncs its write-ahead log on every write."""
        self.ray = _ray()
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

    def repair_later(self, col: ShardedCollection, shard: int, j: int, dead: Any) -> None:
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
            self._lock_file.close()
            self._lock_file = None


#: what the server and the embedded SDK drive: one node's Database or a sharded one
AnyDatabase = Database | ShardedDatabase
