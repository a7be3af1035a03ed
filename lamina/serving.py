"""``lamina serve``: logging, the server's settings from its config file and flags, and the
database each process serves (one process, a writer or follower of ``--processes N``, or
shards on Ray)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from lamina.config import Limits, ServerConfig
from lamina.cores import usable_cores
from lamina.errors import FailedPrecondition, InvalidArgument


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message (and the
    exception, when there is one), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if PROCESS is not None:
            entry["process"] = PROCESS
        return orjson.dumps(entry).decode()


#: the index of this process in ``lamina serve --processes N`` (None: the only one), in each log line
PROCESS: int | None = None


def setup_logging(level: str, fmt: str = "text", process: int | None = None) -> None:
    """Log to stderr at ``level``, as text or JSON lines, tagged with the process index."""
    global PROCESS
    PROCESS = process
    tag = "" if process is None else f"[process {process}] "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The config file (if any) overridden by the flags given on the command line."""
    config = ServerConfig.load(args.config) if args.config else ServerConfig()
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("data", "host", "port", "workers", "processes", "metrics_port", "http_port")
        if getattr(args, key) is not None
    }
    if args.no_console:
        overrides["console"] = False
    if args.sync_writes is not None:
        overrides["sync_writes"] = args.sync_writes
    if args.metrics_names:
        overrides["metrics_names"] = True
    if args.sync_server:
        overrides["sync_server"] = True
    if args.aio_server:
        overrides["sync_server"] = False
    if args.limit:
        limits = dict(config.limits.__dict__)
        for item in args.limit:
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise InvalidArgument(f"--limit {item!r}: write NAME=INTEGER, e.g. --limit max_k=1000")
            limits[name.strip()] = int(value)
        overrides["limits"] = Limits.from_dict(limits, "--limit")
    return dataclasses.replace(config, **overrides)


def serving_processes(config: ServerConfig, single: str | None = None) -> int:
    """How many server processes ``lamina serve`` runs: ``processes`` from the config or
    flag (checked), else one per usable core (lamina/cores.py). ``single``: the flag of a
    server that runs in one process (``--ray``, ``--read-only``), which then refuses only an
    explicit N > 1."""
    from lamina.server.processes import check_processes

    if config.processes is None:
        return 1 if single else usable_cores()
    if check_processes(config.processes) > 1 and single:
        raise InvalidArgument(
            f"--processes {config.processes} cannot be combined with {single} (yet): serve with --processes 1"
        )
    return config.processes


def _one_process_flag(args: argparse.Namespace) -> str | None:
    return "--ray" if args.ray is not None else "--read-only" if args.read_only else None


def start_ray(address: str) -> None:
    """Join the Ray cluster at ``address``, or start a local one for ``local``."""
    try:
        import ray
    except ImportError:
        raise FailedPrecondition('--ray needs Ray: pip install "laminadb[ray]"') from None
    log = logging.getLogger("lamina.server")
    if address == "local":
        log.info("starting a local Ray")
    else:
        log.info("joining the Ray cluster at %s", address)
    ray.init(address=None if address == "local" else address, include_dashboard=False)
    log.info("Ray resources: %s", ray.cluster_resources())


def cmd_serve(args: argparse.Namespace) -> int:
    from lamina.engine.database import Database
    from lamina.engine.follower import Follower, JournaledDatabase
    from lamina.engine.protocol import DatabaseProtocol
    from lamina.engine.sharded import ShardedDatabase
    from lamina.server.app import Companion, serve
    from lamina.server.processes import ProcessRole, Supervisor

    config = server_config(args)
    role = None
    if args.process_index is not None:  # one process of --processes N, started by the supervisor
        role = ProcessRole(args.process_index, Path(args.run_dir))
        role.die_with_parent()
    elif (processes := serving_processes(config, _one_process_flag(args))) > 1:
        supervisor = Supervisor(
            args.argv, processes, config.host, config.port, config.grace_seconds, args.run_dir
        )
        return supervisor.serve()
    companions: list[Companion] = []
    if config.console and (role is None or role.writer):
        from lamina.console import Console

        companions.append(Console(config.http_port, announce=True))
    tls = None
    if config.tls_cert and config.tls_key:
        tls = (Path(config.tls_cert).read_bytes(), Path(config.tls_key).read_bytes())
    db: DatabaseProtocol
    if args.ray is not None:
        if args.read_only:
            raise InvalidArgument(
                "--read-only cannot be combined with --ray: every replica of a sharded collection applies "
                "the writes of its shard, so there is no read-only sharded server; serve a restored "
                "snapshot of it without --ray instead (lamina restore --ray, then lamina serve --read-only)"
            )
        start_ray(args.ray)
        db = ShardedDatabase(config.data, sync_writes=config.sync_writes, limits=config.limits)
    elif role is not None and role.writer:
        db = JournaledDatabase(config.data, role.run, sync_writes=config.sync_writes, limits=config.limits)
    elif role is not None:
        db = Follower(config.data, role.run, limits=config.limits)
    else:
        db = Database(
            config.data, sync_writes=config.sync_writes, limits=config.limits, read_only=args.read_only
        )
    try:
        asyncio.run(
            serve(
                db,
                config.host,
                config.port,
                config.workers,
                config.keys,
                tls,
                config.metrics_port if role is None or role.writer else None,
                config.metrics_key,
                config.metrics_names,
                config.grace_seconds,
                companions,
                role,
                config.sync_server,
            )
        )
    finally:
        db.close()
    return 0
