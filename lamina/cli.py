"""The ``lamina`` command: serve, ingest, collections, info."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from lamina.config import Limits, ServerConfig
from lamina.errors import InvalidArgument, LaminaError, NotFound
from lamina.validation import check_tenant

DEFAULT_DATA = "./lamina-data"
DEFAULT_PORT = 6334


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message (and the
    exception, when there is one), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The config file (if any) overridden by the flags given on the command line."""
    config = ServerConfig.load(args.config) if args.config else ServerConfig()
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("data", "host", "port", "workers", "metrics_port")
        if getattr(args, key) is not None
    }
    if args.sync_writes:
        overrides["sync_writes"] = True
    if args.limit:
        limits = dict(config.limits.__dict__)
        for item in args.limit:
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise InvalidArgument(f"--limit {item!r}: write NAME=INTEGER, e.g. --limit max_k=1000")
            limits[name.strip()] = int(value)
        overrides["limits"] = Limits.from_dict(limits, "--limit")
    return dataclasses.replace(config, **overrides)


def _connect(args: argparse.Namespace) -> Any:
    """The client the common target options name (key from --api-key or LAMINA_API_KEY)."""
    import lamina
    from lamina.client.api import is_address

    if is_address(args.target):
        key = args.api_key or os.environ.get("LAMINA_API_KEY") or None
        return lamina.connect(args.target, api_key=key, tls=args.tls, ca_cert=args.ca_cert)
    return lamina.connect(args.target)


def cmd_keys(args: argparse.Namespace) -> int:
    from lamina.server.auth import ApiKey, hash_key, new_key

    key = new_key()
    collections = frozenset(args.collection) if args.collection else None
    entry = ApiKey.from_dict(
        {
            "name": args.name,
            "hash": hash_key(key),
            "role": args.role,
            **({"collections": sorted(collections)} if collections else {}),
            **({"tenants": sorted(set(args.tenant))} if args.tenant else {}),
        },
        "keys",
    )
    print(f"API key (shown once; give it to the client, keep it secret):\n  {key}\n")
    print("Add to the server's config file:\n")
    print(entry.to_toml())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lamina.engine.database import Database
    from lamina.server.app import serve

    config = server_config(args)
    tls = None
    if config.tls_cert and config.tls_key:
        tls = (Path(config.tls_cert).read_bytes(), Path(config.tls_key).read_bytes())
    db = Database(config.data, sync_writes=config.sync_writes, limits=config.limits)
    try:
        asyncio.run(
            serve(db, config.host, config.port, config.workers, config.keys, tls, config.metrics_port)
        )
    finally:
        db.close()
    return 0


#: (id, vector, payload, tenant)
Record = tuple[Any, list[float] | np.ndarray, dict[str, Any] | None, str | None]
#: (line or row number, the record or why it is bad)
Item = tuple[int, Record | str]


def _read_matrix(matrix: np.ndarray, id_start: int) -> Iterator[Item]:
    for i in range(matrix.shape[0]):
        yield i, (id_start + i, matrix[i], None, None)


def _read_npy(path: Path, id_start: int) -> tuple[int, int, Iterator[Item]]:
    matrix = np.load(path, mmap_mode="r")
    if matrix.ndim != 2:
        raise InvalidArgument(f"{path}: expected a 2-d array of vectors, got shape {matrix.shape}")
    return matrix.shape[0], matrix.shape[1], _read_matrix(matrix, id_start)


def _read_vecs(path: Path, id_start: int) -> tuple[int, int, Iterator[Item]]:
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
    return raw.shape[0], dim, _read_matrix(matrix, id_start)


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
                    payload = table[payload_field][i]
                    if isinstance(payload, str):
                        try:
                            payload = orjson.loads(payload)
                        except orjson.JSONDecodeError as exc:
                            yield row, f"'{payload_field}' is not valid JSON ({exc})"
                            continue
                    if payload is not None and not isinstance(payload, dict):
                        yield row, f"'{payload_field}' must be an object"
                        continue
                else:
                    payload = {c: table[c][i] for c in payload_cols} or None
                tenant = table[tenant_field][i] if tenant_field else None
                if tenant_field and not isinstance(tenant, str):
                    yield row, f"'{tenant_field}' must be a tenant name (a string)"
                    continue
                yield row, (table[id_field][i], vector, payload, tenant)

    return pf.metadata.num_rows, dim, records()


