"""``lamina ingest``: read vectors and records from files, write them in parallel batches.

Readers turn .npy, .fvecs/.bvecs, ann-benchmarks .hdf5, JSON Lines and Parquet into
numbered records (line or row numbers, for error messages). ``load`` sends them as
batches over a few threads through the SDK (embedded or remote), shows a progress bar
with rate and ETA, and keeps a checkpoint of how many records are written so that an
interrupted run continues with ``--resume``; ``dry_run`` checks every record instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from lamina.config import Limits
from lamina.errors import FailedPrecondition, InvalidArgument, LaminaError, NotFound
from lamina.validation import check_tenant

#: (id, vector, payload, tenant)
Record = tuple[Any, list[float] | np.ndarray, dict[str, Any] | None, str | None]
#: (line or row number, the record or why it is bad)
Item = tuple[int, Record | str]


class MatrixRecords:
    """The rows of a matrix (a memory map or an HDF5 dataset) as records with consecutive
    ids from ``id_start``, numbered from 0; ``load`` takes them a block at a time instead."""

    def __init__(self, matrix: Any, id_start: int, close: Callable[[], None] | None = None) -> None:
        self.matrix = matrix
        self.id_start = id_start
        self.close = close

    def block(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi as float32 (read from the file now)."""
        return np.asarray(self.matrix[lo:hi], dtype=np.float32)

    def __iter__(self) -> Iterator[Item]:
        for lo in range(0, self.matrix.shape[0], 65_536):
            block = self.block(lo, lo + 65_536)
            for i in range(block.shape[0]):
                yield lo + i, (self.id_start + lo + i, block[i], None, None)
        if self.close is not None:
            self.close()


def _read_npy(path: Path, id_start: int) -> tuple[int, int, Iterable[Item]]:
    matrix = np.load(path, mmap_mode="r")
    if matrix.ndim != 2:
        raise InvalidArgument(f"{path}: expected a 2-d array of vectors, got shape {matrix.shape}")
    return matrix.shape[0], matrix.shape[1], MatrixRecords(matrix, id_start)


def _read_vecs(path: Path, id_start: int) -> tuple[int, int, Iterable[Item]]:
    """.fvecs (float32) or .bvecs (uint8) of the TEXMEX sets: each vector is its int32
    dimension followed by its components; memory-mapped, converted a row at a time."""
    item = 4 if path.suffix == ".fvecs" else 1
    size = path.stat().st_size
    if size < 4:
        raise InvalidArgument(f"{path}: empty or truncated {path.suffix} file")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    row = 4 + dim * item
    if dim <= 0 or size % row:
        raise InvalidArgument(f"{path}: not a {path.suffix} file (first dimension {dim}, {size} bytes)")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // row, row))
    dims = raw[:, :4].copy().view("<i4")[:, 0]
    if (dims != dim).any():
        bad = int(np.flatnonzero(dims != dim)[0])
        raise InvalidArgument(f"{path}: vector {bad} has dimension {int(dims[bad])}, the first has {dim}")
    body = raw[:, 4:]
    matrix = body.view("<f4") if item == 4 else body
    return raw.shape[0], dim, MatrixRecords(matrix, id_start)


def _read_jsonl(
    path: Path, id_field: str, vector_field: str, payload_field: str, tenant_field: str | None = None
) -> tuple[int, int, Iterator[Item]]:
    total = 0
    dim = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                total += 1
                if not dim:
                    try:
                        first = orjson.loads(line)
                        dim = len(first.get(vector_field) or []) if isinstance(first, dict) else 0
                    except orjson.JSONDecodeError:
                        pass

    def records() -> Iterator[Item]:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield lineno, f"not valid JSON ({exc})"
                    continue
                if not isinstance(rec, dict) or id_field not in rec or vector_field not in rec:
                    yield lineno, f"a record needs '{id_field}' and '{vector_field}' fields"
                    continue
                vector = rec[vector_field]
                if not isinstance(vector, list) or len(vector) != dim:
                    yield lineno, f"'{vector_field}' must be a list of {dim} numbers"
                    continue
                payload = rec.get(payload_field)
                if payload is not None and not isinstance(payload, dict):
                    yield lineno, f"'{payload_field}' must be a JSON object"
                    continue
                tenant = rec.get(tenant_field) if tenant_field else None
                if tenant_field and not isinstance(tenant, str):
                    yield lineno, f"'{tenant_field}' must be a tenant name (a string)"
                    continue
                yield lineno, (rec[id_field], vector, payload, tenant)

    return total, dim, records()


