"""The ``lamina`` command: its parser and the subcommands (``serve`` is in lamina/serving.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from lamina.errors import FailedPrecondition, InvalidArgument, LaminaError
from lamina.serving import cmd_serve, setup_logging, start_ray
from lamina.validation import check_tenant

DEFAULT_DATA = "./lamina-data"
DEFAULT_PORT = 6334


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


def cmd_ingest(args: argparse.Namespace) -> int:
    from lamina import ingest
    from lamina.client.api import is_address

    if args.tenant is not None:
        check_tenant(args.tenant)
        if args.tenant_field:
            raise InvalidArgument("give --tenant (one tenant for every record) or --tenant-field, not both")
    if args.parallel is None:  # embedded, more threads only contend for the GIL with the index builds
        args.parallel = 4 if is_address(args.target) else 2
    if args.batch_size is None:
        args.batch_size = 64 if args.embed else 1000
    if args.parallel < 1 or args.batch_size < 1:
        raise InvalidArgument("--parallel and --batch-size must be at least 1")
    if args.embed:
        from lamina import documents

        if args.ray is not None or args.dry_run:
            raise InvalidArgument("--embed loads documents through the client: leave out --ray and --dry-run")
        with _connect(args) as db:
            return documents.load(db, args)
    if args.model:
        raise InvalidArgument("--model names the embedding model of --embed: add --embed")
    if Path(args.file).is_dir() or Path(args.file).suffix.lower() in (".txt", ".md", ".rst", ".html", ".htm"):
        raise InvalidArgument(
            f"{args.file} holds documents, not vectors: add --embed to chunk and embed them"
        )
    if args.ray is not None:
        return _ingest_ray(args)
    with _connect(args) as db:
        return ingest.dry_run(db, args) if args.dry_run else ingest.load(db, args)


def _ingest_ray(args: argparse.Namespace) -> int:
    """``lamina ingest --ray``: a sharded data directory opened here; .npy and Parquet files are
    read by Ray tasks and written straight to the shards, other files through the front end."""
    from tqdm import tqdm

    from lamina import distributed, ingest
    from lamina.client.api import is_address

    if is_address(args.target):
        raise InvalidArgument(
            "--ray opens a sharded data directory in this process; to load through a "
            "`lamina serve --ray` server, leave --ray out (the server routes to its shards)"
        )
    start_ray(args.ray)
    path = Path(args.file)
    with distributed.connect(args.target) as db:
        by_tasks = path.suffix in (".npy", ".parquet", ".pq") and not (
            args.dry_run or args.resume or args.tenant_field
        )
        if not by_tasks:
            return ingest.dry_run(db, args) if args.dry_run else ingest.load(db, args)
        _, total, dim, _ = ingest.open_source(args)
        ingest.target_collection(db, args, path, dim)
        started = time.perf_counter()
        with tqdm(
            total=total, unit="pts", desc=f"ingest {path.name}", file=sys.stderr, disable=args.quiet
        ) as bar:
            written = distributed.ingest(
                db,
                args.collection,
                path,
                tenant=args.tenant,
                id_start=args.id_start,
                id_field=args.id_field,
                vector_field=args.vector_field,
                payload_field=args.payload_field,
                progress=lambda done, _: bar.update(done - bar.n),
            )
        seconds = time.perf_counter() - started
        print(
            f"ingested {written:,} points into {args.collection!r} with Ray tasks; it now holds "
            f"{db.get_collection(args.collection).count(tenant=args.tenant)} "
            f"({seconds:.2f} s, {written / seconds:,.0f} points/s)",
            file=sys.stderr,
        )
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
        if info.config.embedding is not None:
            e = info.config.embedding
            print(f"  embedding: {e.model} ({info.dim} dimensions)" + (f" at {e.url}" if e.url else ""))
        if info.config.shards > 1 or info.config.replicas > 1:
            print(f"  sharded on Ray: {info.config.shards} shards x {info.config.replicas} replicas")
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
                + (f", embedding {info.config.embedding.model}" if info.config.embedding else "")
                + (", optimizing" if st.optimizing else "")
                + (f", WRITES STALLED: {st.write_stall}" if st.write_stall else "")
                + (f" ({st.note})" if st.note else "")
            )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from lamina.engine.check import check_data_directory

    data = Path(args.data)
    if not data.is_dir():
        raise FailedPrecondition(
            f"{data} is not a directory: give --data the directory `lamina serve --data` uses"
        )
    report = check_data_directory(
        data, args.collection, deep=args.deep, online=args.online, repair=args.repair
    )
    for line in report.checked:
        print(line)
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    for line in report.repaired:
        print(f"REPAIRED {line}")
    if report.problems and not args.repair:
        print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    if report.problems:
        return (
            0 if len(report.repaired) and all(p.repair.endswith("--repair`") for p in report.problems) else 1
        )
    print("no problems found" + ("" if args.deep else " (add --deep to verify every file's checksums)"))
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

    if args.ray is not None:
        from lamina import distributed

        start_ray(args.ray)
        with distributed.connect(args.data) as db:
            info = distributed.restore_snapshot(db, args.snapshot, args.name)
    else:
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

    serve = sub.add_parser("serve", help="run the gRPC server and the web console")
    serve.add_argument("--config", help="TOML config file (docs/configuration.md); flags override it")
    serve.add_argument("--data", help=f"data directory (default {DEFAULT_DATA})")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    serve.add_argument("--workers", type=int, help="threads running engine calls (default 8)")
    serve.add_argument(
        "--processes",
        type=int,
        help="server processes sharing the port: one writer, the others serve reads and forward "
        "writes to it (default: one per usable core; 1: one process; docs/architecture.md)",
    )
    model = serve.add_mutually_exclusive_group()
    model.add_argument(
        "--sync-server",
        action="store_true",
        help="grpc's thread-pool server (the default): a plain search is answered on the gRPC thread "
        "that took it (docs/architecture.md, Server)",
    )
    model.add_argument(
        "--aio-server",
        action="store_true",
        help="grpc.aio's server instead: every call on one event loop (config sync_server = false)",
    )
    serve.add_argument("--process-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument(
        "--run-dir",
        help="with --processes: the folder for the processes' sockets and journals (default: a new "
        "temporary one); process I also listens on unix:RUN_DIR/process-I.sock",
    )
    serve.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)"
    )
    serve.add_argument(
        "--metrics-names",
        action="store_true",
        help="label collection metrics with collection names (default: totals only)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        help="serve the web console at http://HOST:PORT/ (default 6335; same host and TLS as gRPC)",
    )
    serve.add_argument("--no-console", action="store_true", help="do not serve the web console")
    serve.add_argument(
        "--sync-writes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fsync the write-ahead log before each reply, so acknowledged writes survive power loss "
        "(default; --no-sync-writes: a kill -9 still loses nothing, a power loss may lose the last writes)",
    )
    serve.add_argument(
        "--limit",
        action="append",
        metavar="NAME=VALUE",
        help="override one request limit, e.g. --limit max_batch=5000 (repeatable)",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="serve reads only, writing nothing to the data directory (a replica of a snapshot, a "
        "read-only volume); writes are refused with FAILED_PRECONDITION",
    )
    serve.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve sharded, replicated collections from Ray actors: join the cluster at ADDRESS "
        "(e.g. auto, ray://head:10001) or start a local Ray when left out (docs/scale.md)",
    )
    serve.set_defaults(func=cmd_serve)

    target_help = f"data directory or host:port of a server (default {DEFAULT_DATA})"
    ingest = sub.add_parser(
        "ingest",
        help="load vectors from .npy, .fvecs/.bvecs, JSON Lines, Parquet or ann-benchmarks .hdf5, "
        "or (--embed) a file or folder of .txt/.md/.rst/.html documents",
    )
    ingest.add_argument(
        "file",
        metavar="PATH",
        help=".npy (n, dim), .fvecs/.bvecs, .hdf5 (ann-benchmarks) vectors, or .jsonl / .parquet records "
        "with id, vector, payload (and tenant) fields; with --embed, a document or a folder of them",
    )
    ingest.add_argument(
        "--embed",
        action="store_true",
        help="PATH holds documents: chunk them, embed the chunks with the collection's model, load them "
        "(docs/embedding.md)",
    )
    ingest.add_argument(
        "--model", help="--embed, when creating the collection: embedding model (default minilm)"
    )
    ingest.add_argument(
        "--chunk-size",
        type=int,
        default=1000,
        help="--embed: most characters in a chunk (default 1000, about 250 tokens)",
    )
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="--embed, PATH a folder: also delete the chunks of files no longer in it (every chunk with a "
        "source the folder does not have)",
    )
    ingest.add_argument(
        "--chunk-overlap",
        type=int,
        default=150,
        help="--embed: characters a chunk repeats from the one before it (default 150)",
    )
    ingest.add_argument("--collection", "-c", required=True)
    ingest.add_argument("--target", "-t", default=DEFAULT_DATA, help=target_help)
    _client_options(ingest)
    ingest.add_argument("--metric", default="cosine", choices=["cosine", "dot", "l2"], help="when creating")
    ingest.add_argument(
        "--batch-size", type=int, help="records per upsert (default 1000; --embed: chunks per add, 64)"
    )
    ingest.add_argument(
        "--parallel",
        type=int,
        help="batches written at once, each on its own thread (default: 4 to a server, 2 embedded)",
    )
    ingest.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same load after the records its checkpoint says are written",
    )
    ingest.add_argument(
        "--checkpoint", help="checkpoint file (default: FILE.COLLECTION.checkpoint.json beside the input)"
    )
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
    ingest.add_argument(
        "--shards", type=int, default=1, help="when creating: shards (a server or data directory on Ray)"
    )
    ingest.add_argument("--replicas", type=int, default=1, help="when creating: replicas of each shard")
    ingest.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="the target is a sharded data directory: open it here on the Ray cluster at ADDRESS (a local "
        "Ray when left out); .npy and Parquet files are read by Ray tasks and written straight to the shards",
    )
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
    restore.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="a snapshot of a sharded collection, restored into the sharded data directory --data on the Ray "
        "cluster at ADDRESS (a local Ray when left out)",
    )
    restore.set_defaults(func=cmd_restore)

    check = sub.add_parser(
        "check",
        help="verify a data directory (RocksDB checksums, segment files, id mapping, payload indexes); "
        "exit 1 naming each problem and its repair",
    )
    check.add_argument("--data", required=True, help="data directory to check")
    check.add_argument("--collection", "-c", help="only this collection")
    check.add_argument(
        "--deep",
        action="store_true",
        help="read every file: all RocksDB blocks, every segment file's checksum, rows against segments, "
        "payload indexes against payloads",
    )
    check.add_argument(
        "--online", action="store_true", help="check a directory a running server holds (read-only)"
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="rebuild damaged segments from the vectors RocksDB holds (offline: the server must be stopped)",
    )
    check.set_defaults(func=cmd_check)

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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the supervisor of --processes runs it again
    setup_logging(args.log_level, args.log_format, getattr(args, "process_index", None))
    try:
        return int(args.func(args))
    except LaminaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