def _read_hdf5(path: Path, dataset: str, id_start: int) -> tuple[int, int, Iterator[Item]]:
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

    def records() -> Iterator[Item]:
        for lo in range(0, data.shape[0], 65_536):
            block = np.asarray(data[lo : lo + 65_536], dtype=np.float32)
            for i in range(block.shape[0]):
                yield lo + i, (id_start + lo + i, block[i], None, None)
        fh.close()

    return int(data.shape[0]), int(data.shape[1]), records()


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


def _open_source(args: argparse.Namespace) -> tuple[Path, int, int, Iterator[Item]]:
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


def _dry_run(args: argparse.Namespace) -> int:
    """Check every record as the engine would, write nothing, report each bad one."""
    path, total, dim, items = _open_source(args)
    with _connect(args) as db:
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


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.tenant is not None:
        check_tenant(args.tenant)
        if args.tenant_field:
            raise InvalidArgument("give --tenant (one tenant for every record) or --tenant-field, not both")
    if args.dry_run:
        return _dry_run(args)
    path, total, dim, items = _open_source(args)
    with _connect(args) as db:
        try:
            col = db.get_collection(args.collection)
        except NotFound:
            if not dim:
                raise InvalidArgument(f"{path}: no vectors found to infer the dimension from") from None
            multi = args.tenant is not None or bool(args.tenant_field)
            col = db.create_collection(args.collection, dim=dim, metric=args.metric, multi_tenant=multi)
            print(
                f"created collection {args.collection!r} (dim={dim}, metric={args.metric}"
                + (", multi-tenant)" if multi else ")"),
                file=sys.stderr,
            )
        written = 0
        batch: list[Record] = []
        first_line = 1
        tenants: set[str] = set()
        with tqdm(
            total=total, unit="pts", desc=f"ingest {path.name}", file=sys.stderr, disable=args.quiet
        ) as bar:

            def flush() -> None:
                nonlocal written, first_line
                if not batch:
                    return
                ids = [r[0] for r in batch]
                vectors = np.asarray([r[1] for r in batch], dtype=np.float32)
                payloads = [r[2] for r in batch]
                tenant = batch[0][3] or args.tenant  # a batch holds one tenant's records
                if tenant is not None:
                    tenants.add(tenant)
                try:
                    written += col.upsert(
                        ids,
                        vectors,
                        payloads if any(p is not None for p in payloads) else None,
                        tenant=tenant,
                    )
                except LaminaError as exc:
                    raise type(exc)(f"records {first_line}..{first_line + len(batch) - 1}: {exc}") from None
                first_line += len(batch)
                bar.update(len(batch))
                batch.clear()

            for pos, item in items:
                if isinstance(item, str):
                    raise InvalidArgument(
                        f"{path}:{pos}: {item} (run with --dry-run to list every bad record)"
                    )
                if batch and item[3] != batch[-1][3]:
                    flush()  # the tenant changes: one upsert names one tenant
                batch.append(item)
                if len(batch) >= args.batch_size:
                    flush()
            flush()
        if args.tenant_field:
            held = f"{len(tenants)} tenants; the collection now holds {col.info().count}"
        elif args.tenant:
            held = f"tenant {args.tenant!r}; it now holds {col.count(tenant=args.tenant)} for that tenant"
        else:
            held = f"it now holds {col.count()}"
        print(f"ingested {written} points into {args.collection!r} for {held}", file=sys.stderr)
    return 0