def payload_cell(value: Any, column: str) -> dict[str, Any] | None:
    """A Parquet payload column's cell as a payload: an object, a JSON string of one, or null."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"'{column}' is not valid JSON ({exc})") from None
    if value is not None and not isinstance(value, dict):
        raise InvalidArgument(f"'{column}' must be an object")
    return value


def _read_parquet(
    path: Path, id_field: str, vector_field: str, payload_field: str, tenant_field: str | None
) -> tuple[int, int, Iterator[Item]]:
    """Parquet (pyarrow), streamed a row group at a time: ``id_field`` and ``vector_field``
    columns (a list of numbers per row), the payload from ``payload_field`` (a struct or a
    JSON string) when that column exists, else from every other column; ``tenant_field``
    names each row's tenant."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidArgument('reading Parquet needs pyarrow: pip install "laminadb[ingest]"') from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for need in (id_field, vector_field):
        if need not in names:
            raise InvalidArgument(
                f"{path}: no column {need!r} (columns: {', '.join(names)}); map it with --{'id' if need == id_field else 'vector'}-field"
            )
    if tenant_field and tenant_field not in names:
        raise InvalidArgument(f"{path}: no tenant column {tenant_field!r} (columns: {', '.join(names)})")
    extra = [n for n in names if n not in (id_field, vector_field, tenant_field)]
    payload_cols = [payload_field] if payload_field in names else extra
    first = pf.read_row_group(0, columns=[vector_field]).column(0) if pf.num_row_groups else None
    dim = len(first[0].as_py() or []) if first is not None and len(first) else 0

    def records() -> Iterator[Item]:
        row = 0
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group).to_pydict()
            for i in range(len(table[id_field])):
                row += 1
                vector = table[vector_field][i]
                if not isinstance(vector, list) or len(vector) != dim:
                    yield row, f"'{vector_field}' must be a list of {dim} numbers"
                    continue
                if payload_cols == [payload_field]:
                    try:
                        payload = payload_cell(table[payload_field][i], payload_field)
                    except InvalidArgument as exc:
                        yield row, str(exc)
                        continue
                else:
                    payload = {c: table[c][i] for c in payload_cols} or None
                tenant = table[tenant_field][i] if tenant_field else None
                if tenant_field and not isinstance(tenant, str):
                    yield row, f"'{tenant_field}' must be a tenant name (a string)"
                    continue
                yield row, (table[id_field][i], vector, payload, tenant)

    return pf.metadata.num_rows, dim, records()


def _read_hdf5(path: Path, dataset: str, id_start: int) -> tuple[int, int, Iterable[Item]]:
    """An ann-benchmarks .hdf5 file: the vectors of ``dataset`` (``train`` by default,
    ``test`` for the queries), ids counted from ``id_start``; read in blocks."""
    try:
        import h5py
    except ImportError:
        raise InvalidArgument('reading HDF5 needs h5py: pip install "laminadb[ingest]"') from None
    fh = h5py.File(path, "r")
    if dataset not in fh:
        raise InvalidArgument(
            f"{path}: no dataset {dataset!r} (has {', '.join(fh)}); pick one with --dataset"
        )
    data = fh[dataset]
    if len(data.shape) != 2:
        raise InvalidArgument(f"{path}: dataset {dataset!r} has shape {data.shape}, expected (rows, dim)")

    return int(data.shape[0]), int(data.shape[1]), MatrixRecords(data, id_start, close=fh.close)


