"""Lamina on Ray: sharded, replicated collections in this process, and parallel bulk ingest.

``lamina serve --ray`` is the usual way in (a gRPC front end over the shards; any SDK
talks to it). This module opens the same sharded data root in-process, for a Ray job
or a notebook, and loads files with Ray tasks::

    import ray, lamina.distributed as ld
    ray.init()                                  # or ray.init("ray://head:10001")
    db = ld.connect("/data/lamina")             # the SDK's Client, over Ray actors
    col = db.create_collection("docs", dim=384, shards=4, replicas=2)
    col.upsert(ids, vectors, payloads)
    hits = col.search(query, k=10, filter={"lang": "en"})
    ld.ingest(db, "docs", "embeddings.parquet")  # Ray tasks read blocks, shards write them

Install with ``pip install "laminadb[ray]"``. How it works: ``engine/sharded.py`` (``lamina.engine.sharded``) and docs/scale.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lamina.client.api import Client
from lamina.client.embedded import EmbeddedTransport
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.sharded import Part, Sent, ShardedDatabase, lamina_error_of, shard_of
from lamina.errors import FailedPrecondition, InvalidArgument
from lamina.ingest import payload_cell
from lamina.types import CollectionInfo, PointId
from lamina.validation import as_matrix, check_ids

__all__ = ["connect", "ingest", "restore_snapshot", "shard_of"]
log = logging.getLogger("lamina.ingest")

#: blocks being read or written at once during ingest
IN_FLIGHT = 4


def connect(
    root: str | os.PathLike[str], *, sync_writes: bool = True, limits: Limits = DEFAULT_LIMITS
) -> Client:
    """A ``Client`` over the sharded data root ``root``: collections created with
    ``shards=``/``replicas=`` live in Ray actors (``ray.init`` first). One process at a
    time may open a root. ``sync_writes`` (default on): replicas fsync every write (power-loss safe)."""
    db = ShardedDatabase(root, sync_writes=sync_writes, limits=limits)
    return Client(EmbeddedTransport(str(root), limits=limits, db=db), limits)


def _database(client: Client) -> ShardedDatabase:
    db = getattr(client._transport, "db", None)
    if not isinstance(db, ShardedDatabase):
        raise FailedPrecondition("this needs a client from lamina.distributed.connect(...)")
    return db


def restore_snapshot(
    client: Client, snapshot: str | os.PathLike[str], name: str | None = None
) -> CollectionInfo:
    """Restore a sharded snapshot (the folder ``Collection.snapshot()`` returned) as collection
    ``name`` (default: its own name) with its shards and replicas; the shards' snapshot folders
    must be readable where the replicas run (the same machine, or a shared filesystem)."""
    return _database(client).restore_snapshot(snapshot, name).info()


def _blocks(path: Path, rows_per_block: int) -> list[tuple[int, int]]:
    """The (first, end) row ranges a file is read in: row groups for Parquet."""
    if path.suffix == ".npy":
        n = int(np.load(path, mmap_mode="r").shape[0])
        return [(lo, min(lo + rows_per_block, n)) for lo in range(0, n, rows_per_block)]
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        out, lo = [], 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            out.append((lo, lo + n))
            lo += n
        return out
    raise InvalidArgument(f"{path}: Ray ingest reads .npy and .parquet files, not {path.suffix!r}")


def _read_block(
    path: str,
    index: int,
    lo: int,
    hi: int,
    shards: int,
    dim: int,
    id_start: int,
    id_field: str,
    vector_field: str,
    payload_field: str,
) -> tuple[Any, ...]:
    """A Ray task: read rows ``lo..hi`` (Parquet: row group ``index``), check them and split
    them by shard. Returns (row count, payload keys), then one part per shard (None when empty)."""
    file = Path(path)
    payloads: list[Any] | None = None
    if file.suffix == ".npy":
        vectors = np.asarray(np.load(file, mmap_mode="r")[lo:hi], dtype=np.float32)
        ids: list[PointId] = list(range(id_start + lo, id_start + hi))
    else:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(file).read_row_group(index).to_pydict()
        for need in (id_field, vector_field):
            if need not in table:
                raise InvalidArgument(f"{file}: no column {need!r} (columns: {', '.join(table)})")
        try:
            ids = check_ids(table.pop(id_field), DEFAULT_LIMITS)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{file} rows {lo + 1}..{hi}: {exc}") from None
        rows = table.pop(vector_field)
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != dim:
                raise InvalidArgument(
                    f"{file} rows {lo + 1}..{hi}: row {lo + r + 1}: {vector_field!r} must be a list of {dim} numbers"
                )
        vectors = np.asarray(rows, dtype=np.float32)
        payloads = _payloads(table, payload_field, f"{file} rows {lo + 1}..{hi}")
    where = f"{file} rows {lo + 1}..{hi}"
    try:
        matrix = as_matrix(vectors, dim)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    owner = np.fromiter((shard_of(i, shards) for i in ids), np.int64, len(ids))
    parts: list[Part | None] = []
    for s in range(shards):
        pos = np.flatnonzero(owner == s)
        parts.append(
            (
                [ids[p] for p in pos.tolist()],
                matrix[pos],
                [payloads[p] for p in pos.tolist()] if payloads is not None else None,
            )
            if pos.size
            else None
        )
    fields = sorted({key for p in payloads or () if isinstance(p, dict) for key in p})
    return ((hi - lo, fields), *parts)


def _payloads(table: dict[str, list[Any]], payload_field: str, where: str) -> list[Any] | None:
    """Payloads from the ``payload_field`` column (objects or JSON strings) when there is one,
    else from every other column (as ``lamina ingest`` reads Parquet)."""
    if payload_field not in table:
        return [dict(zip(table, row, strict=True)) for row in zip(*table.values(), strict=True)] or None
    out = []
    for r, value in enumerate(table[payload_field]):
        try:
            out.append(payload_cell(value, payload_field))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: row {r + 1} of the block: {exc}") from None
    return out


def ingest(
    client: Client,
    collection: str,
    path: str | os.PathLike[str],
    *,
    tenant: str | None = None,
    id_start: int = 0,
    id_field: str = "id",
    vector_field: str = "vector",
    payload_field: str = "payload",
    rows_per_block: int = 50_000,
    progress: Callable[[int, int], object] | None = None,
) -> int:
    """Load a ``.npy`` matrix (ids ``id_start``, ``id_start + 1``, ...) or a Parquet file
    (``id_field``, ``vector_field``, the payload from ``payload_field`` when that column
    exists, else from every other column; a block per row group)
    into a sharded collection. Ray tasks read and check blocks in parallel and split them
    by shard; each part goes from the task to the shard's replicas through Ray's object
    store (not through this process), as a numbered write like any other. Returns the
    points written; ``progress(done, total)`` is called as blocks are acknowledged."""
    col = _database(client).get_collection(collection)
    ray = col._ray
    file = Path(path).resolve()
    if not file.is_file():
        raise InvalidArgument(f"{file}: no such file")
    blocks = _blocks(file, rows_per_block)
    total = blocks[-1][1] if blocks else 0
    shards = col.config.shards
    reader = ray.remote(num_returns=shards + 1)(_read_block)
    started = time.perf_counter()
    done = written = 0
    col._check_tenant(tenant, write=True)
    reading: list[tuple[Any, list[Any]]] = []  # blocks being read: (row count, shard parts) refs
    writing: list[tuple[int, list[Sent]]] = []  # blocks being written: (rows, writes sent)

    def submit(index: int) -> None:
        lo, hi = blocks[index]
        refs = reader.remote(
            str(file), index, lo, hi, shards, col.config.dim, id_start, id_field, vector_field, payload_field
        )
        reading.append((refs[0], refs[1:]))

    def send() -> None:
        count_ref, parts = reading.pop(0)
        try:
            rows, fields = ray.get(count_ref)  # the task's error, before anything of the block is sent
        except Exception as exc:
            raise lamina_error_of(exc) from None
        col.learn(fields, tenant)
        writing.append((rows, col.write_parts(parts, tenant)))

    def settle() -> None:
        nonlocal done, written
        rows, sent = writing.pop(0)
        written += sum(col.settle(one) for one in sent)
        done += rows
        if progress is not None:
            progress(done, total)

    next_block = 0
    try:
        while next_block < len(blocks) or reading or writing:
            while next_block < len(blocks) and len(reading) + len(writing) < IN_FLIGHT:
                submit(next_block)
                next_block += 1
            if reading:
                send()
            if writing and (len(writing) >= IN_FLIGHT // 2 or not reading):
                settle()
    except BaseException:
        while writing:  # blocks already sent are written before the error is reported
            settle()
        raise
    seconds = time.perf_counter() - started
    log.info(
        "ingested %d points into %r in %.1f s (%.0f rows/s)",
        written,
        collection,
        seconds,
        total / max(seconds, 1e-9),
    )
    return written