def cmd_collections(args: argparse.Namespace) -> int:

    with _connect(args) as db:
        infos = db.collections_info()
    if not infos:
        print("no collections")
        return 0
    width = max(len(i.name) for i in infos)
    print(
        f"{'name':<{width}}  {'dim':>6}  {'metric':<6}  {'points':>12}  {'index':<18}  {'segments':>8}  {'mutable':>9}"
    )
    for info in infos:
        quant = info.config.quantization
        tier = info.config.index.type + (f"+{quant.type}" if quant else "")
        if quant is not None and quant.type == "binary":
            tier += f" {quant.bits}-bit"
        st = info.status
        print(
            f"{info.name:<{width}}  {info.dim:>6}  {info.metric:<6}  {info.count:>12,}  {tier:<18}  "
            f"{st.segments:>8}  {st.mutable_points:>9,}"
        )
        if info.config.payload_index:
            fields = ", ".join(f"{f} ({kind})" for f, kind in sorted(info.config.payload_index.items()))
            print(f"  payload indexes: {fields}")
        if info.config.multi_tenant:
            print(
                f"  multi-tenant: {st.tenants:,} tenants, {st.tenant_partitions:,} with an index of their own"
            )
        if st.note:
            print(f"  note: {st.note}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        for key, value in db.server_info().items():
            print(f"{key}: {value}")
        for info in db.collections_info():
            st = info.status
            print(
                f"collection {info.name}: {info.count:,} points, {st.segments} segments, "
                f"{st.mutable_points:,} unsealed, index {st.index_bytes / 2**20:.1f} MiB"
                + (
                    f", {st.tenants:,} tenants ({st.tenant_partitions} indexed)"
                    if info.config.multi_tenant
                    else ""
                )
                + (", optimizing" if st.optimizing else "")
                + (f" ({st.note})" if st.note else "")
            )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with _connect(args) as db:
        serving = db.is_serving()
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1


def cmd_snapshot(args: argparse.Namespace) -> int:

    with _connect(args) as db:
        if args.action == "create":
            if not args.collection:
                raise InvalidArgument("snapshot create needs --collection NAME")
            info = db.get_collection(args.collection).snapshot()
            print(f"{info.name}  {info.points:,} points  {info.size_bytes / 1e6:.1f} MB  {info.path}")
        elif args.action == "list":
            snaps = db.list_snapshots(args.collection)
            if not snaps:
                print("no snapshots")
            for info in snaps:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created))
                print(f"{info.name}  {when} UTC  {info.points:,} points  {info.path}")
        else:
            if not args.collection or not args.snapshot:
                raise InvalidArgument("snapshot delete needs --collection NAME and --snapshot NAME")
            db.delete_snapshot(args.collection, args.snapshot)
            print(f"deleted {args.snapshot}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import lamina

    info = lamina.restore_snapshot(args.snapshot, args.data, args.name)
    print(f"restored {info.name!r} ({info.count:,} points) into {args.data}")
    return 0


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", help="API key for a server that requires one (default: $LAMINA_API_KEY)")
    parser.add_argument(
        "--tls", action="store_true", help="connect over TLS (system certificate authorities)"
    )
    parser.add_argument("--ca-cert", help="connect over TLS trusting this CA certificate (PEM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="Lamina vector search database")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object per line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", help="TOML config file (docs/configuration.md); flags override it")
    serve.add_argument("--data", help=f"data directory (default {DEFAULT_DATA})")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    serve.add_argument("--workers", type=int, help="threads running engine calls (default 8)")
    serve.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)"
    )
    serve.add_argument(
        "--sync-writes", action="store_true", help="fsync the WAL on every write (power-loss safe)"
    )
    serve.add_argument(
        "--limit",
        action="append",
        metavar="NAME=VALUE",
        help="override one request limit, e.g. --limit max_batch=5000 (repeatable)",
    )
    serve.set_defaults(func=cmd_serve)

    target_help = f"data directory or host:port of a server (default {DEFAULT_DATA})"
    ingest = sub.add_parser(
        "ingest", help="load vectors from .npy, .fvecs/.bvecs, JSON Lines, Parquet or ann-benchmarks .hdf5"
    )
    ingest.add_argument(
        "file",
        help=".npy (n, dim), .fvecs/.bvecs, .hdf5 (ann-benchmarks) vectors, or .jsonl / .parquet records "
        "with id, vector, payload (and tenant) fields",
    )
    ingest.add_argument("--collection", "-c", required=True)
    ingest.add_argument("--target", "-t", default=DEFAULT_DATA, help=target_help)
    _client_options(ingest)
    ingest.add_argument("--metric", default="cosine", choices=["cosine", "dot", "l2"], help="when creating")
    ingest.add_argument("--batch-size", type=int, default=1000)
    ingest.add_argument(
        "--tenant", help="write every point for this tenant (a new collection is created multi-tenant)"
    )
    ingest.add_argument(
        "--id-start",
        type=int,
        default=0,
        help=".npy/.fvecs/.bvecs: id of the first row (rows get consecutive ids)",
    )
    ingest.add_argument("--id-field", default="id")
    ingest.add_argument("--vector-field", default="vector")
    ingest.add_argument("--payload-field", default="payload", help="Parquet: else every other column")
    ingest.add_argument("--tenant-field", help=".jsonl / .parquet: the field naming each record's tenant")
    ingest.add_argument("--dataset", default="train", help=".hdf5 (ann-benchmarks): the dataset to load")
    ingest.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ingest.add_argument(
        "--dry-run",
        action="store_true",
        help="check every record, write nothing, list the bad ones (exit 2 if any)",
    )
    ingest.set_defaults(func=cmd_ingest)

    cols = sub.add_parser("collections", help="list collections with their point counts")
    cols.add_argument("--target", "-t", default=DEFAULT_DATA, help=target_help)
    _client_options(cols)
    cols.set_defaults(func=cmd_collections)

    snap = sub.add_parser("snapshot", help="create, list or delete collection snapshots (online)")
    snap.add_argument("action", choices=["create", "list", "delete"])
    snap.add_argument("--collection", "-c", help="collection (list: all when left out)")
    snap.add_argument("--snapshot", "-s", help="snapshot name (delete)")
    snap.add_argument("--target", "-t", default=DEFAULT_DATA, help=target_help)
    _client_options(snap)
    snap.set_defaults(func=cmd_snapshot)

    restore = sub.add_parser("restore", help="restore a snapshot folder into a data directory")
    restore.add_argument("snapshot", help="snapshot folder (as printed by `lamina snapshot create`)")
    restore.add_argument("--data", required=True, help="data directory to restore into (not in use)")
    restore.add_argument("--name", help="collection name (default: the snapshot's collection)")
    restore.set_defaults(func=cmd_restore)

    info = sub.add_parser("info", help="version and status of a server or data directory")
    info.add_argument("--target", "-t", default=DEFAULT_DATA, help=target_help)
    _client_options(info)

    health = sub.add_parser("health", help="exit 0 if the server answers its health check (for probes)")
    health.add_argument("--target", "-t", default=f"127.0.0.1:{DEFAULT_PORT}", help="host:port")
    _client_options(health)
    health.set_defaults(func=cmd_health)

    keys = sub.add_parser("keys", help="make an API key and the config stanza holding its hash")
    keys.add_argument("action", choices=["create"])
    keys.add_argument("--name", required=True, help="a name for logs and errors")
    keys.add_argument("--role", required=True, choices=["read", "write", "admin"])
    keys.add_argument(
        "--collection", action="append", help="restrict the key to this collection (repeatable)"
    )
    keys.add_argument(
        "--tenant", action="append", help="restrict the key to this tenant (repeatable): see docs/tenants.md"
    )
    keys.set_defaults(func=cmd_keys)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except LaminaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