def _check_record(rec: Record, dim: int, limits: Limits) -> str | None:
    """Why the engine would refuse this record, or None (the checks the engine runs)."""
    from lamina.validation import as_matrix, check_id, encode_payloads

    try:
        check_id(rec[0], limits)
        as_matrix(np.asarray(rec[1], dtype=np.float32).reshape(1, -1), dim)
        encode_payloads([rec[2]], 1, limits)
        if rec[3] is not None:
            check_tenant(rec[3])
    except LaminaError as exc:
        return str(exc)
    return None


def open_source(args: argparse.Namespace) -> tuple[Path, int, int, Iterable[Item]]:
    """The file ``args.file`` names: (path, record count, dimension, its records numbered by line or row)."""
    path = Path(args.file)
    if path.suffix == ".npy":
        return (path, *_read_npy(path, args.id_start))
    if path.suffix in (".fvecs", ".bvecs"):
        return (path, *_read_vecs(path, args.id_start))
    if path.suffix in (".jsonl", ".ndjson"):
        return (
            path,
            *_read_jsonl(path, args.id_field, args.vector_field, args.payload_field, args.tenant_field),
        )
    if path.suffix in (".parquet", ".pq"):
        return (
            path,
            *_read_parquet(path, args.id_field, args.vector_field, args.payload_field, args.tenant_field),
        )
    if path.suffix in (".hdf5", ".h5"):
        return (path, *_read_hdf5(path, args.dataset, args.id_start))
    raise InvalidArgument(
        f"{path}: unsupported file type {path.suffix!r}; use .npy, .fvecs, .bvecs, .jsonl, .parquet or .hdf5"
    )


def dry_run(db: Any, args: argparse.Namespace) -> int:
    """Check every record as the engine would, write nothing, report each bad one (exit 2 if any)."""
    path, total, dim, items = open_source(args)
    try:
        dim = db.get_collection(args.collection).dim
        against = f"collection {args.collection!r} (dim={dim})"
    except NotFound:
        against = f"a new collection (dim={dim}, from the first record)"
    limits = Limits()
    bad = 0
    for pos, item in tqdm(
        items, total=total, unit="rec", desc=f"check {path.name}", file=sys.stderr, disable=args.quiet
    ):
        reason = item if isinstance(item, str) else _check_record(item, dim, limits)
        if reason is not None:
            bad += 1
            if bad <= 20:
                print(f"{path}:{pos}: {reason}")
    if bad > 20:
        print(f"... and {bad - 20} more")
    print(
        f"dry run: {total - bad:,} of {total:,} records would be written to {against}; {bad:,} bad",
        file=sys.stderr,
    )
    return 2 if bad else 0


