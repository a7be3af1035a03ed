"""The state every part of a collection works on: the RocksDB store, the sealed
segments, the mutable segment (an in-memory float32 matrix with a live mask and the
tenant of each row), tenant counts and partitions, and the lock that serialises
writers. ``CollectionState`` loads it at open and keeps the few operations that keep
it consistent (placing and killing rows, the read snapshot); the write path, the read
path and the optimizer jobs are mixins over it (see engine/collection.py).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import orjson

from lamina.config import Limits
from lamina.errors import DataLoss, InvalidArgument, LaminaError, NotFound
from lamina.index.kernels import METRIC_IP, METRIC_L2, normalize_rows, unit_query
from lamina.index.tiers import Knobs, binary_encode, binary_thresholds
from lamina.storage.faults import Backoff
from lamina.storage.keys import id_key, id_keys, row_from_key, tenant_of_key, tenant_prefix
from lamina.storage.rocks import (
    FIELDS,
    MUTABLE_START,
    NEXT_ROW,
    SEGMENTS,
    TENANT_FIELDS,
    TENANTS,
    CollectionStore,
)
from lamina.types import CollectionConfig, FloatMatrix, Payload, PointId
from lamina.validation import check_directions, check_tenant_use

from . import bounds
from .manifest import degraded_error
from .payload import FieldIndex, MutableIndexes
from .segments import Segment, open_segments
from .tenants import Partition, TenantFields, Tenants

GROW = 1.5  # the mutable matrix grows by this factor
MIN_CAPACITY = 1024  # rows of a fresh mutable matrix
SEGMENT_DIR = "segments"  # sealed segments live in this folder of the collection
READ_ATTEMPTS = 3  # see CollectionState._read
#: once the mutable segment's live rows hold this many bytes of vectors (and at least
#: ``CODED_TAIL_ROWS`` rows), they get binary codes (one bit per dimension, cut at the median
#: of the first rows) that searches scan instead of the floats (see topk.tail_topk; a search for
#: k results uses them from 4 x its candidates, 1,600 rows at k 10). A live collection keeps a
#: tail of up to ``seal_rows`` (20,000) between seals; one query over 384-d rows, exactly / by
#: codes + rerank of 400: 2,000 rows 103 / 54 us, 4,096 rows 220 / 64 us, 20,000 rows 1,032 /
#: 126 us (docs/scale.md, session 25). Narrow vectors are cheap to scan exactly and their few
#: bits tell neighbours apart badly (48-d, 2,000 clustered rows: recall@10 0.80 by codes), so
#: they wait for more rows: 1,024 rows at 384-d and wider, 8,192 at 48-d.
CODED_TAIL_BYTES = 1_024 * 384 * 4
CODED_TAIL_ROWS = 1_024


def coded_tail_rows(dim: int) -> int:
    """Live rows of ``dim``-d vectors from which the mutable segment is coded (see above)."""
    return max(CODED_TAIL_ROWS, CODED_TAIL_BYTES // (4 * max(1, dim)))


#: a search this recent (seconds) means searches are being served: builds leave them a core
#: (optimizer/build.py) and large writes hand them the GIL between chunks (``_yield_to_searches``)
SERVING_WINDOW = 2.0
#: how long a large write sleeps between its RocksDB chunks while searches are served (seconds)
GIL_YIELD = 0.0001
T = TypeVar("T")

log = logging.getLogger("lamina.engine")


class ReadSnapshot(NamedTuple):
    """What one search reads: sealed segments, and the mutable segment's rows
    ``start .. start + len(live)`` in ``matrix``. A named tuple: one is made per search, and
    a tuple is made in one step where a frozen dataclass sets each field in turn."""

    segments: tuple[Segment, ...]
    start: int
    matrix: FloatMatrix
    live: np.ndarray
    payload: dict[str, list[FieldIndex]]
    replaced: int  # Collection._replaced when it was taken
    tcodes: np.ndarray  # multi-tenant: tenant code of each mutable row (from ``start``)
    partitions: dict[int, tuple[Partition, ...]]  # tenant code -> its HNSW partitions (main, delta)
    codes: np.ndarray  # binary codes of the mutable rows (from ``start``), valid when thresholds is set
    thresholds: FloatMatrix | None  # the cuts of those codes; None: the tail is scanned exactly
    #: taken under the lock (the last attempt of ``CollectionState._read``): nothing it holds
    #: leaves RocksDB while it is read. A published one is read while a writer may be inside its
    #: RocksDB write: a row the writer drops there is still live in it (see ``Vanished``)
    final: bool = True


class Vanished(Exception):
    """A search read a row of its snapshot that a writer holding the lock has meanwhile dropped
    from RocksDB (a delete in flight, not yet acknowledged): ``CollectionState._read`` runs it
    again rather than answer with a hit fewer, the last time under the lock."""


class PublishingLock:
    """The collection lock: a ``threading.Lock`` that, each time it is released, first calls
    ``publish`` (set once the state is loaded) while it is still held. Every change to what
    searches read is made under this lock, so the snapshot published as it is released is
    always the state as of the last release: searches read it without the lock and never
    wait for a writer (an upsert holds the lock across its RocksDB write and fsync, 30-170 ms
    per 1,000 rows under load), yet see every write that has returned."""

    __slots__ = ("_inner", "publish")

    def __init__(self) -> None:
        self._inner = threading.Lock()
        self.publish: Callable[[], None] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._inner.acquire(blocking, timeout)

    def release(self) -> None:
        try:
            if self.publish is not None:
                self.publish()
        finally:
            self._inner.release()

    def locked(self) -> bool:
        return self._inner.locked()

    def __enter__(self) -> bool:
        return self._inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class CollectionState:
    """A collection's data and the lock around it. Thread-safe: writers are serialised by
    ``_lock``, which publishes a ``ReadSnapshot`` as it is released (``PublishingLock``);
    searches read the last one published, without the lock, and scan it."""

    def __init__(self, name: str, store: CollectionStore, config: CollectionConfig, limits: Limits) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._limits = limits
        self._metric = METRIC_L2 if config.metric == "l2" else METRIC_IP
        self._lock = PublishingLock()
        self._published: ReadSnapshot | None = None  # what searches read (see _publish)
        # held (inside _lock) while a seal drops its rows' vectors from RocksDB and adds
        # the segment holding them; a reader missing a vector in both takes it to look again
        self._sealing = threading.Lock()
        self._last_read = 0.0  # time.monotonic() of the last search (or other snapshot read)
        self._nice = 0  # nice increment of index builds (LAMINA_BUILD_NICE, set as the optimizer starts)
        store.yield_gil = self._yield_to_searches
        self._closed = False
        raw = store.get_meta(NEXT_ROW)
        self._next_row = row_from_key(raw) if raw else 0
        raw = store.get_meta(MUTABLE_START)
        self._mut_start = row_from_key(raw) if raw else 0
        self._thresholds: FloatMatrix | None = None  # cuts of the mutable rows' codes (coded_tail_rows)
        self._empty_mutable(max(MIN_CAPACITY, self._next_row - self._mut_start))
        self._multi = config.multi_tenant
        self._tenants = Tenants(store.get_meta(TENANTS))
        # tenant code -> (main, [delta]) partitions; replaced, never changed: searches hold it
        self._partitions: dict[int, tuple[Partition, ...]] = {}
        self._tenant_live: dict[int, int] = {}  # tenant code -> live points
        self._segments: list[Segment] = []
        self._damaged: dict[str, str] = {}  # segment name -> why it could not be opened
        self._knob_cache: dict[tuple[int | None, float | None], Knobs] = {}
        self._segment_dir = store.path / SEGMENT_DIR
        self._mut_pidx = MutableIndexes()
        self._replaced = 0  # upserts that replaced points so far (see _read)
        self._payload_size = bounds.PayloadSize()  # what an answer's size is estimated with
        raw = store.get_meta(FIELDS)
        self._fields: set[str] = set(orjson.loads(raw)) if raw else set()
        self._load()
        if raw is None and self._next_row and not store.read_only:  # written before fields were tracked
            for _, blob in store.scan_payloads():
                payload = orjson.loads(blob)
                if isinstance(payload, dict):
                    self._fields.update(payload)
            store.put_meta({FIELDS: orjson.dumps(sorted(self._fields))})
        raw = store.get_meta(TENANT_FIELDS)
        self._tenant_fields = TenantFields(raw)  # per tenant: what its requests may learn of fields
        if raw is None and self._multi and self._next_row:  # written before they were kept per tenant
            log.info("learning the payload keys of each tenant of %r (once)", name)
            self._tenant_fields = TenantFields.learn(store, self._tenants.names)
            if not store.read_only:  # a read-only server or a follower learns them each time
                store.put_meta({TENANT_FIELDS: self._tenant_fields.encode()})
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)  # type: ignore[arg-type]  # it calls acquire/release
        self._busy = False
        self._force_seal = False
        self._sealed_last = False  # the optimizer's last step was a seal (see _optimize_step)
        self._error: str = ""
        self._fault: LaminaError | None = None  # a full or read-only disk stalls the optimizer
        self._backoff = Backoff(self._wake.set)
        self._publish()
        self._lock.publish = self._publish

    def _load(self) -> None:
        """Load the sealed segments of the manifest, re-apply deletes made after sealing,
        and rebuild the mutable segment from the vectors stored past it."""
        raw = self._store.get_meta(SEGMENTS)
        names: list[str] = orjson.loads(raw) if raw else []
        if not self._store.read_only:
            self._segment_dir.mkdir(exist_ok=True)
            for entry in self._segment_dir.iterdir():  # unfinished builds, segments replaced before a crash
                if entry.name not in names:
                    shutil.rmtree(entry, ignore_errors=True)
        self._segments, self._damaged = open_segments(self._segment_dir, names, self.config, self._metric)
        dead = self._store.dead_rows()
        for segment in self._segments:
            segment.kill(dead)
        if not self._store.read_only and (swept := self._store.sweep(self._next_row)):
            log.info(
                "%r: swept %d row(s) of a write a crash interrupted (never acknowledged)", self.name, swept
            )
        self._load_mutable()

    def _load_mutable(self) -> None:
        """Rebuild the mutable segment from the vectors stored from ``_mut_start`` up to the
        row counter (rows past it belong to a write not yet applied whole: see
        CollectionStore.apply) (and, in a multi-tenant collection, count the live points of
        each tenant)."""
        dim = self.config.dim
        block_rows: list[int] = []
        block_vecs: list[bytes] = []

        def flush() -> None:
            if block_rows:
                vecs = np.frombuffer(b"".join(block_vecs), dtype="<f4").reshape(-1, dim)
                rows = np.asarray(block_rows, dtype=np.int64)
                self._place(rows, self._prepare(vecs))
                if self._multi:
                    keys = self._store.id_keys_of(block_rows)
                    self._tcodes[rows - self._mut_start] = [tenant_of_key(k or b"") for k in keys]
                block_rows.clear()
                block_vecs.clear()

        for row, vec in self._store.scan_vectors(self._mut_start):
            if row >= self._next_row:
                break
            block_rows.append(row)
            block_vecs.append(vec)
            if len(block_rows) >= 65_536:
                flush()
        flush()
        if self.config.payload_index:
            self._index_mutable(self.config.payload_index)
        if self._multi:
            counts: dict[int, int] = {}
            n = self._next_row - self._mut_start
            parts = [s.tenant_codes_live() for s in self._segments] + [self._tcodes[:n][self._live[:n]]]
            codes, sizes = np.unique(np.concatenate(parts), return_counts=True)
            counts = {int(c): int(z) for c, z in zip(codes.tolist(), sizes.tolist(), strict=True) if c >= 0}
            self._tenant_live = counts

    def _index_mutable(self, fields: dict[str, str], into: MutableIndexes | None = None) -> None:
        """Index ``fields`` of the mutable segment's stored payloads (at start, and when an
        index is added; caller holds the lock or is the constructor) into ``into`` (default:
        the mutable segment's indexes), checking the request's deadline between blocks."""
        target = self._mut_pidx if into is None else into
        rows: list[int] = []
        payloads: list[Payload | None] = []
        for row, blob in self._store.scan_payloads(self._mut_start):
            if row >= self._next_row:
                break
            rows.append(row)
            payloads.append(orjson.loads(blob))
            if len(rows) >= 16_384:
                bounds.check()
                target.add(fields, rows, payloads)
                rows, payloads = [], []
        if rows:
            target.add(fields, rows, payloads)

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection {self.name!r} does not exist (it was deleted or the database closed)")

    def _prepare(self, vectors: FloatMatrix) -> FloatMatrix:
        """Vectors as the kernel sees them: unit length for cosine."""
        if self.config.metric != "cosine":
            return vectors
        if vectors.shape[0] == 1:  # one query: the plain search's (engine/plain.py), one call
            norm, unit = unit_query(vectors[0], True)
            if norm == 0:
                raise InvalidArgument("vector 0 is all zeros: a zero vector has no direction under cosine")
            return unit
        check_directions(np.einsum("ij,ij->i", vectors, vectors))
        return normalize_rows(vectors)

    def _serving(self) -> bool:
        """Whether searches are being served: one ran in the last ``SERVING_WINDOW`` seconds."""
        return time.monotonic() - self._last_read < SERVING_WINDOW

    def _yield_to_searches(self) -> bool:
        """Between the RocksDB chunks of a large write (storage/rocks.py ``apply``), while searches
        are being served: sleep ``GIL_YIELD`` so that a search waiting for the GIL (back from a
        kernel that released it) takes it now. Otherwise it waits for CPython's switch interval
        (5 ms) and the writer's next RocksDB call, which holds the GIL: the slowest 1% of searches
        during a 4,000 rows/s ingest (no build running) fell from 5.3 to 3.9 ms (docs/scale.md). ~6 sleeps per
        1,000 rows of 384-d; none during a load nobody searches. True if it slept."""
        if not self._serving():
            return False
        time.sleep(GIL_YIELD)
        return True

    def _empty_mutable(self, capacity: int) -> None:
        """An empty mutable segment of ``capacity`` rows (caller holds the lock or is the constructor)."""
        self._matrix: FloatMatrix = np.zeros((capacity, self.config.dim), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=np.bool_)
        self._tcodes = np.full(capacity, -1, dtype=np.int32)  # tenant code per mutable row
        self._codes = np.zeros((capacity, -(-self.config.dim // 64)), dtype=np.uint64)

    def _ensure_capacity(self, need: int) -> None:
        """Grow the mutable arrays to hold ``need`` rows (caller holds the lock)."""
        if need > self._matrix.shape[0]:
            matrix = np.zeros((max(need, int(self._matrix.shape[0] * GROW)), self.config.dim), np.float32)
            matrix[: self._matrix.shape[0]] = self._matrix
            self._grow_to(matrix)

    def _grow_to(self, matrix: FloatMatrix) -> None:
        """Make ``matrix`` (larger, holding the mutable rows) the mutable matrix, and grow the
        live mask, tenant codes and binary codes to its rows (caller holds the lock)."""
        capacity = matrix.shape[0]
        live = np.zeros(capacity, dtype=np.bool_)
        live[: self._live.shape[0]] = self._live
        tcodes = np.full(capacity, -1, dtype=np.int32)
        tcodes[: self._tcodes.shape[0]] = self._tcodes
        codes = np.zeros((capacity, self._codes.shape[1]), dtype=np.uint64)
        codes[: self._codes.shape[0]] = self._codes
        self._matrix, self._live, self._tcodes, self._codes = matrix, live, tcodes, codes

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` more mutable rows before a write takes the lock for them.
        The rows written so far are copied into the larger matrix without the lock (a row
        never changes once written: a seal replaces the matrix), and only the rows written
        meanwhile under it: growing a tail of 50,000 rows under the lock copies 75 MB and
        held searches up for hundreds of milliseconds during an ingest."""
        with self._lock:
            n = self._next_row - self._mut_start
            if n + rows <= self._matrix.shape[0]:
                return
            matrix, start = self._matrix, self._mut_start
        grown = np.zeros((max(n + rows, int(matrix.shape[0] * GROW)), self.config.dim), np.float32)
        grown[:n] = matrix[:n]
        with self._lock:
            now = self._next_row - self._mut_start
            if (
                self._mut_start != start
                or now + rows > grown.shape[0]
                or self._matrix.shape[0] >= grown.shape[0]
            ):
                return  # sealed or grown meanwhile: _place grows it under the lock if it must
            grown[n:now] = self._matrix[n:now]
            self._grow_to(grown)

    def _encode(self, prepared: FloatMatrix) -> np.ndarray | None:
        """Binary codes of ``prepared`` rows for ``_place``, made before a write takes the lock
        (None while the collection has no cuts yet: ``_place`` then makes them if due)."""
        thresholds = self._thresholds  # set once, never changed
        return None if thresholds is None else binary_encode(prepared, thresholds)

    def _place(
        self, rows: np.ndarray, prepared: FloatMatrix, code: int = -1, codes: np.ndarray | None = None
    ) -> None:
        """Write prepared vectors at global ``rows`` of the mutable segment and mark them
        live, as points of tenant ``code``, with their binary codes once the tail is coded
        (``codes``: made by ``_encode``) (caller holds the lock)."""
        if rows.size:
            local = rows - self._mut_start
            high = int(local.max()) + 1
            self._ensure_capacity(high)
            self._matrix[local] = prepared
            self._live[local] = True
            self._tcodes[local] = code
            if self._thresholds is not None:
                self._codes[local] = codes if codes is not None else binary_encode(prepared, self._thresholds)
            elif np.count_nonzero(self._live[:high]) >= (due := coded_tail_rows(self.config.dim)):
                # the cuts of the first rows serve every later row of the collection (until it reopens)
                sample = self._matrix[:high][self._live[:high]][:due]
                self._thresholds = binary_thresholds(sample, 1)
                self._codes[:high] = binary_encode(self._matrix[:high], self._thresholds)

    def _kill(self, rows: Sequence[int], code: int | None = None) -> None:
        """Hide dead global ``rows`` (of tenant ``code`` in a multi-tenant collection) from
        every segment (caller holds the lock). An upsert that replaces points counts
        ``_replaced`` itself, before it writes."""
        arr = np.asarray(rows, dtype=np.int64)
        mutable = arr[arr >= self._mut_start]
        self._live[mutable - self._mut_start] = False
        sealed = np.sort(arr[arr < self._mut_start])
        if sealed.size:
            for segment in self._segments:
                segment.kill(sealed)
            for part in self._partitions.get(code, ()) if code is not None else ():
                part.kill(sealed)
        if code is not None:
            self._tenant_live[code] = self._tenant_live.get(code, 0) - arr.size

    def _tenant(self, tenant: str | None, *, write: bool = False) -> int | None:
        """The code of the tenant a request names: None in a collection without tenants,
        -1 for a tenant that holds no points yet. A multi-tenant collection needs one."""
        check_tenant_use(self.name, self._multi, tenant, write=write)
        if tenant is None:
            return None
        return self._tenants.codes.get(tenant, -1)

    def _key(self, point_id: PointId, code: int | None) -> bytes:
        return id_key(point_id) if code is None else tenant_prefix(code) + id_key(point_id)

    def _keys(self, point_ids: Sequence[PointId], code: int | None) -> list[bytes]:
        """``_key`` of each id."""
        return id_keys(point_ids, b"" if code is None else tenant_prefix(code))

    def _stored_payloads(self, rows: np.ndarray) -> Iterator[Payload | None]:
        """Decoded payloads of global ``rows`` (None: deleted), read in blocks, between which
        the request's deadline is checked (its work stops when its client has gone)."""
        for lo in range(0, rows.size, 4_096):
            bounds.check()
            blobs = self._store.payloads_of(rows[lo : lo + 4_096].tolist())
            yield from (orjson.loads(b) if b is not None else None for b in blobs)

    def _index_segment(self, segment: Segment, name: str, kind: str) -> FieldIndex:
        """A payload index of a sealed segment built from its stored payloads."""
        payloads = self._stored_payloads(segment.rows)
        return FieldIndex.build(kind, tuple(name.split(".")), range(segment.size), payloads)

    def _mutable_count(self) -> int:
        """Live points in the mutable segment (caller holds the lock)."""
        return int(np.count_nonzero(self._live[: self._next_row - self._mut_start]))

    def _live_count(self) -> int:
        return self._mutable_count() + sum(s.live_count for s in self._segments)

    def _publish(self) -> None:
        """Make the state as it is now what searches read without the lock (called by
        ``_lock`` as it is released, so while it is held; None while the collection is closed
        or damaged: searches then take the lock and are refused)."""
        self._published = (
            None if self._closed or self._damaged else self._snapshot(locked=True)._replace(final=False)
        )

    def _snapshot(self, locked: bool = False) -> ReadSnapshot:
        """What a search reads: the snapshot published when the lock was last released (no
        wait for a writer holding it), or, ``locked`` (the caller holds the lock), the state now."""
        if not locked:
            published = self._published
            if published is not None:
                return published
            with self._lock:
                return self._snapshot(locked=True)
        self._check_open()
        if self._damaged:  # refused rather than answered without the damaged rows
            raise degraded_error(self.name, self._damaged)
        n = self._next_row - self._mut_start
        return ReadSnapshot(
            tuple(self._segments),
            self._mut_start,
            self._matrix,
            self._live[
                :n
            ],  # a view: rows past n are not in it, and kills only clear bits (as in sealed segments)
            self._mut_pidx.snapshot(),
            self._replaced,
            self._tcodes,
            self._partitions,
            self._codes,
            self._thresholds,
        )

    def _vectors_of(self, rows: Sequence[int]) -> list[bytes | None]:
        """The stored vector of each of ``rows`` (None: the row is gone): unsealed rows, and
        the few sealed rows their segment cannot give back bit for bit, from RocksDB; other
        sealed rows from their segment's file, their one copy on disk."""
        found = self._store.vectors_of(rows)
        missing = [i for i, vec in enumerate(found) if vec is None]
        if not missing:
            return found
        with self._sealing:  # a seal is either not committed or its segment is in the list
            again = self._store.vectors_of([rows[i] for i in missing])
            segments = self._segments
        cosine = self.config.metric == "cosine"
        for i, vec in zip(missing, again, strict=True):
            found[i] = vec
        left = [i for i in missing if found[i] is None]
        want = np.array([rows[i] for i in left], dtype=np.int64)
        for segment in segments:
            if not left:
                break
            if not segment.size:
                continue
            pos = np.minimum(np.searchsorted(segment.rows, want), segment.size - 1)
            hit = (segment.rows[pos] == want) & segment.live[pos]
            if not hit.any():
                continue
            vectors = segment.stored_vectors(pos[hit], cosine)
            if vectors is not None:
                for at, vec in zip(np.flatnonzero(hit).tolist(), vectors, strict=True):
                    found[left[at]] = vec.astype("<f4").tobytes()
        lost = [rows[i] for i in left if found[i] is None]
        live = [r for r, k in zip(lost, self._store.id_keys_of(lost), strict=True) if k is not None]
        if live and self._damaged:
            raise degraded_error(self.name, self._damaged)  # live rows whose segment is damaged
        if live:  # never an answer quietly short of a point
            raise DataLoss(
                f"collection {self.name!r}: the vectors of {len(live)} live row(s) are in no segment "
                f"and not in RocksDB (first: row {live[0]}); run `lamina check --data DIR --deep`"
            )
        return found

    def _read(self, read: Callable[[ReadSnapshot], T]) -> T:
        """``read(snapshot)``, consistent with concurrent writes. An upsert that replaces a
        point while a search runs writes it at a row past the search's snapshot and drops its
        old row: sealed segments hide the old row at once (their live masks and graphs are
        shared, not copied), and its id and payload leave RocksDB, so the search could see
        the point nowhere. Such a read is run again; the last attempt holds the writer lock."""
        self._last_read = time.monotonic()  # searches are being served (see optimizer/build.py)
        for _ in range(READ_ATTEMPTS - 1):
            snap = self._snapshot()
            try:
                result = read(snap)
            except Vanished:
                continue
            if self._replaced == snap.replaced:
                return result
        with self._lock:
            return read(self._snapshot(locked=True))