def read_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint saved at ``path`` by an earlier run of the load ``identity`` describes, or
    None if there is none; FailedPrecondition when it is unreadable or of another load."""
    try:
        saved: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise FailedPrecondition(f"checkpoint {path} cannot be read ({exc}); delete it") from None
    changed = [k for k, v in identity.items() if saved.get(k) != v]
    if changed:
        raise FailedPrecondition(
            f"checkpoint {path} belongs to another load (its {', '.join(changed)} differ); "
            "run without --resume to start over"
        )
    return saved


def write_checkpoint(path: Path, data: dict[str, Any]) -> None:
    """Replace the checkpoint at ``path`` whole (a crash leaves the old one or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


class Checkpoint:
    """How far a run got: the number of records (in file order) all written, in a small
    JSON file beside the input (``--checkpoint`` names another). It is saved as batches
    are acknowledged and removed when the run completes; ``--resume`` starts after it.
    It remembers the input's size and modification time, the target and the collection,
    and refuses to resume a different load."""

    def __init__(self, path: Path, source: Path, args: argparse.Namespace) -> None:
        self.path = path
        stat = source.stat()
        self.identity = {
            "file": str(source.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "target": args.target,
            "collection": args.collection,
            "tenant": args.tenant,
        }

    @classmethod
    def for_args(cls, source: Path, args: argparse.Namespace) -> Checkpoint:
        default = source.with_name(f"{source.name}.{args.collection}.checkpoint.json")
        return cls(Path(args.checkpoint) if args.checkpoint else default, source, args)

    def load(self) -> int | None:
        """Records already written by an earlier run of this same load, or None if there is none."""
        saved = read_checkpoint(self.path, self.identity)
        return None if saved is None else int(saved["records"])

    def save(self, records: int, written: int) -> None:
        write_checkpoint(self.path, {**self.identity, "records": records, "written": written})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class _Batch:
    """One upsert: records ``start`` .. ``start + len(ids)`` in the file's record order."""

    start: int
    first: int  # line or row number of its first record, and of its last (for messages)
    last: int
    ids: list[Any]
    vectors: Any  # an (n, dim) array, or a list of vectors
    payloads: list[dict[str, Any] | None] | None
    tenant: str | None


def _matrix_batches(source: MatrixRecords, start: int, size: int) -> Iterator[_Batch]:
    """Blocks of a matrix, sliced rather than read row by row."""
    rows = source.matrix.shape[0]
    for lo in range(start, rows, size):
        hi = min(rows, lo + size)
        ids = list(range(source.id_start + lo, source.id_start + hi))
        yield _Batch(lo, lo, hi - 1, ids, source.block(lo, hi), None, None)
    if source.close is not None:
        source.close()


def _record_batches(items: Iterable[Item], start: int, size: int, path: Path) -> Iterator[_Batch]:
    """Records grouped into batches of ``size``, a new batch wherever the tenant changes
    (one upsert names one tenant); a bad record stops the load with its line or row."""
    records: list[Record] = []
    first = index = start
    positions = (0, 0)

    def batch() -> _Batch:
        payloads = [r[2] for r in records]
        return _Batch(
            first,
            positions[0],
            positions[1],
            [r[0] for r in records],
            [r[1] for r in records],
            payloads if any(p is not None for p in payloads) else None,
            records[0][3],
        )

    for index, (pos, item) in enumerate(islice(items, start, None), start):
        if isinstance(item, str):
            raise InvalidArgument(f"{path}:{pos}: {item} (run with --dry-run to list every bad record)")
        if records and (item[3] != records[-1][3] or len(records) >= size):
            yield batch()
            records, first = [], index
        if not records:
            positions = (pos, pos)
        records.append(item)
        positions = (positions[0], pos)
    if records:
        yield batch()


class BatchWriter:
    """Upserts batches on ``parallel`` threads, at most two per thread in flight, and
    tracks the longest prefix of the file whose records are all written (batches may
    finish out of order): that prefix is what the checkpoint records."""

    def __init__(
        self, col: Any, parallel: int, tenant: str | None, checkpoint: Checkpoint, start: int, bar: tqdm
    ) -> None:
        self.col = col
        self.tenant = tenant
        self.checkpoint = checkpoint
        self.bar = bar
        self.done = start  # every record before this index is written
        self.written = 0
        self.tenants: set[str] = set()
        self._finished: dict[int, int] = {}  # start -> end of batches written past ``done``
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lamina-ingest")
        self._pending: dict[Future[int], _Batch] = {}
        self._limit = 2 * parallel

    def submit(self, batch: _Batch) -> None:
        tenant = batch.tenant or self.tenant
        if tenant is not None:
            self.tenants.add(tenant)
        self._pending[self._pool.submit(self._write, batch, tenant)] = batch
        while len(self._pending) >= self._limit:
            self._collect()

    def _write(self, batch: _Batch, tenant: str | None) -> int:
        vectors = np.asarray(batch.vectors, dtype=np.float32)
        return int(self.col.upsert(batch.ids, vectors, batch.payloads, tenant=tenant))

    def _collect(self) -> None:
        """Wait for the next batches to finish, account for them, raise the first failure."""
        finished, _ = wait(self._pending, return_when=FIRST_COMPLETED)
        failure: BaseException | None = None
        for future in finished:
            batch = self._pending.pop(future)
            error = future.exception()
            if error is not None:
                failure = failure or _located(error, batch)
                continue
            self.written += future.result()
            self._finished[batch.start] = batch.start + len(batch.ids)
            self.bar.update(len(batch.ids))
        while self.done in self._finished:
            self.done = self._finished.pop(self.done)
        self.save()  # a small file replaced whole: ~50 us against a batch's milliseconds
        if failure is not None:
            raise failure

    def save(self) -> None:
        self.checkpoint.save(self.done, self.written)

    def finish(self) -> None:
        """Wait for every batch in flight (also after a failure or an interrupt), then save."""
        try:
            while self._pending:
                self._collect()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.save()


def _located(error: BaseException, batch: _Batch) -> BaseException:
    """The error with the batch's record numbers in front, so the user can find them."""
    if isinstance(error, LaminaError):
        where = f"records {batch.first}..{batch.last}"
        return type(error)(f"{where}: {error}")
    return error


def target_collection(db: Any, args: argparse.Namespace, path: Path, dim: int) -> Any:
    """The collection a load writes into, created with the command's settings when missing
    (multi-tenant when the load names tenants)."""
    try:
        return db.get_collection(args.collection)
    except NotFound:
        if not dim:
            raise InvalidArgument(f"{path}: no vectors found to infer the dimension from") from None
    multi = args.tenant is not None or bool(args.tenant_field)
    shards, replicas = getattr(args, "shards", 1), getattr(args, "replicas", 1)
    col = db.create_collection(
        args.collection, dim=dim, metric=args.metric, multi_tenant=multi, shards=shards, replicas=replicas
    )
    print(
        f"created collection {args.collection!r} (dim={dim}, metric={args.metric}"
        + (", multi-tenant" if multi else "")
        + (f", {shards} shards x {replicas} replicas" if shards > 1 or replicas > 1 else "")
        + ")",
        file=sys.stderr,
    )
    return col


def load(db: Any, args: argparse.Namespace) -> int:
    """Write the file's records into the collection (created when missing); see the module doc."""
    path, total, dim, items = open_source(args)
    checkpoint = Checkpoint.for_args(path, args)
    start = 0
    if args.resume:
        done = checkpoint.load()
        if done is None:
            raise FailedPrecondition(f"no checkpoint {checkpoint.path} to resume from; run without --resume")
        start = done
        print(f"resuming after record {start:,} of {total:,} ({checkpoint.path})", file=sys.stderr)
    elif checkpoint.path.exists():
        print(
            f"starting over; an interrupted run left {checkpoint.path} (--resume continues it)",
            file=sys.stderr,
        )
    col = target_collection(db, args, path, dim)
    began = time.perf_counter()
    with tqdm(
        total=total,
        initial=start,
        unit="pts",
        desc=f"ingest {path.name}",
        file=sys.stderr,
        disable=args.quiet,
    ) as bar:
        writer = BatchWriter(col, max(1, args.parallel), args.tenant, checkpoint, start, bar)
        batches = (
            _matrix_batches(items, start, args.batch_size)
            if isinstance(items, MatrixRecords)
            else _record_batches(items, start, args.batch_size, path)
        )
        try:
            for batch in batches:
                writer.submit(batch)
        except (LaminaError, KeyboardInterrupt) as exc:
            with contextlib.suppress(LaminaError):  # the first failure is the one to report
                writer.finish()
            print(
                f"stopped after {writer.done:,} of {total:,} records ({type(exc).__name__}); "
                f"run again with --resume to continue from there",
                file=sys.stderr,
            )
            if isinstance(exc, KeyboardInterrupt):
                return 130
            raise
        writer.finish()
    checkpoint.remove()
    seconds = time.perf_counter() - began
    if args.tenant_field:
        held = f"{len(writer.tenants)} tenants; the collection now holds {col.info().count}"
    elif args.tenant:
        held = f"tenant {args.tenant!r}; it now holds {col.count(tenant=args.tenant)} for that tenant"
    else:
        held = f"it now holds {col.count()}"
    rate = writer.written / seconds if seconds > 0 else 0.0
    print(
        f"ingested {writer.written:,} points into {args.collection!r} for {held} "
        f"({seconds:.2f} s, {rate:,.0f} points/s)",
        file=sys.stderr,
    )
    return 0
